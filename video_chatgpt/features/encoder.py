"""Frame encoding: the vision tower, the pixel normalisation, and ``VideoFeatureExtractor`` (the public API).

The original, per frame: nearest resize to 224 x 224 (see ``decode.py``), ``CLIPImageProcessor`` on a PIL image
(its bicubic resize to 224 and 224 center crop are no-ops on a 224 x 224 image; then ``x / 255`` and
``(x - mean) / std``), ``CLIPVisionModel(..., output_hidden_states=True).hidden_states[-2][:, 1:]``: the output of
the second-to-last encoder layer (before the last layer and ``post_layernorm``) without the CLS token.

Here the same numbers come out faster:

* the processor's rescale and normalise, applied to a uint8 value ``v`` of channel ``c``, give one float32 number
  ``table[c, v]``; that ``(3, 256)`` table is built once with the processor's own arithmetic (float64 rescale,
  float32 normalise) and applied as a gather on the device, so there is no PIL round trip and the result is
  bit-equal to the processor (checked in ``tests/features``). When the processor's resize/crop would not be
  no-ops (a tower whose processor size differs from its image size), the processor itself is used instead;
* the tower is ``vit.VisionTower`` (transformers' CLIP / SigLIP vision modules and weights, bit-equal outputs,
  without importing transformers' modeling code) cut after the selected layer, so its output *is*
  ``hidden_states[-2]``: one layer less to run and no 25 stored hidden states;
* ``torch.inference_mode`` and float16 on GPU (bfloat16 or float32 on request).

Other towers (``towers.py``): SigLIP (no CLS token, its own processor), and the tower inside a LLaVA-1.5/NeXT
folder (its select layer and strategy). Shapes come from the tower's config: ``grid = image_size // patch_size``,
``grid ** 2`` spatial tokens (``ceil(grid / k) ** 2`` with ``spatial_pool=k``), ``width = hidden_size``.

    >>> extractor = VideoFeatureExtractor("openai/clip-vit-large-patch14", num_frames=100, device="cuda")
    >>> extractor.features_from_video("v_abc.mp4").shape      # (num_frames + spatial tokens, width) float16
    (356, 1024)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from video_chatgpt.constants import DEFAULT_NUM_FRAMES
from video_chatgpt.features.decode import decode_sampled, resize_nearest
from video_chatgpt.features.pooling import pool_video_features, pooled_grid_tokens
from video_chatgpt.features.sampling import frame_indices
from video_chatgpt.features.towers import (
    TowerSpec,
    load_tower_model,
    load_tower_processor,
    pixel_settings,
    resolve_tower,
)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float16 on CUDA (as the original), float32 on CPU (where float16 matmuls are slow)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> ``default_dtype(device)``; else float16 / fp16, bfloat16 / bf16, float32 / fp32."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return default_dtype(device)
    aliases = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
    }
    if name not in aliases:
        raise ValueError(f"unknown dtype {name!r}; expected one of auto, {', '.join(aliases)}")
    return aliases[name]


def _size_field(size: object, key: str) -> int | None:
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return None if value is None else int(value)


def processor_is_identity_at(processor, image_size: int) -> bool:
    """True if the processor's resize and center crop leave an ``image_size`` square image unchanged.

    ``processor``: a transformers image processor or ``towers.PixelSettings`` (the same fields)."""
    if getattr(processor, "do_resize", False):
        size = processor.size
        if isinstance(size, int):  # very old configs: "size": 224
            targets = {size}
        else:
            shortest = _size_field(size, "shortest_edge")
            targets = {shortest} if shortest is not None else {_size_field(size, "height"), _size_field(size, "width")}
        if targets != {image_size}:
            return False
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        crops = {crop} if isinstance(crop, int) else {_size_field(crop, "height"), _size_field(crop, "width")}
        if crops != {image_size}:
            return False
    return True


def normalisation_table(processor) -> np.ndarray:
    """(3, 256) float32: the processor's rescale + normalise of each uint8 value of each RGB channel.

    ``processor``: a transformers image processor or ``towers.PixelSettings``."""
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)  # (3, 256): channel c, value v
    x = values.astype(np.float32)
    if processor.do_rescale:
        # As transformers' rescale: multiply in float64, then round to float32.
        x = (values.astype(np.float64) * processor.rescale_factor).astype(np.float32)
    if processor.do_normalize:
        # As transformers' normalize: float32 mean and std, (x - mean) / std.
        mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(processor.image_std, dtype=np.float32)[:, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


class FrameEncoder:
    """uint8 frames already resized to the tower's size -> per-frame features ``(B, P, C)`` float16.

    ``P = spec.tokens_per_frame``: the patch grid, plus the CLS token only when the strategy keeps it.
    ``vision_tower`` is a name (resolved with ``towers.resolve_tower``) or a ``TowerSpec``.
    """

    def __init__(
        self,
        vision_tower: str | Path | TowerSpec,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        select_layer: int | None = None,
    ):
        self.spec = vision_tower if isinstance(vision_tower, TowerSpec) else resolve_tower(vision_tower, select_layer)
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.pixels = pixel_settings(self.spec)  # the preprocessor config, read without transformers' processor
        self.model = load_tower_model(self.spec, self.device, self.dtype)
        self.image_size = self.spec.image_size
        self.num_patches = self.spec.tokens_per_frame
        self.width = self.spec.width
        self.uses_table = processor_is_identity_at(self.pixels, self.image_size)
        # The processor itself only where its resize / crop changes a frame (loading it costs seconds of imports).
        self.processor = None if self.uses_table else load_tower_processor(self.spec)
        # (3, 256): pixel value v of channel c -> table[c, v]
        self._table = torch.from_numpy(normalisation_table(self.pixels)).to(self.device)
        # Tokens the tower outputs per frame, and how many of them to drop at the front (a CLS token not kept).
        self._tokens_out = self.spec.grid**2 + int(self.spec.has_cls)
        self._drop = int(self.spec.has_cls and not self.spec.keeps_cls)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> normalised (B, 3, S, S) in the model's dtype, on the model's device."""
        if self.uses_table:
            x = frames.to(self.device, non_blocking=True)  # (B, S, S, 3) uint8
            b, h, w, channels = x.shape
            pixels = torch.empty((b, channels, h, w), dtype=torch.float32, device=self.device)
            # One index_select per channel into the (B, 3, S, S) output: ~3x faster on CPU than indexing the table
            # with a tensor, which was ~10x faster than one gather over (B, S, S, 3).
            for c in range(channels):
                pixels[:, c] = self._table[c].index_select(0, x[..., c].reshape(-1).int()).view(b, h, w)
            return pixels.to(self.dtype)
        from PIL import Image  # the tower's processor does a real resize / crop: let it do exactly that

        images = [Image.fromarray(frame) for frame in frames.cpu().numpy()]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> (B, P, C) float16 features of the selected layer (CLS dropped unless kept)."""
        # The tower stops after the selected layer (no post-layernorm, no head): its output is
        # hidden_states[select_layer], (B, tokens_out, C).
        hidden = self.model(self.pixel_values(frames))
        if hidden.shape[1] != self._tokens_out:
            raise RuntimeError(
                f"the tower returned {hidden.shape[1]} tokens per frame, expected {self._tokens_out} "
                f"({int(self.spec.has_cls)} CLS + {self.spec.grid}x{self.spec.grid} patches)"
            )
        # float16 per-frame features, as the original's fp16 tower produced and stored them before pooling.
        return hidden[:, self._drop :].to(torch.float16)


class VideoFeatureExtractor:
    """Video -> ``(num_frames + spatial tokens, width)`` float16 spatio-temporal tokens, as the offline features.

    ``vision_tower``: a CLIP or SigLIP tower folder, a LLaVA-1.5/NeXT folder (its tower), or a hub id in the HF
    cache (resolved offline). ``dtype``: the tower's dtype; default float16 on CUDA, float32 on CPU.
    ``batch_size``: frames per forward. ``spatial_pool``: k x k average of the spatial tokens' patch grid (1: none).
    ``select_layer``: which hidden state (default -2, or the LLaVA folder's ``vision_feature_layer``).
    """

    def __init__(
        self,
        vision_tower: str | Path | TowerSpec,
        num_frames: int = DEFAULT_NUM_FRAMES,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        decoder_threads: int = 0,
        spatial_pool: int = 1,
        select_layer: int | None = None,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if spatial_pool < 1:
            raise ValueError(f"spatial_pool must be >= 1, got {spatial_pool}")
        self.encoder = FrameEncoder(vision_tower, device=device, dtype=dtype, select_layer=select_layer)
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.decoder_threads = decoder_threads
        self.spatial_pool = spatial_pool

    @property
    def spec(self) -> TowerSpec:
        return self.encoder.spec

    @property
    def num_patches(self) -> int:
        """Tokens per encoded frame (the patch grid, plus a kept CLS token), before any spatial pooling."""
        return self.encoder.num_patches

    @property
    def num_spatial_tokens(self) -> int:
        """Spatial rows of a feature array: the (pooled) patch grid, plus a kept CLS token."""
        return spatial_tokens(self.spec, self.spatial_pool)

    @property
    def width(self) -> int:
        return self.encoder.width

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def num_tokens(self) -> int:
        """Rows of a feature array: ``num_frames + num_spatial_tokens``."""
        return self.num_frames + self.num_spatial_tokens

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def pool(self, per_frame: torch.Tensor) -> np.ndarray:
        """(T, P, C) per-frame features -> (num_tokens, C) float16 ndarray (``pooling.pool_video_features``)."""
        tokens = pool_video_features(
            per_frame, self.num_frames, spatial_pool=self.spatial_pool, leading=int(self.spec.keeps_cls)
        )
        return tokens.cpu().numpy()

    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (T, S, S, 3) at the tower's size -> (T, P, C) float16 on the device (``batch_size`` per forward)."""
        frames = torch.as_tensor(frames)
        return torch.cat([self.encoder(chunk) for chunk in frames.split(self.batch_size)], dim=0)

    def features_from_frames(self, frames: np.ndarray, already_sampled: bool = False) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB frames of a video -> (num_frames + num_patches, width) float16 ndarray.

        By default ``frames`` are all the video's frames and the original's index rule picks ``min(N, num_frames)``
        of them. With ``already_sampled=True`` they are the picked frames (at most ``num_frames``), used as given.
        Frames of any size are resized (nearest) to the tower's size.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        if not already_sampled:
            frames = frames[frame_indices(len(frames), self.num_frames)]
        elif not 1 <= len(frames) <= self.num_frames:
            raise ValueError(f"{len(frames)} sampled frames given; expected 1 to num_frames={self.num_frames}")
        return self.pool(self.encode_frames(resize_nearest(frames, self.image_size)))

    def features_from_video(self, path: str | Path) -> np.ndarray:
        """A video file -> (num_tokens, width) float16; raises ``VideoDecodeError`` if unreadable."""
        video = decode_sampled(path, self.num_frames, self.image_size, threads=self.decoder_threads)
        return self.pool(self.encode_frames(video.frames))


def spatial_tokens(spec: TowerSpec, spatial_pool: int = 1) -> int:
    """Spatial rows of a feature array for a tower: the (pooled) patch grid, plus a kept CLS token."""
    return pooled_grid_tokens(spec.grid, spatial_pool) + int(spec.keeps_cls)


def video_tokens(spec: TowerSpec, num_frames: int, spatial_pool: int = 1) -> int:
    """Rows of a feature array: ``num_frames`` temporal + the spatial tokens, e.g. 100 + 256 = 356 for CLIP-L/14."""
    return num_frames + spatial_tokens(spec, spatial_pool)
