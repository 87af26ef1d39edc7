"""User-facing errors and the command-line wrapper that turns them into one line and an exit code."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports `kill`


class UserError(Exception):
    """A mistake in the user's input (path, file content, option). Printed as one line, never a traceback.

    The message should name the file or option and the problem, e.g. ``"clip.mp4: no readable frames"``.
    """


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (``kill``, ``timeout``, job schedulers).

    A BaseException like KeyboardInterrupt, so ``except Exception`` blocks let it pass while ``finally`` blocks and
    context managers (``atomic_output_dir`` removing its temporary folder) run as they do for Ctrl-C; Python's
    default for SIGTERM ends the process at once and skips them.
    """


def _terminate(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends the process at once
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (main thread only; a SIGTERM ignored by the parent process
    stays ignored); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_entry(main: F) -> F:
    """Wrap a CLI ``main`` so that a ``UserError`` prints ``error: <message>`` on stderr and exits with 2, Ctrl-C
    exits with 130 and SIGTERM with 143, each after the clean-up of ``finally`` blocks (no temporary folders left).

    Any other exception is a bug of ours and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_raises():
                return main(*args, **kwargs)
        except UserError as err:
            print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line, whatever the message
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated:
            print("error: terminated (SIGTERM)", file=sys.stderr)
            sys.exit(EXIT_TERMINATED)

    return wrapper  # type: ignore[return-value]
