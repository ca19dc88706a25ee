"""The one loader and writer of feature files, used by training, data checks, extraction and inference.

A feature file holds one video's spatio-temporal tokens as a bare 2-D ndarray ``(num_frames + num_patches, width)``
float16, e.g. ``(100 + 256, 1024)`` for ViT-L/14 with 100 frames:

* ``<video_id>.pkl``: ``pickle.dump(ndarray)``, the original's format and that of the official downloads;
* ``<video_id>.npy``: ``numpy.save`` (no pickle at all).

The official files are pickles from a download, and ``pickle.load`` runs whatever code a pickle names. So pickles
are read with an unpickler that resolves only the few numpy globals a plain ndarray needs, and the result must be a
numeric ndarray; anything else raises ``FeatureFileError`` naming the file.

A pickle of a few dozen bytes can ask for gigabytes (a bytes length, a frame length, a memo index, an array shape):
before the unpickler runs, ``scan_pickle`` walks the opcodes and checks every length and memo index against the
file's size. And every array is backed by its bytes in the file: the unpickler builds arrays only from a bytes
payload of exactly shape x itemsize (``ndarray.__setstate__`` or ``_frombuffer``, as numpy writes them), never from
a shape alone (``ndarray(shape)`` and a non-empty ``_reconstruct`` are refused). So nothing larger than the file is
ever allocated, and no array holds memory the file did not fill.

Pickles are written with the module path numpy 1.x knows (``numpy.core.multiarray._reconstruct``; numpy 2 still
resolves it without a warning), byte for byte what numpy 1.x and the original wrote, so the original's
``pickle.load`` under numpy 1.24 reads our files.

A feature folder made by the extraction job also holds ``features_manifest.json``: which tower and settings made
it (``write_manifest`` / ``read_manifest``); ``check_features_match`` is what data checks and training call.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np

from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json, write_bytes_atomically

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


# ----------------------------------------------------------------------------------------------------------------
# Safe, bounded reading of pickles

# Opcodes a pickled ndarray never needs: extension registry, persistent ids, out-of-band buffers, class-building
# opcodes (find_class would refuse their classes anyway; refusing the opcode says so earlier and plainly).
_REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER", "INST", "OBJ",
                    "NEWOBJ", "NEWOBJ_EX"}  # fmt: skip
_MEMO_OPCODES = {"GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT"}
# pickletools' argument kinds whose value is a length-prefixed payload: prefix bytes and signedness.
_COUNTED_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# A counted payload at least this long is an array's raw data: the header reader seeks over it.
_DATA_SEGMENT_MIN = 4096


def scan_pickle(f, size: int) -> list[tuple[int, int]]:
    """Walk a pickle's opcodes from ``f`` (a seekable binary file of ``size`` bytes) without building anything.

    Checks every length-prefixed payload and frame against the bytes left in the file, every memo index against the
    number of opcodes (a sequential memo can hold no more), and refuses opcodes a bare ndarray never uses. Payloads
    are skipped with a seek, so the scan costs the header only. Returns ``(offset, length)`` of the payloads of at
    least ``_DATA_SEGMENT_MIN`` bytes (an array's data). Raises ``pickle.UnpicklingError`` saying what is wrong.
    """
    segments: list[tuple[int, int]] = []
    count = 0
    while True:
        code = f.read(1)
        if not code:
            raise pickle.UnpicklingError(f"truncated: the file ends after {f.tell()} bytes without a STOP opcode")
        op = _OPCODES.get(code)
        if op is None:
            raise pickle.UnpicklingError(f"unknown opcode {code!r} at byte {f.tell() - 1}")
        if op.name in _REFUSED_OPCODES:
            raise pickle.UnpicklingError(f"opcode {op.name} is not allowed in a feature file")
        count += 1
        arg = op.arg
        if arg is not None and arg.n in _COUNTED_PREFIX:
            width, signed = _COUNTED_PREFIX[arg.n]
            prefix = f.read(width)
            if len(prefix) != width:
                raise pickle.UnpicklingError(f"truncated: {op.name} at byte {f.tell() - len(prefix) - 1}")
            length = int.from_bytes(prefix, "little", signed=signed)
            left = size - f.tell()
            if not 0 <= length <= left:
                raise pickle.UnpicklingError(
                    f"{op.name} asks for {length} bytes but only {left} are left in the file (truncated or forged)"
                )
            if length >= _DATA_SEGMENT_MIN:
                segments.append((f.tell(), length))
            f.seek(length, os.SEEK_CUR)
            continue
        value = arg.reader(f) if arg is not None else None
        if op.name == "FRAME" and value > size - f.tell():
            raise pickle.UnpicklingError(
                f"a frame of {value} bytes but only {size - f.tell()} are left in the file (truncated or forged)"
            )
        if op.name in _MEMO_OPCODES and int(value) > count:
            raise pickle.UnpicklingError(f"{op.name} index {value} is beyond the {count} opcodes read so far")
        if op.name == "GLOBAL":
            module, name = value.split(" ", 1)
            if (module, name) not in _ALLOWED_GLOBALS:
                raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a feature file")
        if op.name == "STOP":
            return segments


def _checked_dtype(spec, *args):
    """``numpy.dtype(spec, ...)`` for plain numeric and bool dtypes only (no object, structured or void dtypes)."""
    dtype = np.dtype(spec, *args)
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {dtype} is not allowed in a feature file (expected float16)")
    return dtype


class _NdarrayClass:
    """What the global ``numpy.ndarray`` stands for in a feature pickle: a name, not a callable.

    numpy's pickles name ``ndarray`` only as ``_reconstruct``'s first argument. Calling it (``ndarray(shape)``)
    would hand back uninitialised memory of any shape, backed by no byte of the file, so the call is refused.
    """

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            "the pickle calls numpy.ndarray(...) directly: an array whose data is not in the file is not allowed"
        )


_NDARRAY_CLASS = _NdarrayClass()


class _NdarrayUnpickler(pickle.Unpickler):
    """Unpickler that can build a numpy ndarray and nothing else (no code can run), from the file's own bytes.

    Every array it builds holds bytes read from the file: ``_reconstruct`` may only make the empty array numpy's
    pickles start from, which ``ndarray.__setstate__`` (the BUILD opcode) then fills from a bytes payload, and
    numpy refuses a payload whose length differs from shape x itemsize; ``_frombuffer`` (protocol 5) views a bytes
    payload, and numpy refuses one shorter than the shape. ``ndarray`` itself cannot be called. Call ``scan_pickle``
    first: it bounds every payload by the file's size, and what the unpickler itself allocates (frames, memo).
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a feature file")
        if name == "ndarray":
            return _NDARRAY_CLASS
        target = super().find_class(module, name)
        if name == "_reconstruct":

            def reconstruct(subtype, shape, dtype):
                # numpy's pickles call _reconstruct(ndarray, (0,), b"b"): an empty array, filled by BUILD.
                if subtype is not _NDARRAY_CLASS:
                    raise pickle.UnpicklingError("only a plain numpy.ndarray is allowed in a feature file")
                dims = tuple(int(d) for d in (shape if isinstance(shape, tuple) else (shape,)))
                if math.prod(dims) != 0 or any(d < 0 for d in dims):
                    raise pickle.UnpicklingError(
                        f"the pickle asks _reconstruct for an array of shape {dims}: its data would not come from "
                        f"the file (numpy writes an empty array and fills it from the file's bytes)"
                    )
                return target(np.ndarray, dims, _checked_dtype(dtype))

            return reconstruct
        if name == "_frombuffer":

            def frombuffer(buf, dtype, shape, order):
                # A view of a bytes payload; numpy refuses a shape the payload does not fill exactly.
                return target(buf, _checked_dtype(dtype), shape, order)

            return frombuffer
        if name == "dtype":
            return _checked_dtype
        return target


class _HeaderReader:
    """The file for the unpickler, with the array's data segments (from ``scan_pickle``) seeked over, not read."""

    def __init__(self, f, segments: list[tuple[int, int]]):
        self._f = f
        self._segments = dict(segments)  # payload offset -> length

    def read(self, n: int = -1) -> bytes:
        if self._segments.get(self._f.tell()) == n:
            self._f.seek(n, os.SEEK_CUR)
            return bytes(n)  # zeros: only the shape and dtype of the result are looked at
        return self._f.read(n)

    def readinto(self, buf) -> int:
        n = len(memoryview(buf))
        if self._segments.get(self._f.tell()) == n:
            self._f.seek(n, os.SEEK_CUR)
            return n  # the buffer keeps what it was allocated with
        return self._f.readinto(buf)

    def readline(self) -> bytes:
        return self._f.readline()


def read_feature_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a feature file without reading its data; same rules as ``load_features``.

    ``.pkl``: the bounded opcode scan, then the restricted unpickler with the data seeked over; ``.npy``: the
    ``numpy.lib.format`` header. Either way the file must be long enough to hold the data (a truncated file fails).
    Raises ``FileNotFoundError`` or ``FeatureFileError`` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if path.suffix == ".npy":
                shape, dtype = _npy_header(f, size)
            else:
                segments = scan_pickle(f, size)
                f.seek(0)
                array = _NdarrayUnpickler(_HeaderReader(f, segments)).load()
                if not isinstance(array, np.ndarray):
                    raise FeatureFileError(f"{path}: holds a {type(array).__name__}, expected a bare numpy ndarray")
                shape, dtype = array.shape, array.dtype
    except (FileNotFoundError, FeatureFileError):
        raise
    except _READ_ERRORS as exc:
        raise FeatureFileError(f"{path}: cannot be read as a feature array ({type(exc).__name__}: {exc})") from exc
    _check_array_kind(path, tuple(int(d) for d in shape), np.dtype(dtype))
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _npy_header(f, size: int) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    # Versions 2.0 and 3.0 share one layout (a 4-byte header length); 3.0 only allows utf-8 field names.
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = reader(f)
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which feature files may not use")
    need = f.tell() + math.prod(shape) * dtype.itemsize
    if size < need:
        raise ValueError(f"truncated: {size} bytes, the header needs {need}")
    return tuple(shape), dtype


def _check_array_kind(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: dtype {dtype} is not numeric (expected float16)")
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: has shape {shape}, expected 2 dimensions (tokens, width)")
    if math.prod(shape) == 0:
        raise FeatureFileError(f"{path}: has shape {shape}, which holds no values")


# Errors a malformed or hostile file can raise while it is parsed.
_READ_ERRORS = (pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError, TypeError, IndexError,
                KeyError, OverflowError)  # fmt: skip
# The largest feature file read when no expected shape bounds it: 256 MiB (a 100 + 729 token x 1152 float16 SigLIP
# feature is 1.9 MB; 100 x more leaves room for long videos and wide towers).
MAX_FEATURE_FILE_BYTES = 256 * 2**20
# Bytes of a feature pickle or .npy besides the data (headers: ~200 bytes), for the bound from an expected shape.
_HEADER_SLACK = 4096


def max_file_bytes(expected_shape: tuple[int, int] | None) -> int:
    """The largest file a feature array of ``expected_shape`` can be (any numeric dtype up to 8 bytes)."""
    if expected_shape is None:
        return MAX_FEATURE_FILE_BYTES
    return math.prod(expected_shape) * np.dtype(np.float64).itemsize + _HEADER_SLACK


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
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            bound = max_file_bytes(expected_shape)
            if path.suffix == ".npy":
                if size > bound:
                    raise FeatureFileError(f"{path}: more than the {bound} bytes a file of the expected shape takes")
                # np.load allocates the header's shape before reading: check first that the file holds that much.
                _npy_header(f, size)
                f.seek(0)
                array = np.load(f, allow_pickle=False)
            else:
                if size > bound:
                    raise FeatureFileError(
                        f"{path}: {size} bytes, more than the {bound} a feature file of the expected shape can take"
                    )
                scan_pickle(f, size)  # bounds every payload by the file's size before the unpickler allocates
                f.seek(0)
                array = _NdarrayUnpickler(f).load()
    except (FileNotFoundError, FeatureFileError):
        raise
    except MemoryError as exc:
        raise FeatureFileError(f"{path}: out of memory while reading it (is it really a feature file?)") from exc
    except _READ_ERRORS as exc:
        raise FeatureFileError(f"{path}: cannot be read as a feature array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(array, np.ndarray):
        raise FeatureFileError(f"{path}: holds a {type(array).__name__}, expected a bare numpy ndarray")
    _check_array_kind(path, tuple(array.shape), array.dtype)
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise FeatureFileError(f"{path}: has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    if expected_width is not None and array.shape[1] != expected_width:
        raise FeatureFileError(f"{path}: feature width {array.shape[1]} != expected width {expected_width}")
    return array


def serialize_features(array: np.ndarray, fmt: str) -> bytes:
    """Bytes of a feature file: ``pkl`` = ``pickle.dumps(ndarray)`` as the original wrote, ``npy`` = ``np.save``."""
    if fmt == "pkl":
        return _numpy1_pickle(np.ascontiguousarray(array))
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return buf.getvalue()
    raise ValueError(f"unknown feature format {fmt!r}; expected 'pkl' or 'npy'")


# The first global of a protocol-4 ndarray pickle (SHORT_BINUNICODE: opcode, 1-byte length, the module name), as
# numpy 2 writes it and as numpy 1 (and the original's files) have it.
_NUMPY2_MODULE = b"\x8c\x16numpy._core.multiarray"
_NUMPY1_MODULE = b"\x8c\x15numpy.core.multiarray"
# PROTO 4 (2 bytes), then FRAME (1 byte) with its 8-byte length; the first frame starts at byte 11.
_FRAME_LENGTH_AT = slice(3, 11)
_FIRST_FRAME_AT = 11


def _numpy1_pickle(array: np.ndarray) -> bytes:
    """``pickle.dumps(array, protocol=4)`` as numpy 1.x writes it: the module path numpy 1 can import.

    numpy 2 names ``numpy._core.multiarray._reconstruct``, which numpy 1 cannot import; the name is the first thing
    in the first frame, so it is swapped for ``numpy.core.multiarray`` and the frame length shortened by the one byte.
    """
    data = pickle.dumps(array, protocol=4)
    if data[_FIRST_FRAME_AT:].startswith(_NUMPY1_MODULE):  # numpy 1.x wrote it so already
        return data
    if data[2:3] != pickle.FRAME or not data[_FIRST_FRAME_AT:].startswith(_NUMPY2_MODULE):
        raise RuntimeError(f"unexpected ndarray pickle layout from numpy {np.__version__}: {data[:40]!r}")
    frame = int.from_bytes(data[_FRAME_LENGTH_AT], "little") - (len(_NUMPY2_MODULE) - len(_NUMPY1_MODULE))
    rest = data[_FIRST_FRAME_AT + len(_NUMPY2_MODULE) :]
    return data[:3] + frame.to_bytes(8, "little") + _NUMPY1_MODULE + rest


def save_features(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` atomically to ``path``; the format follows the suffix (``.pkl`` or ``.npy``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    return write_bytes_atomically(path, serialize_features(array, fmt))


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


# ----------------------------------------------------------------------------------------------------------------
# The feature folder's manifest: which tower and settings made its files

MANIFEST_NAME = "features_manifest.json"
MANIFEST_VERSION = 1
# The manifest keys that decide the numbers in the files: a rerun with any of them different would mix two kinds
# of features in one folder. (``vision_tower`` is only the name it was given; ``tower_sha256`` is what it is.)
MANIFEST_SETTINGS = ("tower_sha256", "select_layer", "select_strategy", "num_frames", "spatial_pool", "dtype",
                     "feature_format", "feature_shape")  # fmt: skip


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's ``features_manifest.json`` as a dict, or ``None`` when it has none (e.g. the original's folders).

    Raises ``UserError`` naming the file when it exists but is not a manifest (broken JSON, not an object).
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        return None
    except UserError as exc:
        raise UserError(f"{exc}; delete it and rerun the extraction with --overwrite") from None
    if not isinstance(manifest, dict) or "feature_shape" not in manifest:
        raise UserError(f"{path}: is not a features manifest; delete it and rerun the extraction with --overwrite")
    return manifest


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write ``manifest`` as the folder's ``features_manifest.json`` (atomically, keys sorted: reruns compare it)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomically(Path(folder) / MANIFEST_NAME, text.encode())


def manifest_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for each setting of ``MANIFEST_SETTINGS`` that differs (a key one lacks: not compared)."""
    return [
        f"{key}: {old[key]} -> {new[key]}"
        for key in MANIFEST_SETTINGS
        if key in old and key in new and old[key] != new[key]
    ]


def _tower_key(name: str) -> str:
    """A tower's name without where it is: ``/models/clip-vit-large-patch14/`` ~ ``openai/clip-vit-large-patch14``."""
    return Path(str(name).rstrip("/")).name.lower()


def check_features_match(
    folder: str | Path, *, tower_name: str | None, width: int, num_tokens: int | None
) -> list[str]:
    """Check a feature folder's manifest against the model that will read it; returns warnings (may be empty).

    Raises ``UserError`` when the manifest's feature width differs from ``width`` (the projector's input width,
    ``mm_hidden_size``) or its token count from ``num_tokens`` (``None``: not checked): training on them would fail
    or be wrong. Warns when the manifest's tower name differs from ``tower_name`` (the model config's
    ``mm_vision_tower``; compared by its last path part, so a local copy of the same tower matches). A folder
    without a manifest (the original's, the official downloads) returns no warning: its files are checked by shape
    where they are read.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        return []
    path = Path(folder) / MANIFEST_NAME
    tokens, got_width = (int(d) for d in manifest["feature_shape"])
    made_with = f"made with {manifest.get('vision_tower')}, num_frames={manifest.get('num_frames')}, " \
                f"spatial_pool={manifest.get('spatial_pool')}"  # fmt: skip
    if got_width != width:
        raise UserError(
            f"{path}: the features are {got_width} wide but the model's projector reads {width} ({made_with}); "
            f"extract them with the model's vision tower, or train a model for this tower"
        )
    if num_tokens is not None and tokens != num_tokens:
        raise UserError(
            f"{path}: the features have {tokens} tokens per video but the model expects {num_tokens} ({made_with}); "
            f"extract them with the model's --num_frames / --spatial_pool, or change the model's settings"
        )
    warnings = []
    folder_tower = manifest.get("vision_tower")
    if tower_name is not None and folder_tower is not None and _tower_key(folder_tower) != _tower_key(tower_name):
        warnings.append(
            f"{path}: the features were made with vision tower {folder_tower} but the model config names "
            f"{tower_name} (same width and token count, so training can run; check that this is intended)"
        )
    return warnings


def hash_files(paths: list[Path], chunk: int = 8 * 2**20) -> str:
    """sha256 over each file's name, size and content, in the given order (a tower's config and weight files)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()
