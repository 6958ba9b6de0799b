"""How an error reaches a user: one line, the exception's type and the first line of its message. The command
lines print it for an unexpected error (a traceback only with --debug); trials and MLflow tags carry it."""

from __future__ import annotations


def error_line(error: BaseException) -> str:
    """'Type: first line of the message' of an exception; of a Ray task's error, of the exception it raised."""
    cause = getattr(error, "cause", None) or error
    message = str(cause).strip()
    return f"{type(cause).__name__}: {message.splitlines()[0] if message else ''}"
