"""Read Hugging Face model folders tensor by tensor, without loading a whole model.

A model folder holds its weights in one of four layouts (what ``save_pretrained`` writes, old and new): one
``model.safetensors`` or ``pytorch_model.bin``, or shards (``model-0000i-of-0000n.safetensors`` /
``pytorch_model-0000i-of-0000n.bin``, the latter the 2023 LLaVA / LLaMA folders) named by a ``*.index.json``.

``find_checkpoint(folder)`` finds the layout and checks that every shard the index names is there and is not a
Git LFS pointer (a few hundred bytes of text left by a ``git clone`` without ``git lfs``). ``read_tensor_infos(ckpt)``
gets every tensor's shape and dtype without reading data: from the safetensors header (checked against the file
size) or, for ``.bin``, the pickle and the zip directory (``torchzip``), so a truncated download is caught.
``TensorReader`` then reads just the bytes of each tensor asked for, so memory is bounded by the tensors in use,
whatever the shard or model size (a pre-1.6 ``.bin`` that is not a zip is loaded whole, one shard at a time).

Every error is a ``WeightsError`` (a ``ValueError``) whose message names the file, and the tensor where there is one.

Example::

    ckpt = find_checkpoint("LLaVA-7B-Lightening-v1-1")
    infos = read_tensor_infos(ckpt)           # {"lm_head.weight": TensorInfo(shape=(32003, 4096), ...), ...}
    with TensorReader(ckpt) as reader:
        w = reader.get("model.mm_projector.weight")   # (4096, 1024) fp16
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json
from video_chatgpt.weights.torchzip import TorchZipShard, UnsupportedTorchZip, load_reason

# The first line of every Git LFS pointer file.
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"

# Weight layouts in the order transformers looks for them: (index file, single file, format).
LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin"),
)

# safetensors dtype codes <-> torch dtypes (the ones a language model checkpoint can hold).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# The safetensors library refuses headers above 100 MB; a larger length means the file is not safetensors.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class WeightsError(UserError, ValueError):
    """A model folder or weight file that cannot be used. The message names the file, and the tensor if any.

    A ``UserError``, so every command prints it as one line (``video_chatgpt.errors.run_main``)."""


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, without its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path  # the shard that holds it
    offset: int = -1  # safetensors: byte offset of the data in the file (-1 for .bin)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class Checkpoint:
    """The weight files of one model folder."""

    folder: Path
    format: str  # "safetensors" or "bin"
    shards: tuple[str, ...]  # shard file names, relative to ``folder``, in order
    index_file: str | None  # e.g. "pytorch_model.bin.index.json"; None for a single file
    weight_map: dict[str, str] | None  # tensor name -> shard name, from the index (None without index)

    def path(self, shard: str) -> Path:
        return self.folder / shard

    def describe(self) -> str:
        kind = "safetensors" if self.format == "safetensors" else "PyTorch .bin"
        index = f" + {self.index_file}" if self.index_file else " (no index)"
        return f"{len(self.shards)} {kind} shard(s){index}"


def tensor_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def is_lfs_pointer(path: str | Path) -> bool:
    """True if ``path`` is a Git LFS pointer file (text starting ``version https://git-lfs...``) not real data."""
    path = Path(path)
    try:
        # Pointers are ~130 bytes; anything over 1 KB is not one (avoid reading big files).
        if path.stat().st_size > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def lfs_pointer_message(path: Path) -> str:
    return (
        f"{path} is a Git LFS pointer file ({path.stat().st_size} bytes of text), not the real weights: the download "
        f"did not fetch the LFS objects. Run `git lfs install && git lfs pull` in {path.parent}, or download the "
        f"files again with `hf download`."
    )


def _not_a_folder_message(path: Path, role: str) -> str:
    hint = ""
    if path.suffix in (".bin", ".pt", ".pth", ".safetensors"):
        hint = (
            " A single weight file is not enough: give the Hugging Face model folder (config.json + weight shards)."
            " video_chatgpt-7B.bin / mm_projector.bin is Video-ChatGPT's trained projector, which inference takes as"
            " --projection_path; it is not a base model."
        )
    return f"{role} {path} is a file, not a model folder.{hint}"


def find_checkpoint(folder: str | Path, role: str = "model folder") -> Checkpoint:
    """Find the weight layout of ``folder`` and check that every shard exists and is real data (not an LFS pointer).

    ``role`` names the folder in messages (e.g. ``"--base-model-path"``). Raises ``WeightsError``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise WeightsError(f"{role} {folder} does not exist")
    if not folder.is_dir():
        raise WeightsError(_not_a_folder_message(folder, role))
    for index_name, single_name, fmt in LAYOUTS:
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = _read_index(index_path)
            shards = tuple(sorted(set(weight_map.values())))
            _check_shard_files(folder, shards, weight_map, index_name)
            return Checkpoint(folder, fmt, shards, index_name, weight_map)
        if (folder / single_name).is_file():
            _check_shard_files(folder, (single_name,), None, None)
            return Checkpoint(folder, fmt, (single_name,), None, None)
    raise WeightsError(_no_weights_message(folder, role))


def _no_weights_message(folder: Path, role: str) -> str:
    present = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "") if present else "nothing"
    hint = ""
    if any(n.startswith("consolidated.") for n in present):
        hint = (
            " These look like Meta's original LLaMA files: convert them to the Hugging Face format first "
            "(transformers' convert_llama_weights_to_hf.py)."
        )
    elif any(n.endswith((".bin", ".safetensors")) for n in present):
        hint = " There are weight files, but not under the names save_pretrained writes."
    return (
        f"{role} {folder} has no model weights: expected model.safetensors[.index.json] or "
        f"pytorch_model.bin[.index.json]; found {shown}.{hint}"
    )


def _read_index(index_path: Path) -> dict[str, str]:
    if is_lfs_pointer(index_path):
        raise WeightsError(lfs_pointer_message(index_path))
    try:
        index = read_json(index_path)
    except (OSError, UserError) as exc:
        raise WeightsError(f"{index_path}: not a readable JSON index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index_path}: has no 'weight_map' (tensor name -> shard file)")
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or "/" in v or v.startswith(".")]
    if bad:
        raise WeightsError(f"{index_path}: tensor {bad[0]!r} maps to an invalid shard name {weight_map[bad[0]]!r}")
    return weight_map


def _check_shard_files(
    folder: Path, shards: tuple[str, ...], weight_map: dict[str, str] | None, index_name: str | None
) -> None:
    problems = []
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            held = [k for k, v in (weight_map or {}).items() if v == shard]
            example = f", e.g. {held[0]!r}" if held else ""
            problems.append(
                f"{path} is missing ({index_name} lists it for {len(held)} tensor(s){example}); "
                f"the download is incomplete"
            )
        elif is_lfs_pointer(path):
            problems.append(lfs_pointer_message(path))
    if problems:
        raise WeightsError("\n".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Shapes and dtypes from the files (no tensor data read).


def _whole(value) -> int:
    """A size or offset of a safetensors header: a JSON integer >= 0 (not a float, text or boolean)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a whole number >= 0")
    return value


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header and check it against the file size. Returns ``{name: TensorInfo}`` in file order.

    Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}}``, then the
    data buffer, which must end exactly at the largest ``data_offsets`` end (shorter = truncated download).
    """
    path = Path(path)
    if is_lfs_pointer(path):
        raise WeightsError(lfs_pointer_message(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: {size} bytes, too short to be a safetensors file (truncated?)")
        n = int.from_bytes(head, "little")
        if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise WeightsError(
                f"{path}: header length {n} does not fit in the file ({size} bytes): not a safetensors file, or "
                f"truncated"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is corrupt") from exc
    except RecursionError:
        raise WeightsError(f"{path}: the safetensors header is nested too deeply; the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    data_len = size - 8 - n
    infos: dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(_whole(d) for d in entry["shape"])
            start, end = (_whole(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(
                f"{path}: tensor {name!r} has an unreadable or unsupported header entry {entry!r}"
            ) from exc
        info = TensorInfo(name, shape, dtype, path, offset=8 + n + start)
        if end - start != info.nbytes or start < 0:
            raise WeightsError(
                f"{path}: tensor {name!r} of shape {shape} {dtype} needs {info.nbytes} bytes but its offsets "
                f"span {end - start}; the file is corrupt"
            )
        end_max = max(end_max, end)
        infos[name] = info
    if end_max != data_len:
        what = "truncated (the download stopped early?)" if end_max > data_len else "longer than its header says"
        raise WeightsError(
            f"{path}: the header describes {end_max} bytes of tensor data but the file holds {data_len}: {what}"
        )
    return infos


def load_bin_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load`` one ``.bin`` shard safely (``weights_only``: no code runs), memory-mapped when possible.

    With ``mmap=True`` the tensors' data stay in the file until touched, so loading is cheap and the shard's pages
    count towards memory only as they are read. The pre-1.6 (non-zip) format cannot be mapped and is read whole.
    """
    path = Path(path)
    if is_lfs_pointer(path):
        raise WeightsError(lfs_pointer_message(path))
    mmap = zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, TypeError, pickle.UnpicklingError) as exc:
        # Typical: "PytorchStreamReader failed reading zip archive: failed finding central directory" = truncated.
        msg = load_reason(exc)  # never torch's advice to load with weights_only=False
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {msg}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        kind = type(state[not_tensors[0]]).__name__
        raise WeightsError(f"{path}: entry {not_tensors[0]!r} is a {kind}, not a tensor")
    return state


