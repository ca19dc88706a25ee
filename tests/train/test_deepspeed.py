"""DeepSpeed ZeRO-2/3 with the document's configs, run for real: ``torchrun --nproc_per_node=2`` on CPU (gloo), a few
steps, save, resume; the ``mm_projector.bin`` must match a plain run's keys, shapes and dtypes, with exact base rows.

DeepSpeed's CPU accelerator shards the data across the two processes here (each rank gets its own batches)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import deepspeed  # noqa: E402,F401  (in the test extra; a missing install fails here, loudly)
import pytest
import torch
from safetensors.torch import load_file

from tests.bases.world import make_world
from tests.helpers import ENV, REPO, free_port
from tests.helpers.train import base_state, train_paths
from video_chatgpt.constants import EMBED_TOKENS_KEY, VIDEO_END_TOKEN, VIDEO_START_TOKEN

FLAGS = [
    "--tune_mm_mlp_adapter",
    "True",
    "--mm_use_vid_start_end",
    "--per_device_train_batch_size",
    "2",
    "--save_steps",
    "1",
    "--report_to",
    "none",
    "--skip_data_check",
    "True",
    "--learning_rate",
    "1e-2",
]


def _torchrun(data, model, out, *extra):
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
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


# ZeRO-3 partitions the parameters (zero.Init inside from_pretrained): the saved projector is the gathered one.
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_deepspeed_saves_the_plain_format_and_resumes(config, data, tiny_llava, tmp_path):
    from video_chatgpt.train.train import train

    plain = tmp_path / "plain"
    train([*train_paths(data, tiny_llava, plain), *FLAGS, "--max_steps", "1", "--save_strategy", "no"])
    ref = torch.load(plain / "mm_projector.bin", weights_only=True)

    out = tmp_path / config
    ds = ["--deepspeed", str(REPO / "configs" / f"{config}.json")]
    _torchrun(data, tiny_llava, out, *ds, "--max_steps", "3")
    art = torch.load(out / "mm_projector.bin", weights_only=True)
    # DeepSpeed really ran, at the stage asked for: ZeRO-3 keeps one model-state shard per rank and its parameters
    # are partitioned (so no per-rank checksum is taken); ZeRO-2 keeps one model state and in-sync replicas.
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    checksums = json.loads((out / "run_info.json").read_text())["runs"][-1]["replica_checksums"]
    if config == "zero3":
        assert shards == [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)] and checksums is None
    else:
        assert shards == ["mp_rank_00_model_states.pt"] and len(checksums) == 2 and len(set(checksums)) == 1
    assert {k: (tuple(v.shape), v.dtype) for k, v in art.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in ref.items()
    }
    base = base_state(tiny_llava)[EMBED_TOKENS_KEY]
    assert torch.equal(art[EMBED_TOKENS_KEY][: base.shape[0]], base.float())  # gathered, with the base's rows
    assert not torch.equal(
        art["model.mm_projector.weight"], base_state(tiny_llava)["model.mm_projector.weight"].float()
    )
    # The trainables file (final and in checkpoints) holds whole tensors, not a rank's ZeRO-3 shard.
    want = {k: tuple(v.shape) for k, v in load_file(plain / "trainable.safetensors").items()}
    for folder in (out, out / "checkpoint-2"):
        assert {k: tuple(v.shape) for k, v in load_file(folder / "trainable.safetensors").items()} == want, folder
    # Resume: drop the last checkpoint (as if killed after step 2) and run again to step 3; the resumed run must end
    # where the uninterrupted one did (same schedule, optimizer state and data order from checkpoint-2).
    shutil.rmtree(out / "checkpoint-3")
    run = _torchrun(data, tiny_llava, out, *ds, "--max_steps", "3")
    assert "resuming from" in run.stderr
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"].endswith("checkpoint-2") and info["runs"][-1]["global_step"] == 3
    assert info["world_size"] == 2
    resumed = torch.load(out / "mm_projector.bin", weights_only=True)
    for key in art:
        assert torch.allclose(resumed[key], art[key], rtol=1e-4, atol=1e-6), (
            key,
            (resumed[key] - art[key]).abs().max(),
        )


@pytest.mark.slow  # a torchrun run of one step: ~70 s on 2 shared cores
def test_fsdp_on_the_cpu_trains_unsharded_and_says_so(data, tiny_llava, tmp_path):
    """accelerate makes an FSDP run only on GPU-family devices; on the CPU it trains the model in plain DDP. One real
    step with ``--fsdp`` under torchrun (one process: the smallest distributed run): the note is in run_info.json,
    and the model the Trainer stepped holds no FSDP module (``tests/helpers/fsdp_probe.py`` records it). A single
    process without torchrun is refused in one line (test_bad_input.py)."""
    out, probe = tmp_path / "run", tmp_path / "probe"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
           "tests/helpers/fsdp_probe.py", *train_paths(data, tiny_llava, out), *FLAGS, "--max_steps", "1",
           "--save_strategy", "no", "--fsdp", "full_shard auto_wrap"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, env={**ENV, "FSDP_PROBE": str(probe)}, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    (step,) = json.loads(probe.with_name("probe.0.json").read_text())
    assert step["fsdp_modules"] == [] and step["fsdp_enabled"] is False, step
    notes = json.loads((out / "run_info.json").read_text())["notes"]
    assert any(n.startswith("--fsdp has no effect on the CPU") for n in notes), notes
    assert (out / "mm_projector.bin").is_file()


@pytest.fixture(scope="module")
def chat_world(tmp_path_factory):
    """A tiny Qwen2-style chat base (tied embeddings, padded table) and the other-bases feature world."""
    from video_chatgpt.sample.models import make_tiny_chat_lm

    root = tmp_path_factory.mktemp("ds-chat")
    return make_tiny_chat_lm(root / "qwen2", "qwen2"), make_world(root / "world", num_videos=8)


@pytest.mark.slow  # a plain run and a torchrun x2 ZeRO-3 run: ~90 s on 2 shared cores
def test_zero3_on_a_chat_base_equals_the_plain_run(chat_world, tmp_path):
    """ZeRO-3 on another base (``VideoLanguageModel`` over a causal LM): ``--stage pretrain`` under torchrun x2
    (2 samples a rank) saves the plain run's ``mm_projector.bin`` (same keys, shapes, dtypes) with the same values
    as one process at the same global batch of 4, and the base's own embedding rows (gathered, not the empty
    shards)."""
    from safetensors.torch import load_file

    from video_chatgpt.train.train import train

    base, world = chat_world
    args = [
        "--model_name_or_path",
        str(base),
        "--video_folder",
        str(world["features"]),
        "--data_path",
        str(world["captions"]),
        "--stage",
        "pretrain",
        "--mm_projector_type",
        "mlp2x_gelu",
        "--mm_use_vid_start_end",
        "--learning_rate",
        "1e-2",
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--skip_data_check",
        "True",
    ]
    plain = train([*args, "--output_dir", str(tmp_path / "plain"), "--per_device_train_batch_size", "4"])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "video_chatgpt/train/train_mem.py",
        *args,
        "--output_dir",
        str(tmp_path / "zero3"),
        "--per_device_train_batch_size",
        "2",
        "--deepspeed",
        str(REPO / "configs" / "zero3.json"),
    ]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    ref = torch.load(plain / "mm_projector.bin", weights_only=True)
    art = torch.load(tmp_path / "zero3" / "mm_projector.bin", weights_only=True)
    assert {k: (tuple(v.shape), v.dtype) for k, v in art.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in ref.items()
    }
    assert sorted(art) == [
        EMBED_TOKENS_KEY,
        *(f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("bias", "weight")),
    ]
    for key in art:
        assert torch.allclose(art[key], ref[key], rtol=1e-4, atol=1e-6), (key, (art[key] - ref[key]).abs().max())
    # Every row but the two trained ones (<vid_start>/<vid_end>) is the base's own, bit for bit.
    from transformers import AutoTokenizer

    trained = AutoTokenizer.from_pretrained(plain).convert_tokens_to_ids([VIDEO_START_TOKEN, VIDEO_END_TOKEN])
    base_rows = load_file(str(base / "model.safetensors"))["model.embed_tokens.weight"].float()
    frozen = torch.ones(base_rows.shape[0], dtype=torch.bool)
    frozen[trained] = False
    assert torch.equal(art[EMBED_TOKENS_KEY][: base_rows.shape[0]][frozen], base_rows[frozen])
    assert not torch.equal(art[EMBED_TOKENS_KEY][trained], base_rows[trained])
    assert json.loads((tmp_path / "zero3" / "run_info.json").read_text())["world_size"] == 2
