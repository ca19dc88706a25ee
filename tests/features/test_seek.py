"""Frames located by timestamp (the seek path) against the straight path: the same arrays on every GOP structure
(long, short and open GOPs, many B-frames, variable frame rate, HEVC, VP9, a truncated file, the real sample
videos), only the needed packets decoded, and every doubt sends the video down the straight path."""

import dataclasses

import numpy as np
import pytest

from tests.features.clips import make_clips, open_gop_leading, packets
from video_chatgpt.features import decode
from video_chatgpt.features.decode import PacketTable, decode_sampled, plan_runs, read_packet_table
from video_chatgpt.sample.videos import real_sample_videos

LOCATABLE = {
    "long_gop_mp4", "short_gop_mp4", "open_gop_mp4", "open_gop_mkv", "bframes_mp4", "no_bframes_mkv", "vfr_mp4",
    "vfr_mkv", "hevc_open_gop_mp4", "vp9_webm",
}  # fmt: skip
SIZE = 96


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("gops"))


def test_the_clips_have_the_structures_they_are_named_for(clips):
    assert open_gop_leading(clips["open_gop_mp4"]) > 0 and open_gop_leading(clips["open_gop_mkv"]) > 0
    assert open_gop_leading(clips["hevc_open_gop_mp4"]) > 0
    assert open_gop_leading(clips["long_gop_mp4"]) == 0
    assert sum(key for _, key in packets(clips["long_gop_mp4"])) == 3  # keyframes at 0, 250, 500 of 600
    assert sum(key for _, key in packets(clips["short_gop_mp4"])) == 25
    steps = np.diff(sorted(pts for pts, _ in packets(clips["vfr_mkv"])))
    assert len(set(steps.tolist())) >= 4  # irregular frame durations
    reordered = [pts for pts, _ in packets(clips["bframes_mp4"])]
    assert reordered != sorted(reordered)  # B-frames: decode order is not presentation order
    assert sorted(set(clips) - LOCATABLE) == ["truncated_mp4"]


@pytest.mark.parametrize("num_frames", [7, 100])
def test_seek_path_gives_the_straight_paths_frames(clips, num_frames):
    # size 96 >= the clips' 96 x 64: the resize drops no pixel, so whole decoded frames are compared
    for name, path in clips.items():
        straight = decode_sampled(path, num_frames, SIZE, threads=1, method="straight")
        for threads in (1, 2):
            located = decode_sampled(path, num_frames, SIZE, threads=threads, method="seek")
            assert located.indices == straight.indices and located.num_decoded == straight.num_decoded, name
            assert located.note == straight.note, name
            np.testing.assert_array_equal(located.frames, straight.frames, err_msg=f"{name}, {threads} threads")
            assert located.method == ("seek" if name in LOCATABLE else "straight"), name
            assert located.fallback is None, (name, located.fallback)


def test_seek_path_on_the_real_videos_and_the_awkward_ones(awkward_videos):
    cases = [(path, 5) for path in real_sample_videos()] + [(real_sample_videos()[0], 100)]
    cases += [(awkward_videos["short"], 100), (awkward_videos["odd_size"], 5)]
    for path, num_frames in cases:
        straight = decode_sampled(path, num_frames, 224, threads=1, method="straight")
        located = decode_sampled(path, num_frames, 224, threads=1, method="seek")
        assert located.indices == straight.indices and located.num_decoded == straight.num_decoded
        np.testing.assert_array_equal(located.frames, straight.frames, err_msg=path.name)
        assert located.fallback is None
    # The real clips are h264 (located), the synthetic ones MPEG-4 Part 2 (straight: a packet is not always a frame)
    assert decode_sampled(real_sample_videos()[0], 5, 224, method="seek").method == "seek"
    assert decode_sampled(awkward_videos["odd_size"], 5, 224, method="seek").method == "straight"


