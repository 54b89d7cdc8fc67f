"""User-facing errors and the one-line CLI error handler shared by every entry point.

Library code raises :class:`PannsError` (or a subclass) with a message that tells the user what
went wrong and what to do. Entry points wrap their ``main`` in :func:`run_cli`, which turns those
errors (and a few OS errors users meet: missing files, disk full) into one line on stderr and a
non-zero exit code instead of a traceback. Set ``PANNS_DEBUG=1`` to see the traceback anyway.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable


class PannsError(Exception):
    """An error caused by the user's input or environment, shown as one line."""


class AudioDecodeError(PannsError):
    """An audio file is missing, unreadable or corrupt."""


class CheckpointError(PannsError):
    """A checkpoint is missing, corrupt or does not match the requested model."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM) that has already logged what it kept and how to continue:
    :func:`run_cli` adds no line of its own and exits with 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = int(signum)


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main()``; print user errors as ``error: <message>`` and exit with status 2."""
    try:
        main()
        sys.stdout.flush()   # a reader that has gone shows here, not as a message at interpreter exit
    except BrokenPipeError:
        # `... list | head`: the reader closed the pipe, which is normal use. Leave quietly with the status
        # of a tool ended by SIGPIPE; stdout goes to devnull so the exit-time flush cannot complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Interrupted as e:
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except PannsError as e:
        if os.environ.get("PANNS_DEBUG"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if os.environ.get("PANNS_DEBUG"):
            raise
        if e.errno == errno.ENOSPC:
            msg = f"disk full while writing {e.filename or ''}; free space and re-run (finished work is kept)"
        elif isinstance(e, FileNotFoundError):
            msg = f"file not found: {e.filename}"
        elif isinstance(e, PermissionError):
            msg = f"permission denied: {e.filename}"
        else:
            msg = f"{type(e).__name__}: {e}"
        print(f"error: {_one_line(msg)}", file=sys.stderr)
        sys.exit(2)


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())
