"""Files read one bounded way and written whole or not at all: the one reader of user JSON and the one writer.

``read_json``: every JSON the commands read from a user's folder (a model's ``config.json``, a run's pointer file, a training or
question file, a checkpoint's state) goes through ``read_json``: a size limit before reading, and any way the text
can fail to be JSON (broken, cut short, not UTF-8, nested deeper than the parser's stack) becomes one ``UserError``
line naming the file, instead of a ``JSONDecodeError`` or a ``RecursionError`` traceback.

``write_atomically`` (and ``write_bytes_atomically`` / ``write_text_atomically`` / ``write_json_atomically``): every
final file (a feature file, the training JSON, ``mm_projector.bin``, a run's config and reports, predictions,
judgements) is written to ``.<name>.tmp`` in the same folder, flushed to disk, then renamed onto its name. A process
killed while writing leaves the previous file whole and the temporary beside it; ``remove_leftover_temporaries``
deletes those at the next start. One temporary name per final file: each final file has one writer at a time (a
run's main process, an extraction's folder lock), and a test can aim ``strace -P`` at it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from video_chatgpt.errors import UserError

logger = logging.getLogger(__name__)

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"

# Config and pointer files are a few KB; instruction and question files reach hundreds of MB (100K records).
DEFAULT_MAX_JSON_BYTES = 4 << 30


def read_json(path: str | Path, *, max_bytes: int = DEFAULT_MAX_JSON_BYTES, expect: type | None = None):
    """The JSON value in ``path``; ``expect`` (``dict`` or ``list``) checks the top-level type.

    Raises ``UserError`` naming the file for: a file over ``max_bytes``, text that is not UTF-8 JSON, nesting too
    deep for the parser, or a top-level value of another type. A missing file stays ``FileNotFoundError``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a file of this kind may have")
    raw = path.read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read") from None
    if expect is not None and not isinstance(value, expect):
        wanted = {dict: "an object ({...})", list: "a list ([...])"}.get(expect, expect.__name__)
        raise UserError(f"{path}: expected {wanted} at the top level, found {type(value).__name__}")
    return value


def temporary_path(path: str | Path) -> Path:
    """``folder/.name.tmp``: where ``folder/name`` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}")


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write the whole file at the temporary path, fsync it, and rename it onto ``path``.

    The folder is created if needed. On any failure (or a signal Python sees) the temporary file is removed and
    ``path`` is untouched. The temporary file is created afresh (a stale one, or a link planted there, is removed
    first), with the mode a plain ``open`` gives (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        tmp.unlink(missing_ok=True)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_new(tmp: Path, data: bytes) -> None:
    # O_EXCL | O_NOFOLLOW: the temporary is a new file of ours, never a link's target.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    return write_atomically(path, lambda tmp: _write_new(tmp, data))


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: str | Path, value, **dumps_kwargs) -> Path:
    """``json.dumps(value, **dumps_kwargs)`` written atomically (UTF-8)."""
    return write_text_atomically(path, json.dumps(value, **dumps_kwargs))


def remove_leftover_temporaries(folder: str | Path, finals: Iterable[str | Path] | None = None) -> list[Path]:
    """Delete the temporaries killed writers left in ``folder``: of the given final files only (``finals``), or
    every ``.<name>.tmp`` file there. Returns what was removed (each logged)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if finals is None:
        candidates = folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}")
    else:
        candidates = (temporary_path(folder / Path(f).name) for f in finals)
    removed = []
    for tmp in candidates:
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink()
            removed.append(tmp)
            logger.info("removed %s (a temporary file left by a run that was stopped while writing)", tmp)
    return removed
