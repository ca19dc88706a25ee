"""One error path for every command: a one-line message naming the file and what to do, exit status 1.

Library code raises :class:`UserError` (or lets ``OSError`` through) for anything a user can fix: a missing file,
a bad flag value, a folder that is not what it should be. Each command's ``main`` is wrapped by :func:`run_main`
(the console command does it for every command; the documented scripts call it themselves), which turns those into

    video-chatgpt <command>: error: <message>

on stderr and exit status 1; Ctrl-C exits 130 with one line; usage errors stay argparse's (status 2). The traceback
is shown only with ``--debug`` (anywhere on the command line) or ``VIDEO_CHATGPT_DEBUG=1``.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from collections.abc import Callable

DEBUG_FLAG = "--debug"


class UserError(Exception):
    """An error the user can fix; its message is the whole story (file, what is wrong, what to do)."""


def _os_error_message(exc: OSError) -> str:
    if exc.filename is None and exc.strerror is None and str(exc):
        # Raised with a message of its own (``FileNotFoundError("... not found")`` by a library): that message
        # is the story; the generic line below would drop the path it names.
        return str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" -> {exc.filename2}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or folder{where}"
    if isinstance(exc, IsADirectoryError):
        return f"expected a file but found a folder{where}"
    if isinstance(exc, NotADirectoryError):
        return f"expected a folder but found a file{where}"
    if isinstance(exc, FileExistsError):  # e.g. mkdir of an output folder where a file of that name is
        return f"a file is in the way where a folder was to be created{where} (remove it or write elsewhere)"
    if isinstance(exc, PermissionError):
        return f"permission denied{where} (check the owner and mode of the file or folder)"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where} (free some space or write elsewhere)"
    if exc.errno == errno.EROFS:
        return f"read-only file system{where} (write elsewhere)"
    return f"{exc.strerror or exc}{where}"


def error_message(exc: BaseException) -> str | None:
    """The one-line message for an error a user can act on, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    if isinstance(exc, MemoryError):
        return "out of memory" + (f": {exc}" if str(exc) else "")
    return None


def wants_debug(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("VIDEO_CHATGPT_DEBUG", "") not in ("", "0")


def settle_deepspeed_accelerator() -> None:
    """When DeepSpeed is installed and no CUDA GPU is present, tell it the accelerator is the CPU
    (``DS_ACCELERATOR=cpu``, unless the user set it): transformers imports DeepSpeed with every model, and its
    accelerator probe otherwise prints a "Setting accelerator to CPU" warning in every command. On a GPU machine
    nothing is set, so DeepSpeed finds the GPU as before."""
    if "DS_ACCELERATOR" in os.environ or importlib.util.find_spec("deepspeed") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_main(func: Callable[[list[str]], int | None], argv: list[str] | None, prog: str) -> int:
    """Run ``func(argv)`` under the one error path; returns the exit status. ``--debug`` is removed from argv."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = wants_debug(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    settle_deepspeed_accelerator()
    try:
        return int(func(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        print(f"{prog}: (run again with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 1
