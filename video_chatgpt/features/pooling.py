"""Spatio-temporal pooling of per-frame CLIP patch features, and the token counts it implies (pure torch).

For one video with per-frame patch features ``x`` of shape ``(T, P, C)`` (``T <= num_frames`` frames, ``P`` patch
tokens without CLS, width ``C``) the video tokens are::

    temporal = x.mean(dim=1)              (T, C)   one token per frame, zero rows appended up to num_frames
    spatial  = x.mean(dim=0)              (P, C)   one token per patch, over the T real frames only
    tokens   = [temporal ; spatial]       (num_frames + P, C) float16

e.g. ``(100 + 256, 1024)`` for ViT-L/14 at 224 px with 100 frames. The original does this in numpy on float16
arrays, which averages with float32 intermediates and rounds the result to float16; here the means are taken in
float32 and rounded to float16 once, so the two agree to float16 rounding.

``spatial_pool=k`` (default 1: the original) then averages the spatial tokens' ``g x g`` patch grid over ``k x k``
windows, so a 336 px tower's 24 x 24 = 576 spatial tokens become 12 x 12 = 144 with ``k = 2``. A grid that ``k``
does not divide keeps its last, partial windows (each the mean of the patches it covers): 27 x 27 -> 14 x 14. The
temporal tokens are unchanged (each still the mean over all of its frame's patches). Tokens before the grid (a kept
CLS token, ``leading=1``) are averaged over frames and kept as they are.

    >>> pool_video_features(torch.ones(3, 256, 1024, dtype=torch.float16), num_frames=100).shape
    torch.Size([356, 1024])
"""

from __future__ import annotations

import math

import torch


def pool_video_features(
    features: torch.Tensor,
    num_frames: int,
    out_dtype: torch.dtype = torch.float16,
    spatial_pool: int = 1,
    leading: int = 0,
) -> torch.Tensor:
    """(T, P, C) per-frame features -> (num_frames + spatial tokens, C) video tokens ``[temporal ; spatial]``.

    ``spatial_pool`` > 1: the ``P - leading`` grid tokens (a square grid) are averaged over ``k x k`` windows.
    """
    if features.ndim != 3:
        raise ValueError(f"expected per-frame features (frames, patches, width), got shape {tuple(features.shape)}")
    t, p, c = features.shape
    if not 1 <= t <= num_frames:
        raise ValueError(f"a video has {t} encoded frames; expected between 1 and num_frames={num_frames}")
    x = features.float()
    temporal = x.mean(dim=1)  # (T, C): mean over the patches of each frame
    spatial = x.mean(dim=0)  # (P, C): mean over the real frames (padding is added after, so it is not averaged)
    if spatial_pool > 1:
        spatial = torch.cat([spatial[:leading], pool_grid(spatial[leading:], spatial_pool)], dim=0)
    padding = temporal.new_zeros(num_frames - t, c)  # (num_frames - T, C) zero rows at the end
    return torch.cat([temporal, padding, spatial], dim=0).to(out_dtype)


def pool_grid(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(g * g, C) row-major grid tokens -> (ceil(g / k) ** 2, C): the mean over each ``k x k`` window."""
    n, c = tokens.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} grid tokens are not a square grid; cannot pool them {k} x {k}")
    grid = tokens.T.reshape(1, c, g, g)  # (1, C, g, g)
    # ceil_mode: a last window that runs off the grid averages the patches it covers (no padding is counted).
    pooled = torch.nn.functional.avg_pool2d(grid, kernel_size=k, stride=k, ceil_mode=True)  # (1, C, g', g')
    return pooled.reshape(c, -1).T  # (g' * g', C)


def pooled_grid_tokens(grid: int, spatial_pool: int) -> int:
    """Spatial tokens of a ``grid x grid`` patch grid after ``spatial_pool``: ``ceil(grid / k) ** 2``."""
    side = -(-grid // spatial_pool)
    return side * side
