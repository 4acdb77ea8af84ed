"""Atomic file output and the NIfTI/JSON helpers every stage shares.

Arrays are indexed [z, y, x] (SimpleITK's order); spacing and origin tuples are (x, y, z) in mm.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from prdit.errors import PrditError, os_error


class Busy(PrditError):
    """Another process holds the lock of an output: concurrent runs on one output fail at once."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(final: Path) -> Path:
    fd, name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=".tmp" + "".join(final.suffixes), dir=final.parent
    )
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except Exception as exc:
        _name_the_file(exc, final)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(lock: str | Path, what: str) -> Iterator[None]:
    """Hold the flock of file `lock` (made if missing, removed when released) or raise Busy naming `what`.

    The lock goes with the process however it ends (flock); the file is removed on release so a finished
    or failed run leaves nothing behind. After locking, the inode is checked against the path, so a file
    removed by its previous holder in the meantime is never trusted: we lock the new one instead.
    """
    lock = Path(lock)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(
                f"{what}: another prdit process is writing it (it holds {lock}); wait for it or stop it"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def _name_the_file(exc: BaseException, final: Path) -> None:
    """Re-raise an OSError behind `exc` that names no file (a full disk inside torch.save or SimpleITK) as
    one naming `final`, so the one-line error says which output could not be written."""
    found = os_error(exc)
    if found is not None and found.filename is None:
        raise OSError(found.errno, found.strerror or str(found), str(final)) from exc


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover(final: Path) -> None:
    """Finish a swap cut short by a kill: restore `final` from .<name>.old if it is missing, else drop .old."""
    old = _old(final)
    if not os.path.lexists(old):
        return
    if os.path.lexists(final):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, final)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; it replaces `final` only if the block succeeds.

    Runs on one output exclude each other (lock file .<name>.lock beside it; the second fails with Busy),
    and a swap a kill cut short is finished on entry (`recover`), so the output is never missing for good.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(final.with_name(f".{final.name}.lock"), str(final)):
        recover(final)
        _remove_orphans(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o777 & ~_umask())
        try:
            yield tmp
            if final.exists():
                old = _old(final)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_orphans(final: Path) -> None:
    """Remove temporary folders of `final` left by killed writers (their pid is in the name and gone)."""
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        pid = tmp.name[len(final.name) + 2 :].split(".", 1)[0]
        if tmp.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def write_image(path: str | Path, image: sitk.Image, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (format from the suffix)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


def to_image(
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | None = None,
) -> sitk.Image:
    """Wrap a [z, y, x] array as a SimpleITK image with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    return image


def write_nifti(
    path: str | Path,
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | None = None,
) -> None:
    """Write a [z, y, x] array as NIfTI whose affine carries the true spacing and orientation."""
    write_image(path, to_image(array_zyx, spacing_xyz, origin, direction))


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI volume as a float32 [z, y, x] array and its (x, y, z) spacing."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), tuple(image.GetSpacing())


def write_json(path: str | Path, obj: object, compact: bool = False) -> None:
    """Write JSON atomically, keys sorted so DVC diffs stay readable; `compact` (no indent) for large caches."""
    indent = None if compact else 2
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True, default=_json_default) + "\n")


def create_once(path: str | Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` holding `data` (permissions `mode`, synced) unless it exists; False if it did.

    Unlike atomic_path (last writer wins) the first writer wins: concurrent creators of one secret (the
    pseudonym key) all end up reading the same file. The file appears whole or not at all (link of a temp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def file_stamp(path: str | Path) -> list[int]:
    """[size, mtime_ns, inode]: what says a file may have changed since it was last read (the one home).

    The inode is part of it because a file replaced by another of the same size and mtime (cp -p, rsync -t,
    tar, an atomic rewrite within the clock's resolution) is a new inode; (size, mtime) alone would reuse
    the old file's hash or headers. A false alarm (a moved copy) costs one re-read, never a wrong answer."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_torch(path: str | Path, obj: object) -> None:
    """torch.save `obj` atomically, byte-deterministic: the same content always gives the same file.

    torch.save to a path names the archive's top folder after the (random) temporary file; through a
    file object the folder is always "archive", so the bytes depend on the content only.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, streamed, with a hashlib algorithm name (sha256, md5, ...)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    return file_digest(path, "sha256")
