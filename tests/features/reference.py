"""An independent, straightforward computation of the features (spec §3), and makers of broken videos.

Written from the definition, one video at a time, with the libraries the original used: decord to decode *all*
frames (or PyAV where decord cannot read the file, and for MPEG-4 Part 2 files: that codec is not bit-exact
across FFmpeg versions, and decord bundles an older FFmpeg, so some pixels of edge macroblocks differ by 1-2;
h264 and VP8 decode bit-exactly in both), the index rule as a plain loop, ``interpolate`` for the nearest
resize, ``CLIPImageProcessor`` on PIL images, the full ``CLIPVisionModel`` with ``output_hidden_states``, and numpy
for the pooling. Nothing from ``video_chatgpt.features`` is used here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import av
import numpy as np
import torch


def reference_indices(n: int, num_frames: int) -> list[int]:
    t = min(n, num_frames)
    seg = float(n - 1) / t
    out = []
    for i in range(t):
        start = int(np.round(seg * i))
        end = int(np.round(seg * (i + 1)))
        out.append((start + end) // 2)
    return out


def decode_all_frames(path: Path, use_decord: bool = True) -> np.ndarray:
    if use_decord:
        import decord

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        return vr.get_batch(list(range(len(vr)))).asnumpy()
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@functools.lru_cache(maxsize=4)
def _tower(tower: str):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    return CLIPImageProcessor.from_pretrained(tower), CLIPVisionModel.from_pretrained(tower).eval()


def reference_pixels(frames: np.ndarray, tower: str) -> torch.Tensor:
    """Sampled uint8 frames (T, H, W, 3) -> the processor's pixel values after the original's nearest resize."""
    from PIL import Image

    processor, model = _tower(tower)
    size = model.config.image_size
    x = torch.from_numpy(frames)
    if x.shape[1] != size or x.shape[2] != size:
        x = x.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size))
        x = x.to(torch.uint8).permute(0, 2, 3, 1)
    images = [Image.fromarray(f) for f in x.numpy()]
    return processor.preprocess(images, return_tensors="pt")["pixel_values"]


def reference_features_from_frames(frames: np.ndarray, tower: str, num_frames: int) -> np.ndarray:
    """All frames of a video (N, H, W, 3) -> (num_frames + P, C) float16, exactly as spec §3 describes."""
    processor, model = _tower(tower)
    picked = frames[reference_indices(len(frames), num_frames)]
    pixels = reference_pixels(picked, tower)
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    feats = hidden.numpy().astype(np.float16)  # (T, P, C)
    temporal = feats.mean(axis=1)
    temporal = np.pad(temporal, ((0, num_frames - len(temporal)), (0, 0)), mode="constant", constant_values=0)
    spatial = feats.mean(axis=0)
    return np.concatenate([temporal, spatial], axis=0)


def reference_features(path: Path, tower: str, num_frames: int, use_decord: bool = True) -> np.ndarray:
    return reference_features_from_frames(decode_all_frames(path, use_decord), str(tower), num_frames)


def assert_fp16_close(ours: np.ndarray, ref: np.ndarray, ulps: int = 1) -> None:
    """Equal up to ``ulps`` float16 steps (float32 summation order may flip the last float16 bit)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == ref.dtype == np.float16, (ours.dtype, ref.dtype)
    a, b = ours.astype(np.float32), ref.astype(np.float32)
    step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    bad = np.abs(a - b) > ulps * step
    worst = np.abs(a - b).max()
    assert not bad.any(), f"{bad.sum()} of {bad.size} values differ by more than {ulps} fp16 ulp; max abs diff {worst}"


# ------------------------------------------------------------------------------------------------------------
# Broken videos beyond video_chatgpt.sample.videos.make_awkward_videos


def write_faststart_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """mpeg4 in an mp4 whose index (moov, with the frame count) comes before the data, as streamed files do."""
    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_h264(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """libx264 (the codec of most real videos; its decoding is bit-exact across FFmpeg versions), even size."""
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _mdat_offset(data: bytes) -> int:
    """Byte offset of the payload of the top-level ``mdat`` box of an mp4."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"mdat":
            return pos + 8
        pos += size
    raise ValueError("no mdat box")


def make_truncated_mp4(path: Path, frames: np.ndarray, keep: float) -> Path:
    """An mp4 whose header still counts every frame but whose data is cut (a partial download)."""
    full = write_faststart_mp4(path.with_name("full_" + path.name), frames)
    data = full.read_bytes()
    full.unlink()
    start = _mdat_offset(data)
    path.write_bytes(data[: start + int((len(data) - start) * keep)])
    return path


def make_audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
