"""Shared fixtures: tiny models and sample data built in code (no downloads), once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory) -> dict[str, Path]:
    """``{"vision_tower": tiny CLIP folder, "llava": tiny LLaVA-7B-Lightening-v1-1-like folder}`` (.bin shards)."""
    from video_chatgpt.sample.models import make_sample_models

    return make_sample_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_clip(sample_models) -> Path:
    return sample_models["vision_tower"]


@pytest.fixture(scope="session")
def tiny_llava(sample_models) -> Path:
    return sample_models["llava"]


@pytest.fixture(scope="session")
def sample_world(tmp_path_factory) -> dict[str, Path]:
    """A small sample world: 8 training videos, 4 held-out ones, instruction JSON and test QA."""
    from video_chatgpt.sample.world import make_sample_world

    return make_sample_world(tmp_path_factory.mktemp("world"), num_train=8, num_test=4)


@pytest.fixture(scope="session")
def awkward_videos(tmp_path_factory) -> dict[str, Path]:
    from video_chatgpt.sample.videos import make_awkward_videos

    return make_awkward_videos(tmp_path_factory.mktemp("awkward"))
