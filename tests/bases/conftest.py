"""Tiny chat-model families (Llama-3, Mistral, Qwen2 styles), a tiny LLaVA-1.5 transformers-layout folder and the
small feature worlds (written features; SigLIP features extracted from videos), built once per session (seconds;
no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILIES = ("llama3", "mistral", "qwen2")


@pytest.fixture(scope="session")
def chat_bases(tmp_path_factory) -> dict[str, Path]:
    from video_chatgpt.sample.models import make_tiny_chat_lm

    root = tmp_path_factory.mktemp("chat_bases")
    return {family: make_tiny_chat_lm(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def llava_hf(tmp_path_factory) -> Path:
    from video_chatgpt.sample.models import make_tiny_llava_hf

    return make_tiny_llava_hf(tmp_path_factory.mktemp("llava_hf") / "llava-1.5-tiny-hf")


@pytest.fixture(scope="session")
def feature_world(tmp_path_factory) -> dict[str, Path]:
    from tests.bases.world import make_world

    return make_world(tmp_path_factory.mktemp("bases_world"))


@pytest.fixture(scope="session")
def siglip_world(tmp_path_factory) -> dict[str, Path]:
    from tests.bases.world import make_siglip_world

    return make_siglip_world(tmp_path_factory.mktemp("siglip_world"))
