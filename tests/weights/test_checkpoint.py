"""Reading checkpoints header-first and writing streamed safetensors shards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from video_chatgpt.weights.checkpoint import (
    TensorReader,
    WeightsError,
    find_checkpoint,
    is_lfs_pointer,
    read_safetensors_header,
    read_tensor_infos,
)
from video_chatgpt.weights.delta import COMBINE, COMBINE_ROWS, COPY, combine
from video_chatgpt.weights.writer import OutputTensor, ShardedSafetensorsWriter, parse_size, plan_shards


def test_all_four_layouts_read_alike(folders, tmp_path):
    from video_chatgpt.sample.models import write_sharded_state_dict

    state = {"a": torch.randn(3, 5, dtype=torch.float16), "b": torch.randn(7, dtype=torch.bfloat16), "c": torch.ones(2)}
    for fmt in ("bin", "safetensors"):
        for shards in (1, 3):
            folder = tmp_path / f"{fmt}{shards}"
            folder.mkdir()
            write_sharded_state_dict(state, folder, num_shards=shards, safetensors=fmt == "safetensors")
            ckpt = find_checkpoint(folder)
            assert (ckpt.format, len(ckpt.shards), ckpt.index_file is not None) == (fmt, shards, shards > 1)
            infos = read_tensor_infos(ckpt)
            assert {k: (i.shape, i.dtype) for k, i in infos.items()} == {
                k: (tuple(v.shape), v.dtype) for k, v in state.items()
            }
            with TensorReader(ckpt, infos, max_open=1) as reader:
                for k, v in state.items():
                    assert torch.equal(reader.get(k), v)


def test_safetensors_header_matches_the_library(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"w": torch.randn(4, 3), "h": torch.zeros(5, dtype=torch.float16), "i": torch.arange(6)}
    save_file(tensors, path, metadata={"format": "pt"})
    infos = read_safetensors_header(path)
    want = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    assert {k: (i.shape, i.dtype) for k, i in infos.items()} == want
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    with pytest.raises(WeightsError, match="longer than its header says"):
        read_safetensors_header(path)
    path.write_bytes(b"\x10\x00")
    with pytest.raises(WeightsError, match="too short"):
        read_safetensors_header(path)


def test_lfs_pointer_detection(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    assert is_lfs_pointer(p)
    torch.save({"a": torch.ones(1)}, p)
    assert not is_lfs_pointer(p) and not is_lfs_pointer(tmp_path / "missing")


def test_streamed_writer_is_read_by_safetensors(tmp_path):
    tensors = {f"t{i}": torch.randn(i + 1, 8).to(torch.float16) for i in range(7)}
    tensors["bf"] = torch.randn(3, 3).to(torch.bfloat16)
    planned = [OutputTensor(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    layout = plan_shards(planned, max_shard_bytes=64)  # 8x2 bytes per row: a few tensors per shard
    assert len(layout) > 2 and [t for s in layout for t in s] == planned
    with ShardedSafetensorsWriter(tmp_path, layout) as writer:
        for k, v in tensors.items():
            writer.write(k, v)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    got = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(tmp_path / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
        got.update(load_file(tmp_path / shard))
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], v) for k, v in tensors.items())
    # Our own header reader agrees and finds the sizes exact.
    assert read_tensor_infos(find_checkpoint(tmp_path)).keys() == tensors.keys()


def test_writer_refuses_out_of_plan_tensors(tmp_path):
    layout = plan_shards([OutputTensor("a", (2,), torch.float16), OutputTensor("b", (2,), torch.float16)], 10**9)
    writer = ShardedSafetensorsWriter(tmp_path, layout)
    with pytest.raises(WeightsError, match="does not match the planned next tensor"):
        writer.write("b", torch.zeros(2, dtype=torch.float16))
    writer.write("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(WeightsError, match="only 1 of 2 tensors"):
        writer.close()


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(1234) == 1234
    assert parse_size("1.5 gb") == 1_500_000_000 and parse_size("10M") == 10**7
    for bad in ("lots", "-1GB", "0", "2 GBs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_combine_rules_in_fp16():
    torch.manual_seed(0)
    s = torch.randn(6, 4).half()
    b = torch.randn(4, 4)  # fp32 input: cast to fp16 first, as from_pretrained(torch_dtype=float16)
    want = s.float()
    want[:4] += b.half().float()
    out = combine(COMBINE_ROWS, s, b, subtract=False)
    assert out.dtype == torch.float16 and torch.equal(out, want.half()) and torch.equal(out[4:], s[4:])
    assert torch.equal(combine(COMBINE, s[:4], b, subtract=True), (s[:4].float() - b.half().float()).half())
    assert torch.equal(combine(COPY, s.float(), None, subtract=False), s)
    before = s.clone()
    combine(COMBINE_ROWS, s, b, subtract=True)
    assert torch.equal(s, before)  # inputs are never modified


def test_config_is_copied_not_rewritten():
    from video_chatgpt.weights.delta import fp16_config

    raw = b'{"model_type": "llava",  "torch_dtype": "float16", "mm_hidden_size": 1024}'
    assert fp16_config(raw) == (raw, False)  # byte for byte
    out, changed = fp16_config(b'{"model_type": "llava", "torch_dtype": "float32", "use_mm_proj": true}')
    assert changed and json.loads(out) == {"model_type": "llava", "torch_dtype": "float16", "use_mm_proj": True}
