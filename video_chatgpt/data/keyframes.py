"""Keyframes of a video for ``data generate``: scene changes, filled up uniformly, decoded with the project's decoder.

Two passes over the video with ``features.decode.iter_frames`` (PyAV, every frame in presentation order, as
feature extraction decodes):

1. every frame is reduced to a ``SCENE_SIDE x SCENE_SIDE`` grey image; the *scene score* of frame ``i`` is the mean
   absolute difference (0-255) of its grey image and frame ``i - 1``'s. A frame is a scene change when its score
   is a local peak at least ``SCENE_MIN_SCORE`` and at least the mean plus two standard deviations of the video's
   scores (a cut, not motion). Frame 0 always opens the first scene; the highest-scoring changes come next.
2. while fewer than ``count`` frames are chosen, of the centres of ``count`` equal stretches of the video the one
   farthest from every chosen frame is added (so a video without cuts gets evenly spaced frames). The chosen frames
   are decoded again, kept as RGB and scaled down to at most ``max_side`` pixels (aspect ratio kept) for the VLM;
   their timestamps are the decoder's.

A video with fewer than ``count`` frames gives all of them. ``features.decode.DECODE_ERRORS`` mean the file is not a
usable video; ``KeyframeError`` says why (no frames, an empty file...).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from video_chatgpt.features.decode import VideoDecodeError, iter_frames

SCENE_SIDE = 32  # grey frames of 32 x 32 pixels: enough to see a cut, cheap to compare
SCENE_MIN_SCORE = 30.0  # mean absolute grey difference (0-255) below which a change is motion, not a cut


class KeyframeError(VideoDecodeError):
    """A video without usable frames; the message is the reason listed in the summary."""


@dataclass(frozen=True)
class Keyframe:
    index: int  # the frame's number in decoding order
    time: float  # seconds from the start (the decoder's timestamp; index / 25 where the file has none)
    scene_score: float  # mean absolute grey difference to the frame before (0 for the first frame)
    jpeg: bytes  # the frame, at most max_side pixels on its longer side, as JPEG


def scene_scores(path: str | Path) -> tuple[np.ndarray, list[float | None]]:
    """The scene score of every frame (see the module docstring) and each frame's timestamp (None when unknown)."""
    scores, times, previous = [], [], None
    for frame in iter_frames(path):
        grey = frame.reformat(width=SCENE_SIDE, height=SCENE_SIDE, format="gray").to_ndarray().astype(np.float32)
        scores.append(0.0 if previous is None else float(np.abs(grey - previous).mean()))
        times.append(None if frame.time is None else float(frame.time))
        previous = grey
    return np.asarray(scores, dtype=np.float64), times


def choose_keyframes(scores: np.ndarray, count: int) -> list[int]:
    """Sorted frame indices: frame 0, the strongest scene changes, then the middles of the longest gaps."""
    n = len(scores)
    if n <= count:
        return list(range(n))
    chosen = {0}
    if n > 2:
        inner = scores[1:]
        threshold = max(SCENE_MIN_SCORE, float(inner.mean() + 2 * inner.std()))
        peaks = [
            i
            for i in range(1, n)
            if scores[i] >= threshold and scores[i] >= scores[i - 1] and (i + 1 == n or scores[i] >= scores[i + 1])
        ]
        chosen |= set(sorted(peaks, key=lambda i: (-scores[i], i))[: count - 1])
    # Fill up: of the centres of ``count`` equal stretches, the one farthest from every chosen frame, in turn.
    centres = [int((2 * k + 1) * n / (2 * count)) for k in range(count)]
    while len(chosen) < count:
        free = [c for c in centres if c not in chosen] or [i for i in range(n) if i not in chosen]
        chosen.add(max(free, key=lambda c: (min(abs(c - i) for i in chosen), -c)))
    return sorted(chosen)


def _jpeg(rgb: np.ndarray, max_side: int) -> bytes:
    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def extract_keyframes(path: str | Path, count: int, max_side: int) -> tuple[list[Keyframe], int]:
    """``(keyframes, number of frames in the video)``; raises ``KeyframeError`` or one of ``DECODE_ERRORS``."""
    scores, times = scene_scores(path)
    if len(scores) == 0:
        raise KeyframeError("no frames could be decoded")
    wanted = choose_keyframes(scores, count)
    keep, frames = set(wanted), {}
    with contextlib.closing(iter_frames(path)) as decoded:  # closing the generator closes the file
        for i, frame in enumerate(decoded):
            if i in keep:
                frames[i] = _jpeg(frame.to_ndarray(format="rgb24"), max_side)
            if i >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in frames]
    if missing:  # the second decode gave fewer frames than the first: the file changed or decodes unreliably
        raise KeyframeError(f"frames {missing[:5]} decoded once but not a second time")
    keyframes = [
        Keyframe(i, round(times[i] if times[i] is not None else i / 25, 3), round(float(scores[i]), 2), frames[i])
        for i in wanted
    ]
    return keyframes, len(scores)
