"""Errors a user can act on: the CLI prints their message (naming the file or key) without a traceback."""

from __future__ import annotations

import errno
import os


class PrditError(Exception):
    """Base of every error caused by input, parameters or the outside world rather than by a bug."""


class ConfigError(PrditError, ValueError):
    """A parameter is invalid; the message names the file or key and the reason (raised by prdit.config when
    the parameters load, and by a library function that finds a combination of them it cannot run)."""


class MissingInputError(PrditError, FileNotFoundError):
    """What a stage reads is not there (yet): the message names the path and the command that makes it."""


# what to do about an OSError, by errno (the line names the file and the system's reason first)
_OS_HINTS = {
    errno.ENOSPC: "free some space (or move the folder) and re-run; outputs were left as they were",
    errno.EDQUOT: "free some space and re-run; outputs were left as they were",
    errno.EFBIG: "free space or raise the file-size limit (ulimit -f) and re-run; outputs were left as they were",
    errno.ENOENT: "make it first (the command that writes it) or fix the path",
    errno.EACCES: "fix its permissions or run as its owner",
    errno.EPERM: "fix its permissions or run as its owner",
    errno.ELOOP: "a symbolic link loop: fix or remove the link",
    errno.ENOTEMPTY: "another run may be writing the same output; wait for it, then re-run",
    errno.EEXIST: "another run may be writing the same output; wait for it, then re-run",
    errno.EROFS: "write elsewhere",
    errno.EISDIR: "a file was expected: fix the path",
    errno.ENOTDIR: "a folder was expected: fix the path",
}


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself or its cause / context chain), if any."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, OSError) and not isinstance(node, PrditError):
            return node
        if isinstance(node, PrditError):  # it says what happened itself
            return None
        seen.add(id(node))
        node = (
            node.__cause__
            if node.__cause__ is not None
            else None
            if node.__suppress_context__
            else node.__context__
        )
    return None


def describe(exc: BaseException) -> str:
    """One line for an exception a user can cause: the file and what to do; for others, the type and
    the first line of the message."""
    os_exc = os_error(exc)
    if os_exc is not None and os_exc.errno is None:  # raised with a message only: it says it all
        return str(os_exc) or type(os_exc).__name__
    if os_exc is not None:
        names = [str(f) for f in (os_exc.filename, os_exc.filename2) if f is not None]
        where = " -> ".join(names) or "a file"
        reason = os_exc.strerror or str(os_exc) or type(os_exc).__name__
        todo = _OS_HINTS.get(os_exc.errno or -1)
        if os_exc.errno == errno.ENOENT and names and os.path.islink(names[0]):
            todo = "a broken symbolic link: fix or remove the link"
        return f"{where}: {reason}" + (f"; {todo}" if todo else "")
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
