"""How an error reaches a user: one line, the exception's type and the first line of its message. The command
lines print it for an unexpected error (a traceback only with --debug); trials and MLflow tags carry it."""

from __future__ import annotations

import re
import sys


def error_line(error: BaseException | str) -> str:
    """'Type: first line of the message' of an exception; of a Ray task's error, of the exception it raised; of a
    traceback's text (Ray Tune's error.txt), its last exception line."""
    if isinstance(error, str):
        return error_text_line(error)
    cause = getattr(error, "cause", None) or error
    message = str(cause).strip()
    return f"{type(cause).__name__}: {message.splitlines()[0] if message else ''}"


# A traceback's exception line ('ValueError: bad', 'ray.exceptions.RayTaskError(ValueError): ...'), not indented
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(\([\w.]+\))?: ")


def error_text_line(text: str) -> str:
    """An error's text as Ray Tune's error.txt keeps it ('Failure # 2 (occurred at ...)' before each failure's
    traceback): the last failure's exception line, or its last line where none is one."""
    last = re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1]
    lines = [line.rstrip() for line in last.splitlines() if line.strip()]
    found = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (found or lines or ["(no message)"])[-1]


def exit_with_one_line(error: Exception, debug: bool) -> int:
    """A command line's last word on an error: bad input (a ValueError, which SpaceError and DataSourceError are)
    is its message and exit code 2; anything else one line and exit code 1, or its traceback with --debug."""
    if isinstance(error, ValueError):
        print(f"error: {error}", file=sys.stderr)
        return 2
    if debug:
        raise error
    print(f"error: {error_line(error)}  (--debug shows the traceback)", file=sys.stderr)
    return 1
