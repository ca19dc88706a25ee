"""Reading .bin shards tensor by tensor (torchzip) gives exactly what torch.load gives, and runs no code."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from video_chatgpt.weights.checkpoint import WeightsError, open_bin_shard
from video_chatgpt.weights.torchzip import TorchZipShard, UnsupportedTorchZip


def test_same_tensors_as_torch_load(tmp_path):
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    state = OrderedDict(
        half=torch.randn(4, 3).half(),
        bf16=torch.randn(7).bfloat16(),
        transposed=torch.randn(3, 5).t(),  # non-contiguous
        row=base[2],  # a view into another tensor's storage, at an offset
        whole=base,
        param=torch.nn.Parameter(torch.ones(2, 2)),
        ints=torch.arange(5),
        flags=torch.tensor([True, False]),
        empty=torch.zeros(0, 4, dtype=torch.float16),
        scalar=torch.tensor(3.5),
    )
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    shard = TorchZipShard(path)
    want = torch.load(path, weights_only=True)
    assert list(shard.refs) == list(want)
    for name, t in want.items():
        got = shard.get(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t.detach()), name
    shard.close()


def test_unknown_content_falls_back_to_torch_load(tmp_path):
    path = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)  # pre-1.6 format: not a zip
    with pytest.raises(UnsupportedTorchZip):
        TorchZipShard(path)
    state = open_bin_shard(path)
    assert isinstance(state, dict) and torch.equal(state["w"], torch.ones(3))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2), "x": evil}, path)
    with pytest.raises(WeightsError, match="cannot be read as a PyTorch checkpoint"):
        open_bin_shard(path)
    assert not marker.exists()
