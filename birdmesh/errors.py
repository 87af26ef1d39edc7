"""User-facing errors and the command-line wrapper that turns them into one line and an exit code."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (path, file content, option). Printed as one line, never a traceback.

    The message should name the file or option and the problem, e.g. ``"clip.mp4: no readable frames"``.
    """


def cli_entry(main: F) -> F:
    """Wrap a CLI ``main`` so that a ``UserError`` prints ``error: <message>`` on stderr and exits with 2.

    Any other exception is a bug of ours and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
