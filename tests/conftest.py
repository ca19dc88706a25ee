"""Shared fixtures: tiny models, sample data and one trained run, built in code (no downloads), once per test
session. Helpers that test modules import are in the ``tests/helpers`` package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import FAMILIES
from tests.helpers.data import make_training_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def language_llava(tmp_path_factory, tiny_llava) -> Path:
    """The tiny LLaVA-like base after a short text-only language pretraining (an LM whose output depends on its
    input, as LLaVA's does: training a projector into a random LM barely moves its loss)."""
    import shutil

    from video_chatgpt.sample.models import pretrain_language
    from video_chatgpt.sample.world import language_corpus

    folder = tmp_path_factory.mktemp("language") / "LLaVA-7B-Lightening-v1-1-tiny"
    shutil.copytree(tiny_llava, folder)
    conversations, captions = language_corpus(n=400, seed=1)
    pretrain_language(folder, conversations, captions, steps=80)
    return folder


@pytest.fixture(scope="session")
def chat_bases(tmp_path_factory) -> dict[str, Path]:
    """Tiny chat models of each family (Llama-3, Mistral, Qwen2 styles): a plain causal LM base each."""
    from video_chatgpt.sample.models import make_tiny_chat_lm

    root = tmp_path_factory.mktemp("chat_bases")
    return {family: make_tiny_chat_lm(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def llava_hf(tmp_path_factory) -> Path:
    """A tiny LLaVA-1.5 folder in the transformers layout (``LlavaForConditionalGeneration``)."""
    from video_chatgpt.sample.models import make_tiny_llava_hf

    return make_tiny_llava_hf(tmp_path_factory.mktemp("llava_hf") / "llava-1.5-tiny-hf")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, sample_world, language_llava) -> Path:
    """A training output folder, quickstart-style: the language-pretrained tiny base, its projector (and video-token
    rows) trained 4 steps on the sample world's instructions over random features. Read-only: the inference,
    predict and demo tests all load it."""
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("trained_run")
    data = make_training_data(sample_world["instructions"], language_llava, root / "data")
    out = root / "run"
    train(
        [
            "--model_name_or_path",
            str(language_llava),
            "--data_path",
            str(data["data_path"]),
            "--video_folder",
            str(data["video_folder"]),
            "--output_dir",
            str(out),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-2",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--skip_data_check",
            "True",
        ]
    )
    return out


@pytest.fixture(autouse=True)
def _autograd_is_left_as_found():
    """Fail the test that turns autograd off for the whole process (a leak once broke every later training test)."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left autograd disabled process-wide (use a scoped torch.no_grad())")
