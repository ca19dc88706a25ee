"""Final files written whole or not at all: a temporary file in the same folder, flushed, then renamed.

A run killed while it writes ``mm_projector.bin`` (or the trainables, the config, the run info, the report) leaves
the previous good file in place and a ``.<name>.tmp`` beside it; the next run removes such leftovers
(``remove_leftover_temporaries``). Only the main process writes a run's files, so one temporary name per final file
is enough (and lets a test aim ``strace -P`` at it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def temporary_path(path: str | Path) -> Path:
    """``folder/.name.tmp``: where ``write_atomically`` writes ``folder/name`` before renaming it."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}")


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write the whole file at the temporary path, fsync it, and rename it onto ``path``.

    On any failure (or a signal that Python sees) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_leftover_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.<name>.tmp`` files left by a killed run in ``folder`` and its ``checkpoint-*`` folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    places = [folder, *(p for p in folder.glob("checkpoint-*") if p.is_dir())]
    removed = []
    for place in places:
        for tmp in place.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    for tmp in removed:
        logger.info("removed %s (a temporary file left by a run that was stopped while writing)", tmp)
    return removed
