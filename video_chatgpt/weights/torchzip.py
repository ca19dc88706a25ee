"""Read tensors one at a time from a ``torch.save`` zip file (a ``pytorch_model-0000i-of-0000n.bin`` shard).

Since PyTorch 1.6 ``torch.save`` writes a zip archive (stored, not compressed):

* ``<prefix>/data.pkl``: a pickle of the state dict, where each tensor is
  ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`` and each storage a persistent id
  ``("storage", torch.HalfStorage, key, location, numel)``;
* ``<prefix>/data/<key>``: the raw bytes of storage ``key`` (little-endian, see ``<prefix>/byteorder``).

``TorchZipShard`` unpickles ``data.pkl`` with an unpickler that knows only those few names (anything else is
refused, so no code can run) and turns every tensor into a reference (storage key, offset, shape, stride). ``get``
then reads exactly that tensor's bytes from the file into fresh memory. Nothing else of the shard is ever loaded or
mapped, so a 10 GB shard costs one tensor of memory. Files this does not understand (the pre-1.6 format, big-endian,
compressed members, tensor subclasses) raise ``UnsupportedTorchZip``; the caller then falls back to ``torch.load``.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

# Storage classes torch.save names (the legacy typed-storage names, still written) -> dtype of their elements.
STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header: 30 bytes, then name and extra field


class UnsupportedTorchZip(Exception):
    """The file is not a torch.save zip this reader handles (the caller uses torch.load instead)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's elements are: ``storage[offset + sum(i_k * stride_k)]`` for each index ``i`` of ``shape``."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def span(self) -> int:
        """Number of storage elements from the first to the last element of the tensor (0 if it is empty)."""
        if any(n == 0 for n in self.shape):
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> TensorRef:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_ignored) -> TensorRef:
    # nn.Parameter(data, requires_grad, backward_hooks): the data is what we need.
    return data


class _RefUnpickler(pickle.Unpickler):
    """Unpickler for torch.save state dicts that builds references, not tensors, and resolves nothing else."""

    _GLOBALS = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    }

    def find_class(self, module: str, name: str):
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise UnsupportedTorchZip(f"the pickle refers to {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsupportedTorchZip(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        return _StorageRef(str(key), storage_type.dtype, int(numel))


class TorchZipShard:
    """One ``torch.save`` zip file, read tensor by tensor. ``refs``: name -> ``TensorRef`` in file order.

    Raises ``UnsupportedTorchZip`` for files it does not handle and ``zipfile.BadZipFile`` / ``OSError`` /
    ``ValueError`` for broken ones (a truncated file has no zip directory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not zipfile.is_zipfile(self.path):
            raise UnsupportedTorchZip("not a zip file (the pre-1.6 torch.save format, or broken)")
        self._file = open(self.path, "rb")
        try:
            self.refs, self._data_offsets = self._read_index()
        except BaseException:
            self._file.close()
            raise

    def _read_index(self) -> tuple[dict[str, TensorRef], dict[str, int]]:
        zf = zipfile.ZipFile(self._file)
        pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnsupportedTorchZip(f"expected one <prefix>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder").strip() != b"little":
            raise UnsupportedTorchZip("big-endian tensors")
        state = _RefUnpickler(io.BytesIO(zf.read(pickles[0]))).load()
        if not isinstance(state, dict) or not all(isinstance(v, TensorRef) for v in state.values()):
            raise UnsupportedTorchZip("not a flat state dict of tensors")
        offsets: dict[str, int] = {}
        for ref in state.values():
            key = ref.storage.key
            if key in offsets:
                continue
            info = zf.getinfo(f"{prefix}data/{key}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnsupportedTorchZip(f"storage {key} is compressed")
            item = torch.empty((), dtype=ref.dtype).element_size()
            if info.file_size < ref.storage.numel * item:
                raise ValueError(f"storage {key} holds {info.file_size} bytes, expected {ref.storage.numel * item}")
            # The data start after the local header, whose name/extra lengths may differ from the directory's.
            self._file.seek(info.header_offset)
            sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(self._file.read(_LOCAL_HEADER.size))
            if sig != b"PK\x03\x04":
                raise ValueError(f"bad zip local header for storage {key}")
            offsets[key] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        for name, ref in state.items():
            if ref.offset < 0 or ref.offset + ref.span > ref.storage.numel:
                raise ValueError(f"tensor {name!r} reaches past the end of its storage")
        return dict(state), offsets

    def get(self, name: str) -> torch.Tensor:
        """Read tensor ``name`` (fresh memory; shape, stride and dtype as saved)."""
        ref = self.refs[name]
        buf = torch.empty(ref.span, dtype=ref.dtype)
        if ref.span:
            item = buf.element_size()
            self._file.seek(self._data_offsets[ref.storage.key] + ref.offset * item)
            got = self._file.readinto(memoryview(buf.view(torch.uint8).numpy()))
            if got != ref.span * item:
                raise ValueError(f"tensor {name!r}: only {got} of {ref.span * item} bytes could be read")
        return buf.as_strided(ref.shape, ref.stride)

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------ bounded, safe torch.load of data
class TorchFileError(ValueError):
    """A ``torch.save`` file that cannot be loaded safely; the message is the cause, without the file's name."""


# What a failed ``torch.load`` may raise for a broken or forged file (the message is made one line by ``load_reason``).
TORCH_LOAD_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    pickle.UnpicklingError,
    struct.error,
    MemoryError,
    RecursionError,
    zipfile.BadZipFile,
)
_ADVICE = ("weights_only", "weights only", "trusted source", "documentation", "safe_globals", "add_safe_globals")


def load_reason(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed, without torch's advice to retry with ``weights_only=False`` (which
    would run the file's code): what the pickle asked for, or the first line of the message that is not advice."""
    text = str(exc)
    asked = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got (<class '[\w.]+'>)", text)
    if asked:
        return f"its pickle asks for {asked.group(1)}, which a file of tensors and plain data never does"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    facts = [line for line in lines if not any(word in line.lower() for word in _ADVICE)]
    if isinstance(exc, pickle.UnpicklingError) or len(facts) < len(lines):
        detail = [f for f in facts if not f.lower().startswith(("please file", "(1)", "(2)"))]
        return f"its pickle is not plain data ({detail[0] if detail else type(exc).__name__})"
    return facts[0] if facts else type(exc).__name__


def load_torch_data(path: str | Path, max_bytes: int) -> object:
    """``torch.load(path, weights_only=True)`` (no code runs; tensors memory-mapped) of a ``torch.save`` zip file,
    after checks that keep a forged file from asking for more memory than it holds: at most ``max_bytes`` bytes,
    every member stored (not compressed) and the members together no larger than the file. Any failure is a
    ``TorchFileError`` with the cause in one line (never torch's ``weights_only=False`` advice).

    Numpy arrays (an RNG state) load only inside ``torch.serialization.safe_globals`` naming numpy's few classes.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise TorchFileError(f"{size:,} bytes, more than the {max_bytes:,} a file of this kind may have")
    if not zipfile.is_zipfile(path):
        raise TorchFileError("not a torch.save zip file (garbage, the pre-1.6 format, or cut short)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise TorchFileError(f"its zip directory is broken ({load_reason(exc)})") from None
    compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise TorchFileError(f"member {compressed[0]!r} is compressed, which torch.save never writes")
    total = sum(m.file_size for m in members)
    if total > size:
        raise TorchFileError(f"its members claim {total:,} bytes, more than the file's {size:,}")
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except TORCH_LOAD_ERRORS as exc:
        raise TorchFileError(load_reason(exc)) from None
