"""The extraction job in-process: same numbers as the reference, bad inputs, report, resume, formats, safe loading."""

import contextlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.features.reference import (
    assert_fp16_close,
    make_audio_only,
    make_truncated_mp4,
    reference_features,
    write_h264,
)
from video_chatgpt.features.extract import LOCK_NAME, REPORT_NAME, DistEnv, main, plan_videos
from video_chatgpt.features.store import MANIFEST_NAME, FeatureFileError, index_feature_folder, load_features
from video_chatgpt.sample.videos import VideoTruth, render_frames

NUM_FRAMES = 8  # the job's logic does not depend on 100; test_encoder covers 100 frames


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory, sample_world, awkward_videos):
    """Good videos of several lengths and containers, and every kind of bad input, in one folder."""
    d = tmp_path_factory.mktemp("videos")
    for src in sorted(sample_world["videos_train"].iterdir())[:3]:
        shutil.copy(src, d / src.name)
    for kind in ("short", "odd_size", "corrupt", "empty", "not_video"):
        shutil.copy(awkward_videos[kind], d / awkward_videos[kind].name)
    frames = render_frames(VideoTruth("v_trunc", "red", "square", "right", 90, 64, 48))
    make_truncated_mp4(d / "v_badcount01.mp4", frames, keep=0.5)  # header: 90 frames; fewer decode
    make_truncated_mp4(d / "v_zerofrm01.mp4", frames, keep=0.0)  # header: 90 frames; none decode
    make_audio_only(d / "v_audioonly.mp4")
    write_h264(d / "v_dupid0001.mp4", frames[:20])
    write_h264(d / "v_dupid0001.mkv", frames[:20])  # same video id: the first by name (.mkv) wins, .mp4 fails
    (d / ".DS_Store").write_bytes(b"\0\1hidden")  # hidden files are not videos
    (d / "notes.txt").write_text("a user's notes")  # left out, with a warning; never a failure
    (d / "more").mkdir()  # subfolders are not entered (warned)
    write_h264(d / "more" / "v_insidesub.mp4", frames[:20])
    return d


GOOD_BAD = {
    "v_awkcorrupt.mp4": "corrupt",
    "v_awkempty01.mp4": "empty file",
    "v_awknotvid1.mp4": "not a video",
    "v_zerofrm01.mp4": "no frame",
    "v_audioonly.mp4": "no video stream",
    "v_dupid0001.mp4": "duplicate video id",
}


def _args(video_dir, out, tower, *extra):
    return [
        "--video_dir_path",
        str(video_dir),
        "--clip_feat_path",
        str(out),
        "--vision_tower",
        str(tower),
        "--num_frames",
        str(NUM_FRAMES),
        "--infer_batch",
        "5",
        "--num_workers",
        "1",
        "--no_progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, video_dir, tiny_clip):
    out = tmp_path_factory.mktemp("feats")
    (out / ".v_awkshort01.pkl.tmp").write_bytes(b"half a file from a killed run")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(_args(video_dir, out, tiny_clip))
    return out, rc, stderr.getvalue()


def test_failures_are_named_with_reasons_and_the_run_goes_on(first_run, video_dir):
    out, rc, _ = first_run
    assert rc == 1
    report = json.loads((out / REPORT_NAME).read_text())
    reasons = {f["video"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == set(GOOD_BAD)
    for video, words in GOOD_BAD.items():
        assert words in reasons[video], (video, reasons[video])
    printed = first_run[2]  # the end of the run names every failure with its reason
    for video, reason in reasons.items():
        assert f"{video}: {reason}" in printed
    # What is not a video is named once, up front, and is not a failure: a stray file, a subfolder.
    assert "left out 2 entries that are not videos (more/, notes.txt)" in printed
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert Path(manifest["vision_tower"]).is_absolute()  # the tower as a path that means something elsewhere
    assert [n["video"] for n in report["notes"]] == ["v_badcount01.mp4"] and "90" in report["notes"][0]["note"]
    assert report["complete"] and report["feature_shape"] == [NUM_FRAMES + 256, 32]
    # The report is never taken for a feature file; the index holds exactly the extracted videos.
    good = {"v_awkshort01", "v_awkoddsz01", "v_badcount01", "v_dupid0001"} | {
        p.name.split(".")[0] for p in sorted(video_dir.iterdir()) if p.name.startswith("v_trn")
    }
    assert set(index_feature_folder(out)) == good
    # The stale .tmp is removed; besides the features: the report, the manifest and the (hidden) lock file.
    assert sorted(os.listdir(out)) == sorted([f"{v}.pkl" for v in good] + [REPORT_NAME, MANIFEST_NAME, LOCK_NAME])


def test_features_equal_the_reference(first_run, video_dir, tiny_clip):
    out = first_run[0]
    report = json.loads((out / REPORT_NAME).read_text())
    for name in report["extracted"]:
        vid = name.split(".")[0]
        # decord for h264; PyAV for MPEG-4 Part 2 (see reference.py) and for the truncated file decord cannot read.
        use_decord = name == "v_dupid0001.mkv"
        ours = load_features(out / f"{vid}.pkl", expected_shape=(NUM_FRAMES + 256, 32))
        assert_fp16_close(ours, reference_features(video_dir / name, str(tiny_clip), NUM_FRAMES, use_decord=use_decord))
        with open(out / f"{vid}.pkl", "rb") as f:
            assert type(pickle.load(f)) is np.ndarray  # a bare ndarray, as the original and the official files


def test_rerun_skips_what_is_done(first_run, video_dir, tiny_clip):
    out = first_run[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pkl")}
    rc = main(_args(video_dir, out, tiny_clip))
    report = json.loads((out / REPORT_NAME).read_text())
    assert rc == 1 and report["extracted"] == [] and report["skipped_existing"] == len(before)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.pkl")} == before


def test_npy_format_holds_the_same_numbers(first_run, video_dir, tiny_clip, tmp_path):
    out = first_run[0]
    small = tmp_path / "videos"
    small.mkdir()
    shutil.copy(video_dir / "v_awkshort01.mp4", small)
    assert main(_args(small, tmp_path / "npy", tiny_clip, "--feature_format", "npy")) == 0
    assert os.listdir(tmp_path / "npy") and (tmp_path / "npy" / "v_awkshort01.npy").exists()
    npy = load_features(tmp_path / "npy" / "v_awkshort01.npy")
    np.testing.assert_array_equal(npy, load_features(out / "v_awkshort01.pkl"))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "v_evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(FeatureFileError, match="not allowed"):
        load_features(path)
    assert not marker.exists()
    # A pickled dict (not a bare ndarray) is refused too, with the file named.
    path.write_bytes(pickle.dumps({"v_evil": np.zeros((2, 2), np.float16)}))
    with pytest.raises(FeatureFileError, match="v_evil.pkl"):
        load_features(path)


def test_rank_split_is_by_position_and_duplicates_are_decided_globally(tmp_path):
    videos = [tmp_path / n for n in ["a.mkv", "a.mp4", "b.mp4", "c.webm", "d.mp4"]]  # sorted, as list_videos
    shares = [plan_videos(videos, {"c.pkl"}, "pkl", tmp_path, DistEnv(rank=r, world_size=2)) for r in range(2)]
    assert [p.name for p in shares[0].todo] == ["a.mkv", "b.mp4", "d.mp4"] and not shares[0].failed
    assert shares[1].todo == [] and shares[1].skipped == ["c.webm"]
    assert shares[1].failed == [{"video": "a.mp4", "reason": "duplicate video id 'a' (also a.mkv); not extracted"}]
