"""--delta-path as a hub id: resolved from a local Hugging Face cache; a clear error when it is not there."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from tests.helpers.weights import load_folder
from video_chatgpt.cli import main as cli_main
from video_chatgpt.weights.apply_delta import apply_delta
from video_chatgpt.weights.checkpoint import WeightsError
from video_chatgpt.weights.hub import looks_like_hub_id, resolve_model_folder

REPO_ID = "liuhaotian/LLaVA-Lightning-7B-delta-v1-1"


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> Path:
    """Lay ``folder`` out as huggingface_hub does: blobs/<sha256> + snapshots/<commit>/<file> -> ../../blobs/<sha256>
    symlinks + refs/main = <commit>. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub uses for this test, offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_resolves_from_the_local_cache(folders, delta_bin, cache, tmp_path):
    snapshot = fake_hub_cache(cache, REPO_ID, delta_bin)
    assert resolve_model_folder(REPO_ID, "--delta-path") == snapshot
    apply_delta(folders["base_bin"], tmp_path / "from-hub", REPO_ID)
    apply_delta(folders["base_bin"], tmp_path / "from-folder", delta_bin)
    a, b = load_folder(tmp_path / "from-hub"), load_folder(tmp_path / "from-folder")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The copies in the target are files, not links into the cache.
    assert not (tmp_path / "from-hub" / "config.json").is_symlink()


def test_hub_id_not_cached_says_what_to_download_and_where(folders, cache, tmp_path, capsys):
    target = tmp_path / "target"
    with pytest.raises(WeightsError) as exc:
        apply_delta(folders["base_bin"], target, REPO_ID)
    message = str(exc.value)
    for needle in (
        "--delta-path",
        f"hf download {REPO_ID}",
        str(cache),
        "models--liuhaotian--LLaVA-Lightning-7B-delta-v1-1",
        f"git lfs clone https://huggingface.co/{REPO_ID}",
    ):
        assert needle in message, needle
    assert not target.exists()
    # The same through the command line: exit status 1, the message on stderr.
    assert (
        cli_main(
            [
                "apply-delta",
                "--base-model-path",
                str(folders["base_bin"]),
                "--target-model-path",
                str(target),
                "--delta-path",
                REPO_ID,
            ]
        )
        == 1
    )
    assert f"hf download {REPO_ID}" in capsys.readouterr().err


def test_paths_and_hub_ids():
    assert looks_like_hub_id(REPO_ID) and looks_like_hub_id("openai/clip-vit-large-patch14")
    assert not looks_like_hub_id("/abs/path") and not looks_like_hub_id("a/b/c") and not looks_like_hub_id("../x")
    with pytest.raises(WeightsError, match="no such file or folder"):
        resolve_model_folder("./runs/nothing/here", "--base-model-path")
