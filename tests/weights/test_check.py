"""check-weights on a good folder and on broken ones: each problem is named, training can raise on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from video_chatgpt.weights.check import check_weights, main
from video_chatgpt.weights.checkpoint import WeightsError

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9976634558\n"


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def test_good_folders(tiny_llava, folders, delta_bin, tmp_path, capsys):
    report = check_weights(tiny_llava)
    assert report.ok and report.problems == [] and report.warnings == []  # its vision tower is a local folder
    report.raise_if_bad()
    assert "<im_patch>=32000" in report.facts["tokenizer"] and "(64, 32)" in report.facts["projector"]
    assert check_weights(folders["target_safetensors"]).ok
    # The output of apply-delta is a usable base.
    from video_chatgpt.weights.apply_delta import apply_delta

    apply_delta(folders["base_bin"], tmp_path / "merged", delta_bin)
    assert check_weights(tmp_path / "merged").ok
    assert main([str(tmp_path / "merged")]) == 0
    assert "OK, usable" in capsys.readouterr().out


def break_config_key(folder: Path) -> str:
    edit_json(folder / "config.json", mm_hidden_size=None)
    return "'mm_hidden_size' is missing"


def break_use_mm_proj(folder: Path) -> str:
    edit_json(folder / "config.json", use_mm_proj=False)
    return "'use_mm_proj' is False"


def break_projector_shape(folder: Path) -> str:
    edit_json(folder / "config.json", mm_hidden_size=48)  # the tower is 32 wide, the stored projector (64, 32)
    return "'model.mm_projector.weight' has shape (64, 32), but config.json says (64, 48)"


def break_missing_shard(folder: Path) -> str:
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    return "pytorch_model-00002-of-00002.bin is missing"


def break_lfs_shard(folder: Path) -> str:
    (folder / "pytorch_model-00001-of-00002.bin").write_text(LFS_POINTER)
    return "pytorch_model-00001-of-00002.bin is a Git LFS pointer"


def break_truncated_bin(folder: Path) -> str:
    shard = folder / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:5000])
    return "pytorch_model-00002-of-00002.bin: cannot be read as a PyTorch checkpoint"


def break_image_tokens(folder: Path) -> str:
    (folder / "added_tokens.json").write_text(json.dumps({"<im_patch>": 32000}))
    return "lacks <im_start>, <im_end>"


def break_lfs_tokenizer(folder: Path) -> str:
    (folder / "tokenizer.model").write_text(LFS_POINTER)
    return "tokenizer.model is a Git LFS pointer"


def break_vocab_size(folder: Path) -> str:
    edit_json(folder / "config.json", vocab_size=32000)
    return "'model.embed_tokens.weight' has shape (32003, 64), but config.json says (32000, 64)"


def break_missing_layer(folder: Path) -> str:
    edit_json(folder / "config.json", num_hidden_layers=3)
    return "no weights for layer(s) [2]"


def break_no_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return "config.json is missing"


BREAKS = [
    break_config_key,
    break_use_mm_proj,
    break_projector_shape,
    break_missing_shard,
    break_lfs_shard,
    break_truncated_bin,
    break_image_tokens,
    break_lfs_tokenizer,
    break_vocab_size,
    break_missing_layer,
    break_no_config,
]


@pytest.mark.parametrize("breaker", BREAKS, ids=[b.__name__[6:] for b in BREAKS])
def test_broken_folder(tiny_llava, copy_of, breaker, capsys):
    folder = copy_of(tiny_llava)
    expected = breaker(folder)
    report = check_weights(folder)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(ValueError, match="is not a usable LLaVA model folder"):
        report.raise_if_bad()
    assert main([str(folder), "--no-vision-tower"]) == 1
    out = capsys.readouterr().out
    assert "NOT USABLE" in out and expected in out


def test_truncated_safetensors_and_json_report(folders, copy_of, capsys):
    folder = copy_of(folders["target_safetensors"])
    shard = folder / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main([str(folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and any("truncated" in p and str(shard) in p for p in report["problems"])


def test_file_and_missing_folder(tmp_path):
    file = tmp_path / "video_chatgpt-7B.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(2, 2)}, file)
    assert "is a file, not a model folder" in check_weights(file).problems[0]
    assert "does not exist" in check_weights(tmp_path / "nope").problems[0]
    with pytest.raises(WeightsError):
        check_weights(tmp_path / "nope").raise_if_bad()


def test_vision_tower_not_found_is_a_warning(tiny_llava, copy_of):
    folder = copy_of(tiny_llava)
    edit_json(folder / "config.json", mm_vision_tower="someone/not-cached-tower")
    report = check_weights(folder)
    assert report.ok and "someone/not-cached-tower" in report.warnings[0]
