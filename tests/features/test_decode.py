"""Straight-through PyAV decoding against decord (the original's reader) and against decoding everything."""

import numpy as np
import pytest
import torch

from tests.features.reference import (
    decode_all_frames,
    make_audio_only,
    make_truncated_mp4,
    reference_indices,
    write_h264,
)
from video_chatgpt.features.decode import (
    NearestResize,
    VideoDecodeError,
    container_frame_count,
    decode_sampled,
    iter_frames,
    resize_nearest,
)
from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video, real_sample_videos, render_frames


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Short synthetic videos in the three containers of ActivityNet (mkv / webm carry no frame count)."""
    out = tmp_path_factory.mktemp("synthetic")
    return [
        make_synthetic_video(out / "v_synmp4.mp4", VideoTruth("v_synmp4", "red", "square", "right", 37, 96, 72)),
        make_synthetic_video(out / "v_synmkv.mkv", VideoTruth("v_synmkv", "blue", "circle", "up", 23, 77, 53)),
        make_synthetic_video(out / "v_synwebm.webm", VideoTruth("v_synwebm", "green", "square", "down", 31, 64, 48)),
        write_h264(out / "v_synodd.mp4", render_frames(VideoTruth("v_synodd", "yellow", "circle", "left", 60, 77, 53))),
    ]


def test_frames_and_count_equal_decord_on_well_formed_files(synthetic):
    """Same count as decord's len(vr) and the same RGB frames (MPEG-4 Part 2 here only at sizes where FFmpeg
    versions agree; see tests/features/reference.py)."""
    import decord

    for path in real_sample_videos() + synthetic:
        vr = decord.VideoReader(str(path))
        assert container_frame_count(path) == len(vr), path.name
        idx = reference_indices(len(vr), 10)
        kept, count = {}, 0
        for count, frame in enumerate(iter_frames(path), start=1):
            if count - 1 in idx:
                kept[count - 1] = frame.to_ndarray(format="rgb24")
        assert count == len(vr), path.name  # frames really decoded == decord's len(vr)
        np.testing.assert_array_equal(np.stack([kept[i] for i in idx]), vr.get_batch(idx).asnumpy(), err_msg=path.name)


@pytest.mark.parametrize("hw", [(54, 78), (720, 1280), (224, 224), (100, 300), (3, 500)])
def test_nearest_resize_equals_float_interpolate_then_uint8(hw):
    frames = np.random.default_rng(0).integers(0, 256, size=(2, *hw, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(x, size=(224, 224)).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resize_nearest(frames, 224), ref)


def test_one_resizer_per_video_follows_a_change_of_frame_size():
    # A stream may change resolution mid-way: the resizer's cached tables must follow the frame in hand.
    resize, rng = NearestResize(224), np.random.default_rng(1)
    for hw in [(360, 640), (360, 640), (720, 1280), (360, 640), (224, 224), (100, 300)]:
        frame = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        ref = torch.nn.functional.interpolate(x, size=(224, 224)).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(resize(frame), ref, err_msg=str(hw))


@pytest.mark.parametrize("num_frames", [5, 100])
def test_sampled_frames_equal_decode_everything_then_pick(synthetic, num_frames):
    for path in [real_sample_videos()[0], *synthetic]:
        video = decode_sampled(path, num_frames=num_frames, size=224)
        everything = decode_all_frames(path)
        idx = reference_indices(len(everything), num_frames)
        assert video.indices == idx and video.num_decoded == len(everything) and video.note is None
        np.testing.assert_array_equal(video.frames, resize_nearest(everything[idx], 224))
        assert video.frames.shape == (min(len(everything), num_frames), 224, 224, 3)


def test_wrong_container_count_samples_the_frames_that_decode(tmp_path):
    frames = render_frames(VideoTruth("v_trunc", "red", "square", "right", 120, 64, 48))
    path = make_truncated_mp4(tmp_path / "v_trunc.mp4", frames, keep=0.5)
    assert container_frame_count(path) == 120
    everything = decode_all_frames(path, use_decord=False)
    assert 1 < len(everything) < 120
    video = decode_sampled(path, num_frames=100, size=224)
    assert video.num_decoded == len(everything) and video.container_frames == 120
    assert "120" in video.note and str(len(everything)) in video.note
    picked = everything[reference_indices(len(everything), 100)]
    np.testing.assert_array_equal(video.frames, resize_nearest(picked, 224))


def test_bad_inputs_raise_with_a_reason(tmp_path, awkward_videos):
    frames = render_frames(VideoTruth("v_zero", "red", "square", "right", 30, 64, 48))
    cases = {
        "zero_frames": (make_truncated_mp4(tmp_path / "v_zero.mp4", frames, keep=0.0), "no frame"),
        "audio_only": (make_audio_only(tmp_path / "v_audio.m4a"), "no video stream"),
        "empty": (awkward_videos["empty"], "empty file"),
        "not_video": (awkward_videos["not_video"], "not a video"),
        "corrupt": (awkward_videos["corrupt"], "corrupt"),
    }
    for path, words in cases.values():
        with pytest.raises(VideoDecodeError, match=words):
            decode_sampled(path, num_frames=8, size=224)
