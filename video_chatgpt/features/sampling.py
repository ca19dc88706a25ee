"""Which frames of a video are encoded: the original's index rule, as a pure function.

For a video of ``N`` decoded frames and ``num_frames`` wanted, ``T = min(N, num_frames)`` frames are taken. The
video is cut into ``T`` segments of ``seg = (N - 1) / T`` frames and each segment contributes the frame in the
middle of its rounded ends::

    start_i = round(seg * i),  end_i = round(seg * (i + 1)),  index_i = (start_i + end_i) // 2

with ``round`` = round half to even (``np.round``). Examples:

* ``N = 1000, num_frames = 100`` -> ``5, 15, 25, ..., 994`` (``seg = 9.99``, ``(0 + 10) // 2 = 5``; the spec's
  prose says 4, 14, 24, but its formula above, which is the original's, gives these);
* ``N <= num_frames`` -> ``T = N`` and ``seg < 1``, so an index can repeat and the last frame is never taken
  (``N = 100`` -> ``0, 1, ..., 49, 50, 50, 51, ..., 97, 98``).

Reproduced exactly because training reads the official feature files, computed with this rule.

    >>> frame_indices(1000, 100)[:3]
    [5, 15, 25]
"""

from __future__ import annotations

import numpy as np


def frame_indices(num_frames_in_video: int, num_frames: int) -> list[int]:
    """Indices (sorted, possibly repeated) of the ``min(num_frames_in_video, num_frames)`` frames to encode."""
    if num_frames_in_video < 1:
        raise ValueError(f"a video needs at least one frame to be sampled, got {num_frames_in_video}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    t = min(num_frames_in_video, num_frames)
    # Same float64 expressions as the original (seg * i, not (N - 1) * i / T), so the half-way cases that
    # np.rint (half to even) decides come out identical.
    seg = float(num_frames_in_video - 1) / t
    i = np.arange(t, dtype=np.float64)
    start = np.rint(seg * i).astype(np.int64)
    end = np.rint(seg * (i + 1)).astype(np.int64)
    return ((start + end) // 2).tolist()
