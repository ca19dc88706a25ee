"""Fixtures of the vLLM-route tests: two small trained LoRA runs (the document's base and a Qwen2-style chat base)
and their export-lm folders (fp32), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bases.world import make_world
from tests.helpers.data import make_training_data
from tests.helpers.train import LORA_FLAGS, train_paths

CHAT_FAMILY = "qwen2"  # tied embeddings, no BOS, its own chat template: the furthest from the document's base


@pytest.fixture(scope="session")
def llava_lora_run(tmp_path_factory, sample_world, tiny_llava) -> Path:
    """A 3-step LoRA run (adapter + projector + the <vid_start>/<vid_end> rows) on the document's tiny base."""
    from video_chatgpt.train.train import train

    work = tmp_path_factory.mktemp("vllm-llava")
    data = make_training_data(sample_world["instructions"], tiny_llava, work / "data")
    run = work / "run"
    train([*train_paths(data, tiny_llava, run), *LORA_FLAGS, "--learning_rate", "2e-2", "--max_steps", "3",
           "--save_strategy", "no"])  # fmt: skip
    return run


@pytest.fixture(scope="session")
def chat_lora_run(tmp_path_factory, chat_bases) -> Path:
    """A 3-step LoRA run with an mlp2x_gelu projector on the tiny Qwen2-style chat base (chat template)."""
    from video_chatgpt.train.train import train

    work = tmp_path_factory.mktemp("vllm-chat")
    world = make_world(work / "world", num_videos=8)
    run = work / "run"
    data = {"data_path": world["instructions"], "video_folder": world["features"]}
    train([*train_paths(data, chat_bases[CHAT_FAMILY], run), *LORA_FLAGS, "--learning_rate", "2e-2",
           "--max_steps", "3", "--save_strategy", "no", "--mm_projector_type", "mlp2x_gelu",
           "--vision_tower", "tiny-siglip"])  # fmt: skip
    return run


@pytest.fixture(scope="session", params=["llava_v1", "chat"])
def run_and_export(request, tmp_path_factory) -> tuple[Path, Path]:
    """``(run, its export-lm folder in fp32)`` for each kind of base."""
    from video_chatgpt.model.export import export_lm

    run = request.getfixturevalue("llava_lora_run" if request.param == "llava_v1" else "chat_lora_run")
    out = tmp_path_factory.mktemp(f"export-{request.param}") / "lm"
    export_lm(run, out, dtype="fp32", max_shard_size="200KB")
    return run, out
