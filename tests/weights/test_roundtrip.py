"""make-delta / apply-delta round trip on tiny sharded models, in both file formats, against the original's rule."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.weights import load_folder
from video_chatgpt.weights.apply_delta import apply_delta
from video_chatgpt.weights.make_delta import make_delta

PROJECTOR = ("model.mm_projector.weight", "model.mm_projector.bias")


def original_rule(source: dict, base: dict, sign: int) -> dict:
    """The original, computed here on its own: both models cast to fp16; for every source tensor, add (sign=+1) or
    subtract (-1) the base into its top-left block (the whole tensor when shapes are equal; the first rows of the
    vocabulary tensors), in fp32 and rounded once to fp16; the projector (source only) as stored."""
    out = {}
    for name, s in source.items():
        o = s.half().float()
        if name in base:
            b = base[name].half().float()
            block = tuple(slice(0, n) for n in b.shape)
            o[block] = o[block] + sign * b
        else:
            assert name in PROJECTOR
        out[name] = o.half()
    return out


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == torch.float16, name
        assert got[name].shape == want[name].shape, name
        diff = (got[name].float() - want[name].float()).abs().max()
        assert torch.equal(got[name], want[name]), f"{name}: max diff {diff}"


@pytest.mark.parametrize(
    "target_key, base_key",
    [("target_bin", "base_bin"), ("target_safetensors", "base_safetensors"), ("target_bin", "base_safetensors")],
    ids=["bin", "safetensors", "mixed"],
)
def test_round_trip_matches_the_original_rule(folders, tmp_path, target_key, base_key):
    target_dir, base_dir = folders[target_key], folders[base_key]
    target, base = load_folder(target_dir), load_folder(base_dir)
    assert target["model.embed_tokens.weight"].shape[0] == 32003 and base["lm_head.weight"].shape[0] == 32000

    made = make_delta(base_dir, target_dir, tmp_path / "delta", max_shard_size="2MB")
    delta = load_folder(tmp_path / "delta")
    assert_same_tensors(delta, original_rule(target, base, -1))
    assert len(made.shards) > 1  # 2 MB shards of an ~8 MB model
    for name in PROJECTOR:  # absolute, not a difference
        assert torch.equal(delta[name], target[name].half())
    # Extra vocabulary rows (LLaVA's image tokens) keep the target's values.
    assert torch.equal(delta["lm_head.weight"][32000:], target["lm_head.weight"][32000:].half())

    applied = apply_delta(base_dir, tmp_path / "recon", tmp_path / "delta")
    recon = load_folder(tmp_path / "recon")
    assert_same_tensors(recon, original_rule(delta, base, +1))
    # And it is the target again, up to fp16 rounding of (t - b) + b.
    for name, t in target.items():
        assert torch.allclose(recon[name].float(), t.float(), rtol=2e-3, atol=2e-3), name
    assert applied.num_tensors == len(target) and not applied.warnings


def test_output_folder_layout(folders, delta_bin, tmp_path):
    out = tmp_path / "LLaVA-Lightning-7B-v1-1"
    result = apply_delta(folders["base_bin"], out, delta_bin, max_shard_size="1MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 3 and list(result.shards) == shards
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in load_folder(out).values())
    assert set(index["weight_map"]) == set(load_folder(out))
    # The delta's config (model_type and mm_* keys) and tokenizer go to the target byte for byte.
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ):
        assert (out / name).read_bytes() == (delta_bin / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    # No temporary folder is left next to it.
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_output_loads_with_transformers(folders, delta_bin, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path / "target"
    apply_delta(folders["base_bin"], out, delta_bin)
    raw = json.loads((out / "config.json").read_text())
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    model, info = LlamaForCausalLM.from_pretrained(out, config=config, dtype=torch.float16, output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == set(PROJECTOR)
    assert torch.equal(model.lm_head.weight, load_folder(out)["lm_head.weight"])
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 32003 and tok.convert_tokens_to_ids("<im_end>") == 32002


def test_dropped_keys_warn(folders, copy_of, tmp_path):
    """Base-only tensors are dropped (the original walks the delta); delta-only vision tower weights too."""
    from safetensors.torch import save_file

    from video_chatgpt.sample.models import write_sharded_state_dict

    base = copy_of(folders["base_bin"])
    state = load_folder(base)
    for f in base.glob("pytorch_model*"):
        f.unlink()
    state["model.extra_buffer.weight"] = torch.ones(3)
    write_sharded_state_dict(state, base, num_shards=2, safetensors=False)
    target = copy_of(folders["target_safetensors"])
    save_file(
        {"model.vision_tower.vision_tower.w": torch.ones(2, 2)},
        target / "model-00004-of-00004.safetensors",
        metadata={"format": "pt"},
    )
    index = json.loads((target / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.vision_tower.vision_tower.w"] = "model-00004-of-00004.safetensors"
    (target / "model.safetensors.index.json").write_text(json.dumps(index))

    result = make_delta(base, target, tmp_path / "delta")
    text = "\n".join(result.warnings)
    assert "model.extra_buffer.weight" in text and "model.vision_tower.vision_tower.w" in text
    delta = load_folder(tmp_path / "delta")
    assert "model.extra_buffer.weight" not in delta and "model.vision_tower.vision_tower.w" not in delta


def test_cli_and_entry_script(folders, delta_bin, tmp_path, capsys):
    from video_chatgpt.cli import main

    assert (
        main(
            [
                "apply-delta",
                "--base-model-path",
                str(folders["base_bin"]),
                "--target-model-path",
                str(tmp_path / "a"),
                "--delta-path",
                str(delta_bin),
                "--max-shard-size",
                "4MB",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().err
    assert (
        main(
            [
                "make-delta",
                "--base-model-path",
                str(folders["base_bin"]),
                "--target-model-path",
                str(tmp_path / "a"),
                "--delta-path",
                str(tmp_path / "d"),
                "--quiet",
            ]
        )
        == 0
    )
    # The documented script, run from the repository root as the user's document says.
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/apply_delta.py",
            "--base-model-path",
            str(folders["base_bin"]),
            "--target-model-path",
            str(tmp_path / "b"),
            "--delta-path",
            str(delta_bin),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_folder(tmp_path / "b").keys() == load_folder(tmp_path / "a").keys()
    for name, t in load_folder(tmp_path / "a").items():
        assert torch.equal(t, load_folder(tmp_path / "b")[name])
    assert re.search(r"wrote .*b: \d+ tensors", proc.stderr)
