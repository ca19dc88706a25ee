"""Limits on what one chosen video may make the demo do (issue 23, item 8): its length, its frame count and its frame
size are read from the container before anything is decoded, and the preview re-encode is bounded.

The backend here has no engine: a video over a limit must be refused before its features are computed (with an
engine of ``None`` any decoding is an ``AttributeError``, not the refusal the test asks for)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from video_chatgpt.inference.demo import (
    PREVIEW_FPS,
    DemoBackend,
    VideoLimits,
    VideoProblem,
    browser_playable,
    probe_video,
    write_preview,
)
from video_chatgpt.sample.videos import write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 1-second clip at 3,000 frames a second (.mp4: the container counts its frames; .webm: it only gives the
    length and the rate), and an ordinary 2-second 64 x 48 clip at 25 frames a second."""
    root = tmp_path_factory.mktemp("limits")
    rng = np.random.default_rng(0)
    fast = rng.integers(0, 255, (3000, 16, 16, 3), dtype=np.uint8)
    return {
        "fast_mp4": write_video(root / "fast.mp4", fast, fps=3000),
        "fast_webm": write_video(root / "fast.webm", fast[:600], fps=3000),
        "plain": write_video(root / "plain.mp4", rng.integers(0, 255, (50, 48, 64, 3), dtype=np.uint8), fps=25),
    }


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize(
    "clip, limits, words",
    [
        ("fast_mp4", VideoLimits(frames=1000), ("fast.mp4 has 3,000 frames", "--max_video_frames 1000")),
        ("fast_webm", VideoLimits(frames=100), ("fast.webm has", "--max_video_frames 100")),
        ("plain", VideoLimits(pixels=64 * 48 - 1), ("64 x 48 = 3,072 pixels", "--max_video_pixels 3071")),
        ("plain", VideoLimits(seconds=1.0), ("2.0 s long", "--max_video_seconds 1")),
    ],
)
def test_a_video_over_a_limit_is_refused_before_decoding(clips, tmp_path, clip, limits, words):
    backend = DemoBackend(engine=None, preview_dir=tmp_path, limits=limits)
    player, status, chat, state = backend.choose_video(clips[clip])
    assert player is None and chat == [] and state.features is None
    for word in words:
        assert word in status, status
    with pytest.raises(VideoProblem):
        probe_video(clips[clip], limits)
    assert not list(tmp_path.iterdir())  # no preview was made


def test_the_defaults_let_ordinary_videos_through(clips):
    info = probe_video(clips["plain"], VideoLimits())
    assert (info.frames, info.width, info.height) == (50, 64, 48)
    assert probe_video(clips["fast_mp4"], VideoLimits()).frames == 3000  # 3,000 < 18,000 frames


def test_the_preview_is_bounded_in_rate_and_frames(clips, tmp_path):
    fast = clips["fast_mp4"]  # 3,000 frames in 1 s: the preview shows PREVIEW_FPS of them a second
    assert not browser_playable(fast, probe_video(fast, VideoLimits()))
    preview = write_preview(fast, tmp_path / "fast.webm")
    assert _frames(preview) <= PREVIEW_FPS + 1
    short = write_preview(clips["plain"], tmp_path / "plain.webm", max_frames=5)
    assert _frames(short) == 5
    whole = write_preview(clips["plain"], tmp_path / "plain-all.webm")  # 25 fps -> 10 fps: 20 of 50 frames
    assert _frames(whole) == 20
