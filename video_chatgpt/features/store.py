"""The one loader and writer of feature files, used by training, data checks, extraction and inference.

A feature file holds one video's spatio-temporal tokens as a bare 2-D ndarray ``(num_frames + num_patches, width)``
float16, e.g. ``(100 + 256, 1024)`` for ViT-L/14 with 100 frames:

* ``<video_id>.pkl``: ``pickle.dump(ndarray)``, the original's format and that of the official downloads;
* ``<video_id>.npy``: ``numpy.save`` (no pickle at all).

The official files are pickles from a download, and ``pickle.load`` runs whatever code a pickle names. So pickles
are read with an unpickler that resolves only the few numpy globals a plain ndarray needs, and the result must be a
numeric ndarray; anything else raises ``FeatureFileError`` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

FEATURE_SUFFIXES = (".pkl", ".npy")

# The only globals a pickled plain ndarray refers to (numpy 1.x paths and numpy 2.x ``_core`` paths).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class FeatureFileError(ValueError):
    """A feature file that cannot be used: unreadable, unsafe, or of the wrong shape or dtype."""


class _NdarrayUnpickler(pickle.Unpickler):
    """Unpickler that can build a numpy ndarray and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a feature file")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        return _NdarrayUnpickler(f).load()


def load_features(
    path: str | Path,
    expected_shape: tuple[int, int] | None = None,
    expected_width: int | None = None,
) -> np.ndarray:
    """Load one feature file (``.pkl`` or ``.npy``) safely and check it. Returns the 2-D numeric ndarray.

    ``expected_shape`` checks the whole shape, ``expected_width`` only the last dimension (the feature width the
    projector reads). Raises ``FeatureFileError`` with the file name and both values on any mismatch.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = _load_pickle(path)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError, TypeError, IndexError) as exc:
        raise FeatureFileError(f"{path}: cannot be read as a feature array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(array, np.ndarray):
        raise FeatureFileError(f"{path}: holds a {type(array).__name__}, expected a bare numpy ndarray")
    if array.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: dtype {array.dtype} is not numeric (expected float16)")
    if array.ndim != 2:
        raise FeatureFileError(f"{path}: has shape {array.shape}, expected 2 dimensions (tokens, width)")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise FeatureFileError(f"{path}: has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    if expected_width is not None and array.shape[1] != expected_width:
        raise FeatureFileError(f"{path}: feature width {array.shape[1]} != expected width {expected_width}")
    return array


def _current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it, racing threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask), so feature
        # folders stay readable by others as the original's files were.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def serialize_features(array: np.ndarray, fmt: str) -> bytes:
    """Bytes of a feature file: ``pkl`` = ``pickle.dumps(ndarray)`` as the original wrote, ``npy`` = ``np.save``."""
    if fmt == "pkl":
        return pickle.dumps(np.ascontiguousarray(array), protocol=4)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return buf.getvalue()
    raise ValueError(f"unknown feature format {fmt!r}; expected 'pkl' or 'npy'")


def save_features(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` atomically to ``path``; the format follows the suffix (``.pkl`` or ``.npy``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    return atomic_write_bytes(path, serialize_features(array, fmt))


def video_id_of(file_name: str) -> str:
    """The video id of a file name: the text before the first dot, as the original does (``v_x.mp4`` -> ``v_x``)."""
    return Path(file_name).name.split(".")[0]


def index_feature_folder(folder: str | Path) -> dict[str, str]:
    """Map ``video_id -> feature file name`` for every ``.pkl``/``.npy`` in ``folder`` (one ``os.scandir``).

    Temporary files of an interrupted write (names starting with a dot) are not features and are left out.
    When both a ``.pkl`` and a ``.npy`` exist for one id, the ``.pkl`` (the documented format) wins.
    """
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(FEATURE_SUFFIXES) or not entry.is_file():
                continue
            vid = video_id_of(name)
            if vid not in found or name.endswith(".pkl"):
                found[vid] = name
    return found
