"""Files read one bounded way and written whole or not at all: the one reader of user JSON and the one writer.

* ``read_json``: every JSON a command reads from a user's folder (a config, a pointer, a training or question file, a
  checkpoint's state): a size limit before reading, and any way the text can fail to be JSON becomes one
  ``UserError`` line naming the file, instead of a ``JSONDecodeError`` or ``RecursionError`` traceback.
* ``write_atomically`` (and the bytes / text / JSON writers): every final file is written to ``.<name>.tmp`` in its
  folder, flushed to disk and renamed onto its name, so a killed process leaves the previous file whole;
  ``remove_leftover_temporaries`` deletes the temporaries at the next start. One temporary name per final file (each
  has one writer at a time: a run's main process, an extraction's folder lock), so a test can aim ``strace -P`` at it.
* ``check_output``: before anything is written or deleted, no output may be, contain or sit inside an input.
* ``staged_folder`` (with ``folder_lock`` and ``recover_killed_folder``): a whole output folder (a merged model, an
  applied delta) is written beside its place and renamed in when complete; a killed ``--overwrite`` gets the
  previous folder back at the next start.
* ``inside``: a path named by data joined to its folder, refused when it is absolute or climbs out with ``..``.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

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
    value = parse_json(read_bytes_bounded(path, max_bytes), str(path))
    if expect is not None and not isinstance(value, expect):
        wanted = {dict: "an object ({...})", list: "a list ([...])"}.get(expect, expect.__name__)
        raise UserError(f"{path}: expected {wanted} at the top level, found {type(value).__name__}")
    return value


def read_bytes_bounded(path: str | Path, max_bytes: int = DEFAULT_MAX_JSON_BYTES) -> bytes:
    """The bytes of ``path``, or a ``UserError`` naming it when it is larger than ``max_bytes`` (checked first)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a file of this kind may have")
    return path.read_bytes()


def parse_json(data: bytes | str, where: str):
    """``json.loads(data)`` with every failure one ``UserError`` starting with ``where`` (a file, or a file's line).

    Bytes may be UTF-8 (with or without a byte-order mark), UTF-16 or UTF-32, as ``json.loads`` detects them."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read") from None


# ------------------------------------------------------------------------------- outputs never destroy inputs
def same_path(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file or folder: the same path after resolving links, or the same inode."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _overlap(output: Path, input_: Path) -> str | None:
    """How ``output`` overlaps ``input_`` ("is", "contains", "is inside"), or None."""
    if same_path(output, input_):
        return "is"
    out, inp = output.resolve(), input_.resolve()
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "is inside"
    return None


def check_output(output: str | Path, inputs: Mapping[str, str | Path | None], flag: str) -> None:
    """Refuse an ``output`` (given as ``flag``) that is, contains or sits inside one of ``inputs`` (flag -> path;
    None entries are skipped): writing it would replace, delete or change what the command reads.

    Call it before anything is written or deleted. Raises one ``UserError`` line naming both paths."""
    for input_flag, input_ in inputs.items():
        if input_ is None:
            continue
        how = _overlap(Path(output), Path(input_))
        if how is not None:
            raise UserError(
                f"{flag} {output} {how} the input {input_flag} {input_}; writing there would destroy an input: "
                f"name another {flag}"
            )


def check_output_folder(output: Path, inputs: Mapping[str, str | Path | None], flag: str, overwrite: bool) -> None:
    """``check_output`` for a command that writes a whole folder: also refuse a file in its place, and an existing
    folder unless ``--overwrite`` (which then replaces it whole, by rename)."""
    check_output(output, inputs, flag)
    if output.exists() and not output.is_dir():
        raise UserError(f"{flag} {output} is a file; name a folder (it is created)")
    if output.exists() and not overwrite:
        raise UserError(f"{flag} {output} exists; choose another folder or pass --overwrite")


@contextmanager
def folder_lock(output: str | Path, log: Callable[[str], object] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder that will hold ``output`` while it is written.

    It makes ``recover_killed_folder`` safe: no other command is writing next to ``output`` when leftovers are
    removed. Locking the parent folder itself leaves no lock file behind; two runs into one parent folder take turns
    (the second waits, and says so). The lock dies with its process, a SIGKILL included.
    """
    parent = Path(os.path.abspath(output)).parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another command writing into {parent} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _partial_prefix(output: Path) -> str:
    return f".{output.name}.partial-"


def _old_prefix(output: Path) -> str:
    return f".{output.name}.old-"


def recover_killed_folder(output: str | Path) -> list[str]:
    """Undo what a run killed inside ``staged_folder`` left next to ``output``; returns one line per action.

    Call with ``folder_lock`` held. A kill between the two renames of an ``--overwrite`` leaves the previous
    ``output`` in ``.<name>.old-*/<name>`` and no ``output``: it is moved back, so the rerun starts from the state
    before the killed run (and ``--overwrite`` decides again). Half-written ``.<name>.partial-*`` folders and emptied
    ``.old-*`` folders are deleted.
    """
    output = Path(os.path.abspath(output))
    parent = output.parent
    if not parent.is_dir():
        return []
    actions = []
    for old in sorted(parent.glob(f"{glob.escape(_old_prefix(output))}*")):
        kept = old / output.name
        if kept.exists() and not output.exists():
            os.replace(kept, output)
            actions.append(f"restored {output} from {old} (left by a killed --overwrite run)")
        shutil.rmtree(old)
        actions.append(f"removed {old} (left by a killed run)")
    for partial in sorted(parent.glob(f"{glob.escape(_partial_prefix(output))}*")):
        shutil.rmtree(partial)
        actions.append(f"removed {partial} (half-written by a killed run)")
    return actions


@contextmanager
def staged_folder(output: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``output``; on success it replaces ``output`` (old content removed),
    on any failure (Ctrl-C included) it is deleted, so nothing half-written is ever at ``output``.

    A SIGKILL cannot be caught: what it leaves is undone by ``recover_killed_folder`` on the next run."""
    output = Path(os.path.abspath(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(output), dir=output.parent))
    try:
        yield tmp
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=_old_prefix(output), dir=output.parent))
            os.replace(output, old / output.name)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------- paths named by data stay inside
def unsafe_name_reason(name: object, folder_flag: str) -> str | None:
    """Why ``name`` (from a data file or a request) cannot name a file inside the folder ``folder_flag`` names, or
    None when it can. Pure: the check is on the name, so links inside the folder (to a shared disk) are allowed."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\x00" in name:
        return "holds a NUL character"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return f"is an absolute path; name files relative to {folder_flag}"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"climbs out of {folder_flag} ('..'); name a file inside it"
    return None


def inside(folder: str | Path, name: object, what: str, folder_flag: str) -> Path:
    """``folder / name``, or a ``UserError`` naming ``what`` (e.g. "record 3 video_name") and the folder when
    ``name`` is absolute, climbs out with ``..`` or is not text."""
    reason = unsafe_name_reason(name, folder_flag)
    if reason is not None:
        raise UserError(f"{what} {name!r} {reason} ({folder_flag} {folder})")
    return Path(folder) / os.path.normpath(name)


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
