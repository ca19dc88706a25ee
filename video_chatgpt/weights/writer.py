"""Write sharded safetensors one tensor at a time, so that no shard is ever held in memory whole.

A safetensors file is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}``
and the raw tensor bytes back to back. When every output tensor's name, shape and dtype is known before the first
one is computed (as in apply/make-delta, where they come from the input headers), the header of each shard can be
written first and each tensor appended as soon as it is computed, then dropped. Peak memory is then one tensor and
its inputs, not a shard.

Output layout (what ``save_pretrained`` writes; transformers, ``safe_open`` and our loader read it):
``model-00001-of-0000n.safetensors`` ... plus ``model.safetensors.index.json``
``{"metadata": {"total_size": bytes}, "weight_map": {name: shard}}``. The index is written even for one shard, so
every folder we write has the same shape.

Example::

    layout = plan_shards([OutputTensor("w", (4, 4), torch.float16)], max_shard_bytes=parse_size("2GB"))
    with ShardedSafetensorsWriter(folder, layout) as writer:
        writer.write("w", torch.zeros(4, 4, dtype=torch.float16))
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from video_chatgpt.weights.checkpoint import TORCH_TO_SAFETENSORS, WeightsError, tensor_nbytes

# Files of ~2 GB: a 7B fp16 model is 7 files, each small enough to re-download; memory does not depend on it.
DEFAULT_MAX_SHARD_SIZE = "2GB"
INDEX_NAME = "model.safetensors.index.json"

# Decimal units as transformers' max_shard_size ("2GB" = 2e9 bytes); binary ones with "i"; a bare "G" means GB.
_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000, ``"500MiB"`` -> 524_288_000, ``"1e6"`` or ``1000000`` -> bytes (as transformers).

    Raises ``ValueError`` for anything else or a size that is not positive.
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMGT]?I?B?)\s*", text.upper())
        if not m or m.group(2) not in _UNITS:
            raise ValueError(f"cannot read size {text!r}; write e.g. 2GB, 500MB, 1GiB or a number of bytes")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class OutputTensor:
    """One tensor to be written: its name, shape and dtype, known before its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.dtype)


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Split ``tensors`` in order into shards of at most ``max_shard_bytes`` (a larger tensor gets its own shard)."""
    shards: list[list[OutputTensor]] = []
    size = 0
    for t in tensors:
        if not shards or (size + t.nbytes > max_shard_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]


def safetensors_header(tensors: list[OutputTensor], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length + JSON header of a shard holding ``tensors`` back to back, padded with spaces to 8 bytes."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        if t.dtype not in TORCH_TO_SAFETENSORS:
            raise WeightsError(f"tensor {t.name!r}: dtype {t.dtype} cannot be stored in safetensors")
        header[t.name] = {
            "dtype": TORCH_TO_SAFETENSORS[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data buffer, as the safetensors library writes
    return len(raw).to_bytes(8, "little") + raw


class ShardedSafetensorsWriter:
    """Write the planned shards into ``folder`` tensor by tensor; ``close()`` checks completeness and writes the index.

    ``write`` must be called once per planned tensor, in plan order, with the planned shape and dtype (anything else
    raises ``WeightsError``: the header is already on disk).
    """

    def __init__(self, folder: str | Path, layout: list[list[OutputTensor]], metadata: dict[str, str] | None = None):
        if sys.byteorder != "little":
            raise WeightsError("writing safetensors needs a little-endian machine")
        self.folder = Path(folder)
        self.layout = layout
        self.metadata = {"format": "pt"} if metadata is None else metadata
        self.names = shard_file_names(len(layout))
        # Flat queue of (shard number, planned tensor), consumed by write().
        self._queue = [(i, t) for i, shard in enumerate(layout) for t in shard]
        self._pos = 0
        self._shard = -1
        self._file = None

    def _open_shard(self, i: int) -> None:
        self._close_file()
        self._shard = i
        self._file = open(self.folder / self.names[i], "wb")
        self._file.write(safetensors_header(self.layout[i], self.metadata))

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._pos >= len(self._queue):
            raise WeightsError(f"tensor {name!r}: all planned tensors are already written")
        shard, planned = self._queue[self._pos]
        if (name, tuple(tensor.shape), tensor.dtype) != (planned.name, planned.shape, planned.dtype):
            raise WeightsError(
                f"tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} does not match the planned next tensor "
                f"{planned.name!r} {planned.shape} {planned.dtype}"
            )
        if shard != self._shard:
            self._open_shard(shard)
        # Raw bytes in native (little-endian) order, without a copy for a contiguous tensor.
        flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(flat.numpy()))
        self._pos += 1

    def close(self) -> dict:
        """Finish the last shard and write the index. Returns the index dict."""
        self._close_file()
        if self._pos != len(self._queue):
            missing = self._queue[self._pos][1].name
            raise WeightsError(f"only {self._pos} of {len(self._queue)} tensors were written (next: {missing!r})")
        weight_map = {t.name: self.names[i] for i, shard in enumerate(self.layout) for t in shard}
        total = sum(t.nbytes for shard in self.layout for t in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return index

    def abort(self) -> None:
        """Close the open file without completing it (the caller removes the folder)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
