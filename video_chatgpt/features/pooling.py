"""Spatio-temporal pooling of per-frame CLIP patch features, and the token counts it implies (pure torch).

For one video with per-frame patch features ``x`` of shape ``(T, P, C)`` (``T <= num_frames`` frames, ``P`` patch
tokens without CLS, width ``C``) the video tokens are::

    temporal = x.mean(dim=1)              (T, C)   one token per frame, zero rows appended up to num_frames
    spatial  = x.mean(dim=0)              (P, C)   one token per patch, over the T real frames only
    tokens   = [temporal ; spatial]       (num_frames + P, C) float16

e.g. ``(100 + 256, 1024)`` for ViT-L/14 at 224 px with 100 frames. The original does this in numpy on float16
arrays, which averages with float32 intermediates and rounds the result to float16; here the means are taken in
float32 and rounded to float16 once, so the two agree to float16 rounding.

    >>> pool_video_features(torch.ones(3, 256, 1024, dtype=torch.float16), num_frames=100).shape
    torch.Size([356, 1024])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def pool_video_features(
    features: torch.Tensor, num_frames: int, out_dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """(T, P, C) per-frame patch features -> (num_frames + P, C) video tokens ``[temporal ; spatial]``."""
    if features.ndim != 3:
        raise ValueError(f"expected per-frame features (frames, patches, width), got shape {tuple(features.shape)}")
    t, _, c = features.shape
    if not 1 <= t <= num_frames:
        raise ValueError(f"a video has {t} encoded frames; expected between 1 and num_frames={num_frames}")
    x = features.float()
    temporal = x.mean(dim=1)  # (T, C): mean over the patches of each frame
    spatial = x.mean(dim=0)  # (P, C): mean over the real frames (padding is added after, so it is not averaged)
    padding = temporal.new_zeros(num_frames - t, c)  # (num_frames - T, C) zero rows at the end
    return torch.cat([temporal, padding, spatial], dim=0).to(out_dtype)


def _field(vision_config: object, name: str) -> int:
    if isinstance(vision_config, Mapping):
        return int(vision_config[name])
    return int(getattr(vision_config, name))


def num_patches(vision_config: object) -> int:
    """Patch tokens per frame (CLS excluded): ``(image_size // patch_size) ** 2``, e.g. 16 x 16 = 256 for ViT-L/14.

    ``vision_config`` is a ``CLIPVisionConfig``, a ``CLIPConfig`` (its ``vision_config`` is used) or a dict with
    ``image_size`` and ``patch_size``.
    """
    if isinstance(vision_config, Mapping):
        inner = vision_config.get("vision_config")
    else:
        inner = getattr(vision_config, "vision_config", None)
    if inner is not None:
        vision_config = inner
    grid = _field(vision_config, "image_size") // _field(vision_config, "patch_size")
    return grid * grid


def num_video_tokens(vision_config: object, num_frames: int) -> int:
    """Video tokens per video: ``num_frames`` temporal + the patch grid spatial, e.g. 100 + 256 = 356."""
    return num_frames + num_patches(vision_config)
