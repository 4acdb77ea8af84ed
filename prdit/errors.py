"""Errors a user can act on: the CLI prints their message (naming the file or key) without a traceback."""


class PrditError(Exception):
    """Base of every error caused by input, parameters or the outside world rather than by a bug."""


class MissingInputError(PrditError, FileNotFoundError):
    """What a stage reads is not there (yet): the message names the path and the command that makes it."""