def test_only_the_needed_packets_are_decoded(clips):
    # 600 frames, keyframes at 0, 250, 500; sampled 100, 299, 499: from 0 to 100, then a seek to 250 up to 499.
    video = decode_sampled(clips["long_gop_mp4"], 3, SIZE, threads=1)
    assert video.method == "seek" and video.indices == [100, 299, 499] and video.seeks == 1
    assert video.packets_decoded < 400
    # Keyframe every 12 frames, 8 of 300 sampled: each one its own short decode.
    video = decode_sampled(clips["short_gop_mp4"], 8, SIZE, threads=1)
    assert video.seeks >= 7 and video.packets_decoded < 120


def test_dense_samples_and_short_videos_decode_in_one_forward_pass(clips):
    # 100 of 300 frames with a keyframe every 60: seeking would save less than it costs.
    video = decode_sampled(clips["bframes_mp4"], 100, SIZE, threads=1)
    assert video.method == "seek" and video.seeks == 0
    # Every frame sampled (N <= num_frames): no demux pass, straight through.
    video = decode_sampled(real_sample_videos()[2], 200, 224, threads=1)  # 120 frames
    assert video.method == "straight" and video.fallback is None


def test_plan_starts_open_gop_leading_frames_at_the_keyframe_before():
    # Decode order: I0 P4 B2 B1 B3 | I8 B6 B5 B7 P12 ... presentation 0..; keyframe I8 has leading B5, B6, B7.
    pts = [0, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11]
    key = [True] + [False] * 4 + [True] + [False] * 7
    table = PacketTable(claimed=13, pts=np.array(pts), keyframe=np.array(key))
    (run,) = plan_runs(table, [6], seek_cost=0)  # frame 6 is shown before I8 but decoded after it
    assert run.start == 0 and run.end == 6
    (run,) = plan_runs(table, [8], seek_cost=0)  # frame 8 is I8 itself
    assert run.start == 5 and run.end == 5
    runs = plan_runs(table, [1, 9], seek_cost=0)  # far apart: two runs, the second from I8
    assert [(r.start, r.end, r.wanted) for r in runs] == [(0, 3, (1,)), (5, 11, (9,))]
    (run,) = plan_runs(table, [1, 9], seek_cost=2)  # a seek costs more than decoding packets 4 and 5: one run
    assert (run.start, run.end, run.wanted) == (0, 11, (1, 9))


def test_packet_table_problems_send_the_video_straight_through(clips, awkward_videos):
    table = read_packet_table(clips["truncated_mp4"])
    assert "300 frames but holds" in table.problem
    video = decode_sampled(clips["truncated_mp4"], 100, SIZE)
    assert video.method == "straight" and video.num_decoded < 300 and "300" in video.note
    assert "codec mpeg4" in read_packet_table(awkward_videos["odd_size"]).problem
    assert read_packet_table(clips["vfr_mkv"]).problem is None
    bad = PacketTable(5, np.array([0, 1, 1, 2, 3]), np.array([True, False, False, False, False]))
    assert "same timestamp" in decode._table_problem("h264", 5, bad.pts, bad.keyframe)
    assert "first packet" in decode._table_problem("h264", 5, bad.pts + np.arange(5), ~bad.keyframe)


def test_a_doubt_while_seeking_falls_back_to_the_straight_path(clips, monkeypatch):
    path = clips["open_gop_mkv"]
    straight = decode_sampled(path, 7, SIZE, method="straight")
    true_table = read_packet_table(path)
    # The packet of a sampled frame has another timestamp than the table says: the decode meets one it does not know.
    pts = true_table.pts.copy()
    pts[true_table.order[straight.indices[3]]] += 1
    monkeypatch.setattr(decode, "read_packet_table", lambda p: dataclasses.replace(true_table, pts=pts))
    video = decode_sampled(path, 7, SIZE)
    assert video.method == "straight" and "timestamp" in video.fallback
    np.testing.assert_array_equal(video.frames, straight.frames)
