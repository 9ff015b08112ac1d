"""What a command-line program does when the reader of its output goes away.

``edgeloop-hub pipeline list | head`` closes the pipe after ten lines; the next
write raises ``BrokenPipeError``. That is not an error the user made: the program
stops quietly with the status a shell gives a process ended by SIGPIPE (141), as
Unix tools do, instead of printing "error: [Errno 32] Broken pipe".
"""

from __future__ import annotations

import os
import sys
from typing import Final

__all__ = ["EXIT_BROKEN_PIPE", "after_broken_pipe"]

EXIT_BROKEN_PIPE: Final = 141
"""128 + SIGPIPE: what a shell reports for a program the pipe's end stopped."""


def after_broken_pipe() -> int:
    """Call from the ``except BrokenPipeError`` of a program's main: points stdout at
    /dev/null, so that the interpreter's flush at exit does not raise again, and
    returns :data:`EXIT_BROKEN_PIPE`."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (a test's capture)
        pass
    return EXIT_BROKEN_PIPE
