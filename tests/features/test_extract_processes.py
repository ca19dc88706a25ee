"""The job as separate processes: the documented script, a kill mid-run, a kill mid-write, a 2-rank torchrun."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.features.reference import assert_fp16_close
from video_chatgpt.errors import UserError
from video_chatgpt.features.extract import LOCK_NAME, REPORT_NAME, lock_folder, main
from video_chatgpt.features.store import MANIFEST_NAME, index_feature_folder, load_features

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "save_spatio_temporal_clip_features.py"
NUM_FRAMES = 4


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the script must find the package by itself
    return env


def _flags(videos, out, tower, *extra):
    return [
        "--video_dir_path",
        str(videos),
        "--clip_feat_path",
        str(out),
        "--vision_tower",
        str(tower),
        "--num_frames",
        str(NUM_FRAMES),
        "--infer_batch",
        "3",
        "--no_progress",
        *extra,
    ]


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.01)
    return False


def test_killed_run_leaves_no_truncated_file_and_a_rerun_completes(sample_world, tiny_clip, tmp_path):
    videos = sample_world["videos_train"]
    out = tmp_path / "feats"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *_flags(videos, out, tiny_clip, "--num_workers", "1")],
        cwd=REPO,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = _wait_for(lambda: out.is_dir() and any(n.endswith(".pkl") for n in os.listdir(out)), proc)
        assert started, proc.stderr.read()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its decode workers, at once, no cleanup
        proc.wait()
    done = [n for n in os.listdir(out) if n.endswith(".pkl")]
    total = len(list(videos.iterdir()))
    assert 1 <= len(done) < total and not (out / REPORT_NAME).exists()  # killed mid-run
    assert (out / MANIFEST_NAME).exists()  # written before the first feature file
    for name in done:  # every feature file under its final name is whole
        assert load_features(out / name, expected_shape=(NUM_FRAMES + 256, 32)).dtype == np.float16
    assert main(_flags(videos, out, tiny_clip, "--num_workers", "0")) == 0
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["skipped_existing"] == len(done) and len(report["extracted"]) == total - len(done)
    assert len(index_feature_folder(out)) == total
    assert [n for n in os.listdir(out) if n.startswith(".")] == [LOCK_NAME]  # no temporary left


def test_the_lock_is_held_while_a_job_runs_and_dies_with_its_main_process(sample_world, tiny_clip, tmp_path):
    videos = sample_world["videos_train"]
    out = tmp_path / "feats"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *_flags(videos, out, tiny_clip, "--num_workers", "2")],
        cwd=REPO, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert _wait_for(lambda: out.is_dir() and any(n.endswith(".pkl") for n in os.listdir(out)), proc)
        with pytest.raises(UserError, match=f"pid {proc.pid}"):  # a second extraction is refused meanwhile
            lock_folder(out).close()
        proc.send_signal(signal.SIGKILL)  # the main process only: its decode workers notice later, on their own
        proc.wait()
        # The workers closed their copy of the lock file when they started, so the lock is free at once.
        lock_folder(out).close()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the workers, if they are still there
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_during_a_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "v_big.pkl"
    code = (
        "import numpy as np, sys; from video_chatgpt.features.store import save_features; "
        "save_features(sys.argv[1], np.ones((200_000, 1024), np.float16))"
    )  # ~400 MB: the write takes long enough to be killed in the middle
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, env=_env(), start_new_session=True)
    try:
        assert _wait_for(lambda: any(n.endswith(".tmp") for n in os.listdir(tmp_path)), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not target.exists() and index_feature_folder(tmp_path) == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_torchrun_gives_the_same_files_as_one_process(sample_world, awkward_videos, tiny_clip, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for src in sorted(sample_world["videos_train"].iterdir())[:5]:
        shutil.copy(src, videos / src.name)
    shutil.copy(awkward_videos["corrupt"], videos / awkward_videos["corrupt"].name)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_flags(videos, one, tiny_clip, "--num_workers", "0")) == 1  # the corrupt video fails
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(SCRIPT),
        *_flags(videos, two, tiny_clip, "--num_workers", "0", "--device", "cpu"),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stderr[-3000:]  # every rank exits 1: one video failed somewhere
    assert index_feature_folder(one) == index_feature_folder(two) and len(index_feature_folder(two)) == 5
    for name in index_feature_folder(one).values():
        assert_fp16_close(load_features(two / name), load_features(one / name), ulps=1)
    merged = json.loads((two / REPORT_NAME).read_text())
    assert merged["world_size"] == 2 and [f["video"] for f in merged["failed"]] == ["v_awkcorrupt.mp4"]
    assert sorted(merged["extracted"]) == sorted(json.loads((one / REPORT_NAME).read_text())["extracted"])
    for rank in range(2):
        part = json.loads((two / f"extraction_report.rank{rank:05d}-of-00002.json").read_text())
        assert part["rank"] == rank and part["videos"] == 3  # videos[rank::2] of the 6
