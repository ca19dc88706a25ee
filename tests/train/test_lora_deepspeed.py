"""LoRA under DeepSpeed (issue 14): ``torchrun --nproc_per_node=2`` on CPU (gloo) with the document's
``--deepspeed configs/zero2.json`` and ``configs/zero3.json``, 3 steps: the run saves what a plain LoRA run saves
(peft's adapter files + ``mm_projector.bin`` + ``trainable.safetensors``, same tensors, shapes and dtypes; under
ZeRO-3 the gathered tensors, not the empty shards), equals one plain process at the same global batch, and a run
resumed from a checkpoint ends with the uninterrupted run's adapter and projector.

The two torchrun tests are ``slow`` (about 60 s each on 2 cores); the gathered-weights check runs in seconds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import deepspeed  # noqa: E402,F401  (in the test extra; a missing install fails here, loudly)
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ENV, REPO, free_port
from tests.helpers.train import LORA_FLAGS, tiny_video_model, train_paths
from video_chatgpt.model.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

FLAGS = [*LORA_FLAGS, "--lora_dropout", "0", "--save_steps", "1"]


def torchrun(data, model, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "video_chatgpt/train/train_mem.py",
        *train_paths(data, model, out),
        *FLAGS,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def layout(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_lora_under_deepspeed_saves_the_plain_format_and_resumes(config, data, tiny_llava, tmp_path):
    """The DeepSpeed run (2 processes x 2 samples) ends with the adapter and projector of one plain process with
    the same global batch of 4 (dropout 0); under ZeRO-3 the saved tensors are the gathered ones, not the shards."""
    from video_chatgpt.train.train import train

    plain = tmp_path / "plain"
    train(
        [
            *train_paths(data, tiny_llava, plain),
            *FLAGS,
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
            "--per_device_train_batch_size",
            "4",
        ]
    )

    out = tmp_path / config
    ds = ["--deepspeed", str(REPO / "configs" / f"{config}.json"), "--max_steps", "3"]
    run = torchrun(data, tiny_llava, out, *ds)
    assert run.returncode == 0, run.stderr[-4000:]
    # DeepSpeed really ran at that stage: ZeRO-3 keeps a model-state shard per rank (parameters partitioned, so no
    # per-rank checksum), ZeRO-2 one model state and two replicas in sync
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    info = json.loads((out / "run_info.json").read_text())
    checksums = info["runs"][-1]["replica_checksums"]
    assert info["world_size"] == 2
    if config == "zero3":
        assert shards == [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)] and checksums is None
    else:
        assert shards == ["mp_rank_00_model_states.pt"] and len(checksums) == 2 and len(set(checksums)) == 1
    # the plain LoRA run's files: adapter (peft's names) + config + projector, same tensors, shapes and dtypes
    for folder in (out, out / "checkpoint-2"):
        for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, "mm_projector.bin", "trainable.safetensors"):
            assert (folder / name).is_file(), folder / name
    adapter, ref = load_file(str(out / ADAPTER_WEIGHTS_FILE)), load_file(str(plain / ADAPTER_WEIGHTS_FILE))
    assert layout(adapter) == layout(ref)
    assert json.loads((out / ADAPTER_CONFIG_FILE).read_text()) == json.loads((plain / ADAPTER_CONFIG_FILE).read_text())
    projector = torch.load(out / "mm_projector.bin", weights_only=True)
    ref_projector = torch.load(plain / "mm_projector.bin", weights_only=True)
    assert layout(projector) == layout(ref_projector)
    assert layout(load_file(str(out / "trainable.safetensors"))) == layout(
        load_file(str(plain / "trainable.safetensors"))
    )
    assert any(float(v.abs().max()) > 0 for k, v in ref.items() if "lora_B" in k)  # the adapter trained
    for key, value in ref.items():
        assert torch.allclose(adapter[key], value, rtol=1e-4, atol=1e-6), (key, (adapter[key] - value).abs().max())
    for key, value in ref_projector.items():
        assert torch.allclose(projector[key], value, rtol=1e-4, atol=1e-6), key

    # Resume: drop the last checkpoint (as if killed after step 2) and run again to step 3.
    shutil.rmtree(out / "checkpoint-3")
    run = torchrun(data, tiny_llava, out, *ds)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "resuming from" in run.stderr
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"].endswith("checkpoint-2") and info["runs"][-1]["global_step"] == 3
    got = load_file(str(out / ADAPTER_WEIGHTS_FILE))
    assert set(got) == set(adapter)
    for key, value in adapter.items():
        assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-6), (key, (got[key] - value).abs().max())
    resumed = torch.load(out / "mm_projector.bin", weights_only=True)
    for key, value in projector.items():
        assert torch.allclose(resumed[key], value, rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("family", ["llava_v1", "qwen2"])
def test_adapter_from_gathered_weights_or_a_clear_error(family, tiny_llava, tmp_path):
    """The adapter saved from DeepSpeed's gathered state dict equals the one from the model's own tensors (for the
    document's base and for a composed one, whose keys sit under ``language_model.``); a save with no whole
    adapter tensors (ZeRO-3 without ``stage3_gather_16bit_weights_on_model_save``) is one clear error."""
    from video_chatgpt.bases import open_base
    from video_chatgpt.data.tokenizer import VideoTokenIds
    from video_chatgpt.errors import UserError
    from video_chatgpt.model.loading import load_model
    from video_chatgpt.sample.models import make_tiny_chat_lm
    from video_chatgpt.train.lora import LoraSettings, adapter_state_dict, add_lora

    if family == "llava_v1":
        model = tiny_video_model(tiny_llava)
    else:
        model = load_model(
            open_base(make_tiny_chat_lm(tmp_path / family, family)),
            VideoTokenIds(5, None, None),
            0,
            dtype=torch.float32,
            mm_hidden_size=16,
            video_token_len=8,
            mm_use_vid_start_end=False,
        )
    add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    own = adapter_state_dict(model)
    gathered = adapter_state_dict(model, {k: v.clone() for k, v in model.state_dict().items()})
    assert own and set(gathered) == set(own) and all(torch.equal(gathered[k], own[k]) for k in own)
    with pytest.raises(UserError, match='0 of its .* tensors whole .*"stage3_gather_16bit_weights_on_model_save"'):
        adapter_state_dict(model, {})
    shards = {k: (torch.empty(0) if ".lora_" in k else v) for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="ZeRO-3 shards"):
        adapter_state_dict(model, shards)
