"""The job's start-up: the decode workers start before the tower is loaded (its load overlaps their decoding), a
failure while starting stops them, and the report says what the start cost and what the decoders did."""

import multiprocessing

import pytest

from tests.features.clips import render, write_clip
from video_chatgpt.errors import UserError
from video_chatgpt.features import extract
from video_chatgpt.features.extract import ExtractArgs, run


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup_videos")
    frames = render(200)
    write_clip(d / "v_startup001.mp4", frames, gop=25)  # h264: frames located by timestamp, with seeks
    write_clip(d / "v_startup002.mkv", frames[:120], gop=250)
    return d


def _args(videos, out, tower, **kw):
    return ExtractArgs(videos, out, vision_tower=str(tower), num_frames=6, infer_batch=4, progress=False, **kw)


def test_decode_workers_are_running_before_the_tower_loads(videos, tiny_clip, tmp_path, monkeypatch):
    seen = []

    class Recording(extract.FrameEncoder):
        def __init__(self, *a, **kw):
            seen.append(len(multiprocessing.active_children()))  # decode workers already forked
            super().__init__(*a, **kw)

    monkeypatch.setattr(extract, "FrameEncoder", Recording)
    report = run(_args(videos, tmp_path / "feats", tiny_clip, num_workers=1, device="cpu"))
    assert seen == [1] and len(report.extracted) == 2
    assert 0 < report.startup_s < report.elapsed_s
    # The decoders' counts reach the report: the h264 mp4 was reached by seeking (the mkv: one forward decode).
    assert report.seeks >= 2 and 0 < report.packets_decoded < 320


def test_a_failed_start_stops_the_decode_workers(videos, tiny_clip, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise UserError("the tower cannot load")

    monkeypatch.setattr(extract, "FrameEncoder", broken)
    with pytest.raises(UserError, match="cannot load") as caught:
        run(_args(videos, tmp_path / "feats", tiny_clip, num_workers=1, device="cpu"))
    # Stopped while the error (and its traceback, which holds the run's frames) is still being handled.
    assert caught.tb is not None and multiprocessing.active_children() == []
    assert not (tmp_path / "feats" / extract.REPORT_NAME).exists()  # nothing written into the folder
