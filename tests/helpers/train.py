"""Training flags, a base folder's tensors and a small video model, for the training, LoRA and predict tests."""

from __future__ import annotations

from pathlib import Path

import torch

from video_chatgpt.bases import open_base
from video_chatgpt.data.tokenizer import VideoTokenIds
from video_chatgpt.model.loading import load_model


def train_paths(data: dict, model: Path, out: Path) -> list[str]:
    """The path flags of a training command: base, training JSON, feature folder, output folder."""
    return [
        "--model_name_or_path",
        str(model),
        "--data_path",
        str(data["data_path"]),
        "--video_folder",
        str(data["video_folder"]),
        "--output_dir",
        str(out),
    ]


LORA_FLAGS = [
    "--lora_enable",
    "True",
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
    "--mm_use_vid_start_end",
    "--learning_rate",
    "1e-3",
    "--per_device_train_batch_size",
    "2",
    "--logging_steps",
    "1",
    "--report_to",
    "none",
    "--skip_data_check",
    "True",
]


def base_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a base folder's ``pytorch_model-*.bin`` shards, read with torch directly (not our reader)."""
    state = {}
    for shard in sorted(folder.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    return state


def tiny_video_model(folder: Path) -> torch.nn.Module:
    """The document's base in fp32 with an 8-token video span (no start/end) on token id 5: for tests that build
    their own batches (``video_batch`` style) rather than tokenized prompts."""
    return load_model(
        open_base(folder), VideoTokenIds(5, None, None), 0, dtype=torch.float32, video_token_len=8,
        mm_use_vid_start_end=False,
    )  # fmt: skip


# A projector run as small as it gets (no data check): the hardening and guard tests train with it.
TINY = [
    "--tune_mm_mlp_adapter",
    "True",
    "--mm_use_vid_start_end",
    "--per_device_train_batch_size",
    "2",
    "--report_to",
    "none",
    "--skip_data_check",
    "True",
    "--learning_rate",
    "1e-2",
]