def open_bin_shard(path: str | Path) -> TorchZipShard | dict[str, torch.Tensor]:
    """A ``.bin`` shard ready to give tensors one by one: a ``TorchZipShard`` (reads only the tensors asked for),
    or, for files it does not handle (pre-1.6 format, ...), the ``load_bin_shard`` state dict."""
    path = Path(path)
    if is_lfs_pointer(path):
        raise WeightsError(lfs_pointer_message(path))
    try:
        return TorchZipShard(path)
    except UnsupportedTorchZip:
        return load_bin_shard(path)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, struct.error) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {msg}") from exc


def read_shard_infos(ckpt: Checkpoint, shard: str) -> dict[str, TensorInfo]:
    """Shapes and dtypes of every tensor in one shard, in file order (safetensors: header only; .bin: mmap load)."""
    path = ckpt.path(shard)
    if ckpt.format == "safetensors":
        return read_safetensors_header(path)
    handle = open_bin_shard(path)
    if isinstance(handle, dict):
        infos = {k: TensorInfo(k, tuple(v.shape), v.dtype, path) for k, v in handle.items()}
        handle.clear()
    else:
        infos = {k: TensorInfo(k, r.shape, r.dtype, path) for k, r in handle.refs.items()}
        handle.close()
    return infos


def indexed_tensors(
    ckpt: Checkpoint, shard: str, found: dict[str, TensorInfo]
) -> tuple[dict[str, TensorInfo], list[str]]:
    """Of the tensors ``found`` in ``shard``: those the index maps to it (all of them without an index), and the
    names the index maps to it that the shard lacks."""
    if ckpt.weight_map is None:
        return found, []
    kept = {k: v for k, v in found.items() if ckpt.weight_map.get(k) == shard}
    return kept, [k for k, v in ckpt.weight_map.items() if v == shard and k not in found]


