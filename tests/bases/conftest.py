"""The small feature worlds of the other-bases tests (written features; SigLIP features extracted from videos),
built once per session (seconds; no downloads). The tiny chat bases and the LLaVA-1.5 folder are in
``tests/conftest.py`` (``chat_bases``, ``llava_hf``): ``tests/model`` uses them too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bases.world import make_siglip_world, make_world


@pytest.fixture(scope="session")
def feature_world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("bases_world"))


@pytest.fixture(scope="session")
def siglip_world(tmp_path_factory) -> dict[str, Path]:
    return make_siglip_world(tmp_path_factory.mktemp("siglip_world"))
