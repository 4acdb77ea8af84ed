"""Safe zip extraction: every entry must land inside the target folder, and the archive must be intact.

Rejected: absolute names (`/x`, `C:\\x`, `\\\\host\\x`), any `..` component, links pointing outside the
target, entries whose CRC does not match. Links that stay inside are not recreated (DICOM series never
need them). Nothing is written until the whole archive has been checked.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import shutil
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prdit.errors import PrditError
from prdit.io import atomic_dir

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(PrditError, ValueError):
    """An archive would write outside its target; the message names the archive and the entry."""


class DamagedArchiveError(UnsafeArchiveError):
    """An archive is truncated or fails its CRC checks."""


@dataclass
class Extracted:
    files: list[Path]  # relative to the target folder, sorted
    bytes: int
    digest: str  # 'sha256:<hex>' over (name, sha256 of content) of every file, sorted by name


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def safe_name(name: str, archive: str = "archive") -> str | None:
    """The normalised relative POSIX name of an entry, None for a directory; raise if it would escape."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} has a NUL byte in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise UnsafeArchiveError(f"{archive}: entry {name!r} has an absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} has a '..' component")
    if not parts or unified.endswith("/"):
        return None
    return "/".join(parts)


def check(zip_path: Path, label: str | None = None) -> list[tuple[zipfile.ZipInfo, str]]:
    """Open, CRC-check and vet every entry; return (entry, safe relative name) for the regular files."""
    label = label or zip_path.name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DamagedArchiveError(
            f"{label}: not a readable zip archive ({exc}); truncated download?"
        ) from None
    with zf:
        members: list[tuple[zipfile.ZipInfo, str]] = []
        seen: set[str] = set()
        for info in zf.infolist():
            name = safe_name(info.filename, label)
            if _is_link(info):
                target = zf.read(info).decode("utf-8", "replace")
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(name or ""), target))
                if (
                    target.startswith("/")
                    or _DRIVE.match(target)
                    or joined == ".."
                    or joined.startswith("../")
                ):
                    raise UnsafeArchiveError(
                        f"{label}: entry {info.filename!r} is a link pointing outside ({target!r})"
                    )
                log.warning("%s: skipping link entry %r", label, info.filename)
                continue
            if name is None or info.is_dir():
                continue
            if name.lower() in seen:
                raise UnsafeArchiveError(f"{label}: entry {info.filename!r} appears twice")
            seen.add(name.lower())
            members.append((info, name))
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise DamagedArchiveError(f"{label}: damaged archive ({exc})") from None
        if bad is not None:
            raise DamagedArchiveError(f"{label}: entry {bad!r} fails its CRC check")
    return members


def extract(
    zip_path: Path, target: Path, *, label: str | None = None, exclude: Sequence[str] = ()
) -> Extracted:
    """Check `zip_path`, then extract its files into `target` atomically (the folder appears complete or not at all).

    `exclude`: top-level member names (case-insensitive) left out, e.g. a checksum list already used.
    """
    label = label or zip_path.name
    skip = {name.lower() for name in exclude}
    members = [(info, name) for info, name in check(zip_path, label) if name.lower() not in skip]
    target.parent.mkdir(parents=True, exist_ok=True)
    need, free = sum(info.file_size for info, _ in members), shutil.disk_usage(target.parent).free
    if need > free:
        raise OSError(f"{label}: extracting needs {need} bytes, {free} free in {target.parent}")
    tree = hashlib.sha256()
    total = 0
    with atomic_dir(target) as tmp, zipfile.ZipFile(zip_path) as zf:
        root = tmp.resolve()
        for info, name in sorted(members, key=lambda m: m[1]):
            out = (tmp / name).resolve()
            if root not in out.parents:  # belt and braces after safe_name
                raise UnsafeArchiveError(f"{label}: entry {info.filename!r} resolves outside the target")
            out.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with zf.open(info) as src, open(out, "wb") as dst:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
                    total += len(block)
            tree.update(f"{name}\0{digest.hexdigest()}\n".encode())
    return Extracted(sorted(Path(n) for _, n in members), total, f"sha256:{tree.hexdigest()}")


def member_digests(
    zip_path: Path, members: Sequence[tuple[zipfile.ZipInfo, str]], algorithm: str = "md5"
) -> dict[str, str]:
    """Hex digest of each checked member's content (as `check` returned them), keyed by its safe name."""
    out: dict[str, str] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for info, name in members:
            digest = hashlib.new(algorithm)
            with zf.open(info) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
            out[name] = digest.hexdigest()
    return out


def read_text(zip_path: Path, info: zipfile.ZipInfo) -> str:
    """A small text member (e.g. a checksum list), decoded as UTF-8."""
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(info).decode("utf-8", "replace")
