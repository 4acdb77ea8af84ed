"""The one HTTP client of prdit: retries with backoff + jitter, `.part` files, resume where allowed, checksums.

Every download (TCIA series zips, Zenodo files, the MedicalNet weights) goes through `download`:
a file only ever gets its final name after it was received completely and verified; until then it
lives beside it as `<name>.part`. With `resume=True` a later attempt or run asks for the rest with an
HTTP Range request and starts over when the server answers with the whole body instead; with
`resume=False` (servers that build the body anew per request, like NBIA's series zips) a partial
file is always fetched again from its first byte. Ctrl-C (STOP) stops every transfer after its
current block and keeps the `.part`.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import logging
import os
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3

from prdit import __version__
from prdit.errors import PrditError
from prdit.io import file_digest

log = logging.getLogger(__name__)

BACKOFF_S = 1.0  # first retry waits about this long, doubling per attempt (tests shrink it)
MAX_WAIT_S = 300.0  # cap on one wait, whether from backoff or from a server's Retry-After
TIMEOUT_S = (15.0, 120.0)  # connect, read (between bytes)
CHUNK = 1 << 16  # bytes per read and write: a killed run loses at most this much of a .part
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Who we are, as services ask (Zenodo throttles, then refuses, clients that send python-requests' default
# since December 2025): tool, version, project URL; PRDIT_CONTACT (an e-mail) is appended when set.
PROJECT_URL = "https://github.com/Fredy-Zhang/PRDiT"


def user_agent() -> str:
    """'prdit/<version> (+<project URL>[; <PRDIT_CONTACT>])', never naming python-requests."""
    contact = os.environ.get("PRDIT_CONTACT", "").strip()
    return f"prdit/{__version__} (+{PROJECT_URL}{f'; {contact}' if contact else ''})"


class DownloadError(PrditError, RuntimeError):
    """One file or series could not be fetched; the message names it and says why."""


class HTTPStatusError(DownloadError):
    """The server answered with an error status that retrying will not change (`status` holds it)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class FilterRefusedError(HTTPStatusError):
    """A 403 from the service's client filter (an HTML block page), not an access decision on the data."""


def refused_by_filter(response: requests.Response) -> bool:
    """A 403 whose body is an HTML page: a firewall or bot filter answered, not the API (which sends JSON)."""
    if response.status_code != 403:
        return False
    if "html" in response.headers.get("Content-Type", "").lower():
        return True
    try:
        head = response.text.lstrip()[:200].lower()
    except (requests.RequestException, UnicodeDecodeError):
        return False
    return head.startswith(("<!doctype html", "<html"))


FILTER_HINT = "refused by the service's client filter (an HTML block page), not by the data's owners"


def status_error(what: str, response: requests.Response) -> HTTPStatusError:
    """The error for a status that retrying will not change (FilterRefusedError for a filter's block page)."""
    if refused_by_filter(response):
        return FilterRefusedError(
            f"{what}: HTTP 403: {FILTER_HINT}; this client sent User-Agent {user_agent()!r}",
            response.status_code,
        )
    return HTTPStatusError(f"{what}: {_describe_status(response)}", response.status_code)


class Cancelled(DownloadError):
    """The run is stopping (Ctrl-C); the .part file stays for the next run to resume."""


STOP = threading.Event()  # set to make every download in flight stop after its current block


