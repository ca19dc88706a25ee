"""Tiny base / target / delta folders for the weights tests, built once per session (no downloads).

* target: the tiny LLaVA-7B-Lightening-v1-1-like folder (32003-row vocabulary, projector, LLaVA tokenizer), in
  ``.bin`` shards (the ``tiny_llava`` fixture) or in safetensors shards;
* base: a tiny "LLaMA" with 32000 rows and other random values, no projector, in ``.bin`` shards (fp16, index)
  or as one fp32 ``model.safetensors`` without index (exercises the cast to fp16 and the no-index layout).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.weights import write_base
from video_chatgpt.sample.models import make_tiny_llava


@pytest.fixture(scope="session")
def folders(tmp_path_factory, tiny_llava, tiny_clip) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {
        "target_bin": tiny_llava,
        "target_safetensors": make_tiny_llava(
            root / "target_st", vision_tower=tiny_clip.resolve(), num_shards=3, safetensors=True
        ),
        "base_bin": write_base(root / "base_bin", "bin"),
        "base_safetensors": write_base(root / "base_st", "safetensors", dtype=torch.float32, num_shards=1),
    }


@pytest.fixture(scope="session")
def delta_bin(tmp_path_factory, folders) -> Path:
    """make-delta(base_bin, target_bin): a delta folder (safetensors output), shared read-only by the tests."""
    from video_chatgpt.weights.make_delta import make_delta

    out = tmp_path_factory.mktemp("delta") / "delta"
    make_delta(folders["base_bin"], folders["target_bin"], out, max_shard_size="3MB")
    return out


@pytest.fixture
def copy_of(tmp_path):
    """``copy_of(folder)``: a private copy of a folder to break in one test."""

    def _copy(folder: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or folder.name)
        shutil.copytree(folder, dst)
        return dst

    return _copy
