"""Every bad input of the issue gives a clear error naming file and tensor, and leaves nothing at the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from video_chatgpt.weights import delta as delta_module
from video_chatgpt.weights.apply_delta import apply_delta, main
from video_chatgpt.weights.checkpoint import WeightsError

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4b6e4e8e0e8b2d1f1f0b3ad5e5d3ea3f5b1e2a3c4d5e6f708192a3b4c5d6e7f8\n"
    "size 9976634558\n"
)


def assert_nothing_written(target: Path) -> None:
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def fails(base: Path, delta: Path, target: Path, *needles: str) -> str:
    with pytest.raises(WeightsError) as exc:
        apply_delta(base, target, delta)
    message = str(exc.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert_nothing_written(target)
    return message


def rewrite_bin_tensor(folder: Path, name: str, value: torch.Tensor) -> Path:
    """Replace tensor ``name`` in the .bin shard that holds it. Returns that shard."""
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    shard = folder / index["weight_map"][name]
    state = torch.load(shard, weights_only=True)
    state[name] = value
    torch.save(state, shard)
    return shard


def rewrite_safetensors_tensor(folder: Path, name: str, value: torch.Tensor) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    state = load_file(shard)
    state[name] = value
    save_file(state, shard, metadata={"format": "pt"})
    return shard


def test_base_is_a_file(folders, delta_bin, tmp_path):
    """Users pass the trained projector video_chatgpt-7B.bin as the base."""
    file = tmp_path / "video_chatgpt-7B.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(4, 2)}, file)
    message = fails(
        file, delta_bin, tmp_path / "target", str(file), "is a file, not a model folder", "--projection_path"
    )
    assert "--base-model-path" in message


def test_base_folder_without_weights(delta_bin, tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "consolidated.00.pth").write_bytes(b"x")
    (tmp_path / "llama" / "params.json").write_text("{}")
    fails(tmp_path / "llama", delta_bin, tmp_path / "target", "has no model weights", "convert_llama_weights_to_hf")


def test_missing_shard(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    (base / "pytorch_model-00002-of-00003.bin").unlink()
    fails(base, delta_bin, tmp_path / "target", str(base / "pytorch_model-00002-of-00003.bin"), "is missing",
          "pytorch_model.bin.index.json", "incomplete")


@pytest.mark.parametrize("which", ["delta_shard", "base_shard", "tokenizer"])
def test_git_lfs_pointer(folders, delta_bin, copy_of, tmp_path, which):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    pointer = {
        "delta_shard": delta / "model-00002-of-00004.safetensors",
        "base_shard": base / "pytorch_model-00001-of-00003.bin",
        "tokenizer": delta / "tokenizer.model",
    }[which]
    assert pointer.exists()
    pointer.write_text(LFS_POINTER)
    fails(base, delta, tmp_path / "target", str(pointer), "Git LFS pointer", "git lfs pull")


def test_shape_mismatch_on_a_non_vocabulary_tensor(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    name = "model.layers.1.mlp.up_proj.weight"
    shard = rewrite_bin_tensor(base, name, torch.zeros(100, 64, dtype=torch.float16))
    delta_shard = delta_bin / json.loads((delta_bin / "model.safetensors.index.json").read_text())["weight_map"][name]
    fails(base, delta_bin, tmp_path / "target", name, str(shard), str(delta_shard), "(172, 64)", "(100, 64)")


def test_vocabulary_tensor_with_fewer_rows_in_the_delta(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    rewrite_bin_tensor(base, "lm_head.weight", torch.zeros(32010, 64, dtype=torch.float16))
    fails(base, delta_bin, tmp_path / "target", "'lm_head.weight'", "(32003, 64)", "(32010, 64)", "more rows")


@pytest.mark.parametrize("side", ["delta", "base"])
def test_non_floating_dtype(folders, delta_bin, copy_of, tmp_path, side):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    name = "model.norm.weight"
    if side == "delta":
        shard = rewrite_safetensors_tensor(delta, name, torch.ones(64, dtype=torch.int64))
    else:
        shard = rewrite_bin_tensor(base, name, torch.ones(64, dtype=torch.int32))
    fails(base, delta, tmp_path / "target", str(shard), f"'{name}'", "floating point", "int")


def test_delta_tensor_missing_from_the_base(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    index_path = base / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.0.self_attn.o_proj.weight"
    shard = base / index["weight_map"].pop(name)
    state = torch.load(shard, weights_only=True)
    del state[name]
    torch.save(state, shard)
    index_path.write_text(json.dumps(index))
    fails(base, delta_bin, tmp_path / "target", name, "is not in the base", "not Vicuna")


def test_index_names_a_tensor_its_shard_lacks(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    index = json.loads((base / "pytorch_model.bin.index.json").read_text())
    name = "model.layers.0.mlp.down_proj.weight"
    shard = base / index["weight_map"][name]
    state = torch.load(shard, weights_only=True)
    del state[name]
    torch.save(state, shard)
    fails(base, delta_bin, tmp_path / "target", str(shard), name, "incomplete")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_shard(folders, delta_bin, copy_of, tmp_path, fmt):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    if fmt == "safetensors":
        shard = delta / "model-00003-of-00004.safetensors"
    else:
        shard = base / "pytorch_model-00003-of-00003.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    fails(base, delta, tmp_path / "target", str(shard), "truncated")


def test_target_exists(folders, delta_bin, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not empty; remove it or pass --overwrite"):
        apply_delta(folders["base_bin"], target, delta_bin)
    assert (target / "keep.txt").read_text() == "mine"
    apply_delta(folders["base_bin"], target, delta_bin, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors.index.json").exists()
    with pytest.raises(WeightsError, match="input folder"):
        apply_delta(folders["base_bin"], delta_bin, delta_bin, overwrite=True)


def test_failure_while_writing_leaves_nothing(folders, delta_bin, tmp_path, monkeypatch):
    """A failure after some shards are written (disk full, Ctrl-C, ...) removes the partial folder."""
    calls = []
    real = delta_module.combine

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(delta_module, "combine", flaky)
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        apply_delta(folders["base_bin"], target, delta_bin, max_shard_size="1MB")
    assert_nothing_written(target)


def test_cli_reports_the_error(folders, tmp_path, capsys):
    file = tmp_path / "video_chatgpt-7B.bin"
    file.write_bytes(b"\0" * 16)
    code = main(["--base-model-path", str(file), "--target-model-path", str(tmp_path / "t"), "--delta-path",
                 str(folders["target_bin"])])
    assert code == 1
    assert "apply-delta: error:" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "t")
    with pytest.raises(SystemExit):
        main(["--base-model-path", "a", "--target-model-path", "b", "--delta-path", "c", "--max-shard-size", "lots"])
