"""The output folder of an extraction: manifest, reruns with other settings, --overwrite, damaged files, the lock,
non-finite features, towers that are not CLIP / SigLIP / LLaVA, and the one-line errors of the script."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO
from video_chatgpt.features.extract import LOCK_NAME, REPORT_NAME, cli, lock_folder, main
from video_chatgpt.features.store import MANIFEST_NAME, load_features, read_manifest

NUM_FRAMES = 4
SCRIPT = REPO / "scripts" / "save_spatio_temporal_clip_features.py"


@pytest.fixture(scope="module")
def videos(tmp_path_factory, awkward_videos, sample_world):
    d = tmp_path_factory.mktemp("videos")
    shutil.copy(awkward_videos["short"], d)
    shutil.copy(sorted(sample_world["videos_train"].iterdir())[0], d)
    return d


def _args(videos, out, tower, *extra, num_frames=NUM_FRAMES):
    return ["--video_dir_path", str(videos), "--clip_feat_path", str(out), "--vision_tower", str(tower),
            "--num_frames", str(num_frames), "--num_workers", "0", "--no_progress", *extra]  # fmt: skip


def _cli(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli(args)
    return rc, err.getvalue()


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pkl")}


def test_manifest_rerun_with_other_settings_and_overwrite(videos, tiny_clip, tmp_path):
    out = tmp_path / "feats"
    assert main(_args(videos, out, tiny_clip)) == 0
    manifest = read_manifest(out)
    assert manifest["feature_shape"] == [NUM_FRAMES + 256, 32] and manifest["num_frames"] == NUM_FRAMES
    assert manifest["tower_kind"] == "clip" and manifest["select_layer"] == -2 and manifest["spatial_pool"] == 1
    assert manifest["dtype"] == "float32" and manifest["feature_format"] == "pkl"
    assert len(manifest["tower_sha256"]) == 64
    before = _mtimes(out)
    assert len(before) == 2

    # The same settings: a resume (nothing redone), the manifest kept.
    assert main(_args(videos, out, tiny_clip)) == 0 and _mtimes(out) == before
    # Other settings: one line naming each difference, nothing touched.
    rc, err = _cli(_args(videos, out, tiny_clip, "--spatial_pool", "2", num_frames=6))
    assert rc == 1 and "Traceback" not in err
    line = err.splitlines()[0]
    assert MANIFEST_NAME in line and "num_frames: 4 -> 6" in line and "spatial_pool: 1 -> 2" in line
    assert "--overwrite" in line and _mtimes(out) == before
    # Another tower (same geometry, other weights): the hash differs.
    other = tmp_path / "other_tower"
    shutil.copytree(tiny_clip, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    rc, err = _cli(_args(videos, out, other))
    assert rc == 1 and "tower_sha256" in err
    # --overwrite: every video again with the new settings, and the manifest says so; a file whose video is not in
    # the folder stays as it was, and the report says so.
    shutil.copy(out / sorted(before)[0], out / "v_gone0001.pkl")
    assert main(_args(videos, out, tiny_clip, "--spatial_pool", "2", "--overwrite", num_frames=6)) == 0
    assert read_manifest(out)["feature_shape"] == [6 + 64, 32]
    for name in before:
        assert load_features(out / name).shape == (6 + 64, 32)
    assert load_features(out / "v_gone0001.pkl").shape == (NUM_FRAMES + 256, 32)
    notes = json.loads((out / REPORT_NAME).read_text())["notes"]
    assert [n["video"] for n in notes] == ["v_gone0001.pkl"] and "keep their old settings" in notes[0]["note"]


def test_damaged_existing_files_are_extracted_again(videos, tiny_clip, tmp_path):
    out = tmp_path / "feats"
    assert main(_args(videos, out, tiny_clip)) == 0
    names = sorted(_mtimes(out))
    good = load_features(out / names[0])
    data = (out / names[0]).read_bytes()
    (out / names[0]).write_bytes(data[: len(data) // 2])  # a truncated file, e.g. a copy that was cut
    # A temporary of a killed manifest write is cleaned up.
    (out / f".{MANIFEST_NAME}.x1y2.tmp").write_text("{")
    keep = (out / names[1]).stat().st_mtime_ns
    assert main(_args(videos, out, tiny_clip)) == 0
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["skipped_existing"] == 1 and len(report["extracted"]) == 1
    assert "not valid" in report["notes"][0]["note"] and "truncated" in report["notes"][0]["note"]
    assert (load_features(out / names[0]) == good).all() and (out / names[1]).stat().st_mtime_ns == keep
    assert not list(out.glob(".*.tmp"))


def test_a_folder_without_manifest_is_adopted_when_its_files_fit(videos, tiny_clip, tmp_path):
    out = tmp_path / "feats"
    assert main(_args(videos, out, tiny_clip)) == 0
    (out / MANIFEST_NAME).unlink()  # as the original's folders, or one made before manifests
    before = _mtimes(out)
    assert main(_args(videos, out, tiny_clip)) == 0
    assert _mtimes(out) == before and read_manifest(out)["adopted_files"] == 2
    # Files of another shape and no manifest: the run stops rather than mix them.
    (out / MANIFEST_NAME).unlink()
    rc, err = _cli(_args(videos, out, tiny_clip, num_frames=5))
    assert rc == 1 and "are not of this run's shape (261, 32)" in err and "(260, 32)" in err
    assert _mtimes(out) == before and read_manifest(out) is None


def test_two_extractions_into_one_folder(videos, tiny_clip, tmp_path):
    out = tmp_path / "feats"
    out.mkdir()
    held = lock_folder(out)  # another extraction running (a second open file: flock conflicts as across processes)
    try:
        rc, err = _cli(_args(videos, out, tiny_clip))
        assert rc == 1 and "another extraction is writing into this folder" in err and f"pid {os.getpid()}" in err
        assert not list(out.glob("*.pkl"))
    finally:
        held.close()
    # A holder that is killed releases the lock (the OS drops it): the next run goes ahead.
    code = (
        "import pathlib, sys, time; from video_chatgpt.features.extract import lock_folder\n"
        "f = lock_folder(pathlib.Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "locked"
        rc, err = _cli(_args(videos, out, tiny_clip))
        assert rc == 1 and f"pid {child.pid}" in err
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert main(_args(videos, out, tiny_clip)) == 0 and len(list(out.glob("*.pkl"))) == 2
    assert (out / LOCK_NAME).exists()


def test_non_finite_features_are_not_written(videos, tiny_clip, tmp_path):
    tower = tmp_path / "nan_tower"
    shutil.copytree(tiny_clip, tower)
    from safetensors.torch import load_file, save_file

    weights = load_file(tower / "model.safetensors")
    key = next(k for k in weights if "layer_norm1.weight" in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, tower / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "feats"
    rc, err = _cli(_args(videos, out, tower))
    assert rc == 1
    report = json.loads((out / REPORT_NAME).read_text())
    assert len(report["failed"]) == 2 and all("NaN or inf" in f["reason"] for f in report["failed"])
    assert not list(out.glob("*.pkl")) and "NaN or inf" in err


def test_bad_input_table(videos, tiny_clip, tiny_llava, tmp_path):
    not_a_tower = tmp_path / "bert"
    not_a_tower.mkdir()
    (not_a_tower / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    no_config = tmp_path / "empty_tower"
    no_config.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [  # (flags, words in the one-line message)
        (_args(videos, tmp_path / "o1", not_a_tower), ["model_type 'bert'", "CLIP or SigLIP"]),
        (_args(videos, tmp_path / "o2", no_config), ["no config.json"]),
        (_args(videos, tmp_path / "o3", tiny_llava), ["original layout", "--vision_tower"]),
        (_args(videos, tmp_path / "o4", "openai/not-cached-anywhere"), ["hf download openai/not-cached-anywhere"]),
        (_args(tmp_path / "no_videos", tmp_path / "o5", tiny_clip), ["--video_dir", "not a folder"]),
        (_args(videos, a_file, tiny_clip), ["--clip_feat_path", "is a file"]),
    ]
    for flags, words in cases:
        rc, err = _cli(flags)
        assert rc == 1, (flags, err)
        assert "Traceback" not in err
        assert err.splitlines()[0].startswith("save_spatio_temporal_clip_features.py: error:")
        for word in words:
            assert word in err.splitlines()[0], (word, err)
    assert a_file.read_text() == "x"
    rc, _ = _cli(_args(videos, tmp_path / "o6", tiny_clip, "--spatial_pool", "0"))
    assert rc == 2  # a usage error


def test_the_script_prints_one_line_and_exits_1(videos, tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(videos, tmp_path / "o", tmp_path / "missing_tower")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "missing_tower" in result.stderr.splitlines()[0]
    assert time.perf_counter() - start < 60