def read_tensor_infos(ckpt: Checkpoint) -> dict[str, TensorInfo]:
    """Shapes and dtypes of the whole checkpoint, shard by shard (insertion order = shard order, then file order).

    With an index, only the tensors it maps to a shard are taken from that shard (as transformers does), and every
    tensor it names must be in its shard (a shard that lacks some is incomplete or from another model).
    """
    infos: dict[str, TensorInfo] = {}
    problems = []
    for shard in ckpt.shards:
        kept, missing = indexed_tensors(ckpt, shard, read_shard_infos(ckpt, shard))
        if missing:
            problems.append(
                f"{ckpt.path(shard)}: {ckpt.index_file} says it holds tensor {missing[0]!r} "
                f"({len(missing)} missing in all), but it does not; the shard is incomplete or from another model"
            )
        infos.update(kept)
    if problems:
        raise WeightsError("\n".join(problems))
    return infos


# --------------------------------------------------------------------------------------------------------------
# Tensor data.


class _SafetensorsFile:
    """Reads one tensor at a time at the offsets the header gave (seek + ``readinto``), nothing mapped."""

    def __init__(self, path: Path):
        if sys.byteorder != "little":
            raise WeightsError("reading safetensors needs a little-endian machine")
        self._file = open(path, "rb")

    def get(self, info: TensorInfo) -> torch.Tensor:
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes:
            # The raw little-endian bytes straight into the tensor's memory (through a flat uint8 view of it).
            self._file.seek(info.offset)
            got = self._file.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
            if got != info.nbytes:
                raise ValueError(f"cut short ({got} of {info.nbytes} bytes): the file is truncated")
        return tensor

    def close(self) -> None:
        self._file.close()