class IntegrityError(DownloadError):
    """The bytes arrived but are not what was published (size, checksum, archive contents)."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 6
    backoff_s: float | None = None  # None: the module's BACKOFF_S at call time
    max_wait_s: float = MAX_WAIT_S

    def wait(self, attempt: int, response: requests.Response | None = None) -> float:
        """Seconds to sleep before retry number `attempt` (1-based): Retry-After if given, else jittered backoff."""
        retry_after = _retry_after(response) if response is not None else None
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        base = BACKOFF_S if self.backoff_s is None else self.backoff_s
        return min(self.max_wait_s, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the server asks us to wait: Retry-After (seconds or HTTP date), else a 429's X-RateLimit-Reset."""
    value = response.headers.get("Retry-After")
    reset = response.headers.get(
        "X-RateLimit-Reset", ""
    ).strip()  # Zenodo: epoch seconds when the quota refills
    if not value and response.status_code == 429 and reset.isdigit():
        return max(0.0, int(reset) - time.time())
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_SECRET_PARAM = re.compile(r"((?:access_)?token=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the values of token query parameters (a share link's secret) replaced by '***'.

    Error messages of requests/urllib3 quote the URL with its query; they go to logs and manifest.csv.
    """
    return _SECRET_PARAM.sub(r"\1***", text)


_local = threading.local()


def session(headers: Mapping[str, str] | None = None) -> requests.Session:
    """A per-thread session (connection reuse; requests sessions are not shared across threads)."""
    key = tuple(sorted((headers or {}).items()))
    sessions = _local.__dict__.setdefault("sessions", {})
    if key not in sessions:
        s = requests.Session()
        s.headers["User-Agent"] = user_agent()
        s.headers.update(headers or {})
        sessions[key] = s
    return sessions[key]


def _describe_status(response: requests.Response) -> str:
    """'HTTP 400 Bad Request: <the server's one-line reason>' (the body's first line for a 4xx)."""
    hint = {
        401: " (authentication needed: is an access token set?)",
        403: " (access denied)",
        404: " (not found)",
    }
    text = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + hint.get(
        response.status_code, ""
    )
    if 400 <= response.status_code < 500:
        try:
            body = response.text.strip().splitlines()
        except (requests.RequestException, UnicodeDecodeError):
            body = []
        if body and body[0].strip():
            text += f": {body[0].strip()[:200]}"
    return text


def get_json(
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    what: str = "",
    headers: Mapping[str, str] | None = None,
) -> Any:
    """GET a JSON document, retrying transient failures; an empty body is returned as None."""
    what = what or url
    for attempt in range(1, policy.retries + 2):
        response = None
        try:
            response = session(headers).get(url, params=params, timeout=TIMEOUT_S)
            if response.status_code == 200:
                return response.json() if response.content.strip() else None
            reason = _describe_status(response)
            if response.status_code not in RETRY_STATUS:
                raise status_error(what, response)
        except requests.exceptions.JSONDecodeError as exc:
            raise DownloadError(f"{what}: the server's answer is not JSON ({exc})") from None
        except requests.RequestException as exc:
            reason = f"{type(exc).__name__}: {redact(str(exc))}"
        if attempt > policy.retries:
            raise DownloadError(f"{what}: giving up after {policy.retries} retries: {reason}")
        delay = policy.wait(attempt, response)
        log.warning("%s: %s; retry %d/%d in %.1f s", what, reason, attempt, policy.retries, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """'md5:abc…' -> ('md5', 'abc…'); None or '' -> None."""
    if not checksum:
        return None
    algorithm, sep, value = checksum.partition(":")
    if not sep or algorithm.lower() not in hashlib.algorithms_available:
        raise DownloadError(f"unsupported checksum {checksum!r} (expected '<algorithm>:<hex>', e.g. 'md5:…')")
    return algorithm.lower(), value.strip().lower()


@dataclass
class Fetched:
    path: Path
    bytes: int  # size of the final file
    received: int  # bytes that came over the network in this call
    checksum: str  # '<algorithm>:<hex>' of the final file


@dataclass(frozen=True)
class Expected:
    """What a finished download must be: its published size and checksum ('<algorithm>:<hex>'), and
    `verify`, a further check that raises IntegrityError (fetch again) or DownloadError (give up)."""

    size: int | None = None
    checksum: str | None = None
    verify: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Request:
    """How to ask the server: extra headers, query parameters, and whether a partial file may be resumed
    with a Range request (False for servers that build the body anew per request)."""

    headers: Mapping[str, str] | None = None
    params: Mapping[str, Any] | None = None
    resume: bool = True


def download(
    url: str,
    dest: Path,
    *,
    policy: RetryPolicy = RetryPolicy(),
    expected: Expected = Expected(),
    request: Request = Request(),
    on_bytes: Callable[[int], None] | None = None,
    what: str = "",
) -> Fetched:
    """Fetch `url` into `dest` via `dest.part`; rename only after size/checksum/verify pass.

    `request.resume`: continue a partial `.part` with a Range request (the server may still send
    everything); False for servers whose body differs per request, where a partial file always restarts.
    Transient failures (connection drops, 408/429/5xx) are retried; an attempt that made resumable
    progress does not use up a retry. Data that arrives but fails verification (IntegrityError from
    the size, checksum or `verify`) is discarded and fetched once more from scratch; any other
    DownloadError from `verify` discards it for good. Raises DownloadError naming `what` and the reason.
    """
    what = what or dest.name
    size, resume = expected.size, request.resume
    checksum = parse_checksum(expected.checksum)
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not resume and part.exists():
        log.info("%s: a partial download cannot be resumed on this server; starting over", what)
        part.unlink()
    received = 0
    fresh_tries = 2  # verification failures allowed before we give up
    attempt = 0
    furthest = size_of(part)
    while True:
        try:
            received += _fetch_to_part(url, part, size=size, request=request, on_bytes=on_bytes, what=what)
        except _Transient as exc:
            # Only a partial file that grew past its best size counts as progress: a server that
            # ignores Range and drops at the same byte every time must still run out of retries.
            progressed = resume and size_of(part) > furthest
            furthest = max(furthest, size_of(part))
            attempt = 0 if progressed else attempt + 1
            if attempt > policy.retries:
                raise DownloadError(
                    f"{what}: giving up after {policy.retries} retries: {exc.reason}"
                ) from None
            delay = policy.wait(max(attempt, 1), exc.response)
            log.warning(
                "%s: %s; retry %d/%d in %.1f s", what, exc.reason, max(attempt, 1), policy.retries, delay
            )
            time.sleep(delay)
            continue
        try:
            digest = _check(part, size=size, expected=checksum, verify=expected.verify, what=what)
            break
        except IntegrityError as exc:
            part.unlink(missing_ok=True)
            furthest = 0
            fresh_tries -= 1
            if fresh_tries <= 0:
                raise
            log.warning("%s; fetching it again from the start", exc)
        except DownloadError:
            part.unlink(missing_ok=True)  # `verify` rejected it for good (e.g. an unsafe archive)
            raise
    final_size = part.stat().st_size
    part.replace(dest)
    return Fetched(dest, final_size, received, digest)


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class _Transient(Exception):
    def __init__(self, reason: str, response: requests.Response | None = None):
        super().__init__(reason)
        self.reason, self.response = reason, response


def _fetch_to_part(
    url: str,
    part: Path,
    *,
    size: int | None,
    request: Request,
    on_bytes: Callable[[int], None] | None,
    what: str,
) -> int:
    """One HTTP attempt appending to `part` (or rewriting it); returns bytes received. Raises _Transient or DownloadError."""
    offset = _start_offset(part, size, request.resume, what)
    if offset is None:
        return 0  # complete already; verification decides
    # identity: Range offsets must count the bytes we store, not a compressed transfer encoding
    request_headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    got = 0
    try:
        with session(request.headers).get(
            url, params=request.params, headers=request_headers, stream=True, timeout=TIMEOUT_S
        ) as response:
            mode = _write_mode(response, part, offset, what)
            if mode is None:
                return 0  # the partial file was already complete
            with open(part, mode) as fh:
                for block in _blocks(response):
                    fh.write(block)
                    got += len(block)
                    if on_bytes is not None:
                        on_bytes(len(block))
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
    ) as exc:
        reason = f"connection failed after {got} bytes: {type(exc).__name__}: {redact(str(exc))}"
        raise _Transient(reason) from None
    return got


def _start_offset(part: Path, size: int | None, resume: bool, what: str) -> int | None:
    """The byte to ask for first (0 after dropping an oversized `part`); None when `part` is complete."""
    offset = size_of(part) if resume else 0
    if size is not None and offset > size:
        log.warning("%s: partial file is larger than the published size; starting over", what)
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return None
    return offset


def _write_mode(response: requests.Response, part: Path, offset: int, what: str) -> str | None:
    """'ab' to append a resumed body, 'wb' for a whole one, None when `part` turned out complete.

    Raises _Transient (retry; `part` removed where it cannot be resumed) or a status error."""
    status = response.status_code
    if status == 416 and offset:
        total = _content_range_total(response.headers.get("Content-Range", ""))
        if total == offset:
            return None
        part.unlink()
        raise _Transient(f"server cannot resume at byte {offset}; starting over", response)
    if status in RETRY_STATUS:
        raise _Transient(_describe_status(response), response)
    if status not in (200, 206):
        raise status_error(what, response)
    if status == 206:
        start = _content_range_start(response.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink()
            raise _Transient(f"server resumed at byte {start}, asked for {offset}; starting over", response)
        return "ab"
    if offset:
        log.info("%s: server ignored the Range request; downloading from the start", what)
    return "wb"


def _blocks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives (read1), so a connection that drops mid-body leaves what did arrive in the .part."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2.3; older ones fall back to whole chunks
    blocks = iter(lambda: read1(CHUNK), b"") if read1 is not None else response.iter_content(CHUNK)
    for block in blocks:
        yield block
        if STOP.is_set():
            raise Cancelled("download interrupted")


def _content_range_start(value: str) -> int | None:
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str) -> int | None:
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _check(
    part: Path,
    *,
    size: int | None,
    expected: tuple[str, str] | None,
    verify: Callable[[Path], None] | None,
    what: str,
) -> str:
    """Raise IntegrityError unless `part` has the published size and checksum; return '<algorithm>:<hex>'."""
    actual = part.stat().st_size
    if size is not None and actual != size:
        raise IntegrityError(f"{what}: size mismatch: published {size} bytes, received {actual}")
    algorithm, value = expected or ("sha256", None)
    got = file_digest(part, algorithm)
    if value is not None and got != value:
        raise IntegrityError(
            f"{what}: checksum mismatch: published {algorithm}:{value}, received {algorithm}:{got}"
        )
    if verify is not None:
        verify(part)
    return f"{algorithm}:{got}"


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(path: Path, needed: int, what: str) -> None:
    """Fail before any download when `needed` bytes (plus 5 %) do not fit at `path`."""
    free = free_bytes(path)
    if needed * 1.05 > free:
        raise DownloadError(
            f"{what}: not enough disk space in {path}: need about {human_bytes(needed * 1.05)}, "
            f"{human_bytes(free)} free (take a subset with --patients/--limit or free space)"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class ByteProgress:
    """Thread-safe byte counter: a tqdm bar with rate and ETA on a TTY, a log line every `every_s` otherwise."""

    def __init__(self, desc: str, total: int | None = None, every_s: float = 10.0):
        self.desc, self.total, self.every_s = desc, total, every_s
        self.done = 0
        self._lock = threading.Lock()
        self._start = self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True
            )

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        line = f"{self.desc}: {human_bytes(self.done)}"
        if self.total:
            eta = max(self.total - self.done, 0) / rate if rate > 0 else float("inf")
            line += f" / {human_bytes(self.total)} ({100 * self.done / self.total:.0f} %, ETA {eta:.0f} s)"
        return line + f" at {human_bytes(rate)}/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done:
            log.info("%s", self._line(time.monotonic()))

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
