"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from tests.helpers.data import make_training_data


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_world, tiny_llava) -> dict:
    """Training data over the tiny LLaVA's feature width (``make_training_data``), one copy per test module."""
    return make_training_data(sample_world["instructions"], tiny_llava, tmp_path_factory.mktemp("train-data"))