class _BinShard:
    """A ``.bin`` shard: ``TorchZipShard`` (one tensor read at a time) or the whole ``load_bin_shard`` state dict."""

    def __init__(self, path: Path):
        self._shard = open_bin_shard(path)

    def get(self, info: TensorInfo) -> torch.Tensor:
        if isinstance(self._shard, dict):
            return self._shard[info.name]
        return self._shard.get(info.name)

    def close(self) -> None:
        if isinstance(self._shard, dict):
            self._shard.clear()  # drops the storages (unmaps the file)
        else:
            self._shard.close()


class TensorReader:
    """Tensors of a checkpoint by name, keeping at most ``max_open`` shards open (least recently used closed first).

    Each ``get`` reads only that tensor's bytes into fresh memory (safetensors: at the header's offset; ``.bin``: at
    its storage in the zip), so memory is the tensors the caller holds, whatever the shard size. Reopening a shard
    is cheap (a header or a pickle), so one open shard is enough even when two checkpoints' shards do not line up.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, ckpt: Checkpoint, infos: dict[str, TensorInfo] | None = None, max_open: int = 1):
        self.ckpt = ckpt
        self.infos = infos if infos is not None else read_tensor_infos(ckpt)
        self.max_open = max(1, max_open)
        self._open: OrderedDict[Path, _SafetensorsFile | _BinShard] = OrderedDict()

    def _shard(self, path: Path) -> _SafetensorsFile | _BinShard:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)[1].close()
        try:
            handle = _SafetensorsFile(path) if self.ckpt.format == "safetensors" else _BinShard(path)
        except OSError as exc:
            raise WeightsError(f"{path}: cannot be opened ({exc})") from exc
        self._open[path] = handle
        return handle

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (on CPU, in its stored dtype). Raises ``WeightsError`` naming file and tensor."""
        info = self.infos.get(name)
        if info is None:
            raise WeightsError(f"{self.ckpt.folder}: has no tensor {name!r}")
        try:
            tensor = self._shard(info.file).get(info)
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"{info.file}: cannot read tensor {name!r} ({exc})") from exc
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise WeightsError(
                f"{info.file}: tensor {name!r} reads as {tuple(tensor.shape)} {tensor.dtype}, but it was "
                f"{info.shape} {info.dtype} when the checkpoint was checked (file changed?)"
            )
        return tensor

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_tensors(
    ckpt: Checkpoint, names: list[str], infos: dict[str, TensorInfo]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names`` in that order, holding one shard open at a time when the names are
    grouped by shard (as ``read_tensor_infos`` orders them)."""
    with TensorReader(ckpt, infos, max_open=1) as reader:
        for name in names:
            yield name, reader.get(name)
