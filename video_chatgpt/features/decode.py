"""Decoding: the sampled frames of one video, decoded straight through with PyAV and resized to the tower's size.

The original opens each video with decord, takes ``N = len(vr)`` and seeks to each of the sampled indices
(``vr.get_batch``). Here every frame is decoded once, in order, and only the sampled ones are converted to RGB
and kept: a long video is read once instead of once per seek, and the RGB conversion, the resize and the memory
are paid for ``T <= num_frames`` frames only. On well-formed files PyAV's RGB frames and frame count equal
decord's bit for bit (checked in ``tests/features``).

``N`` is the number of frames the decoder really produces. It is needed before decoding (the indices depend on
it), so the container's count is used first: the header's frame count (mp4), else the number of video packets
(mkv / webm headers have none). If the decode produces a different number (a truncated download, a wrong header),
the video is decoded a second time with the indices of the real count and a note says so.

Resizing is the original's: ``torch.nn.functional.interpolate(mode="nearest")`` to ``size x size`` (aspect ratio
not kept), which on uint8 input is a pure gather of rows and columns; the row/column indices are taken from
``interpolate`` itself, so they match torch's float rounding exactly.

    >>> from video_chatgpt.features.decode import decode_sampled
    >>> video = decode_sampled("bikes.mp4", num_frames=100, size=224)
    >>> video.frames.shape, video.num_decoded
    ((100, 224, 224, 3), 250)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from video_chatgpt.features.sampling import frame_indices


class VideoDecodeError(Exception):
    """A video that yields no usable frames; the message is the reason shown in the extraction report."""


# What decoding a broken or non-video file can raise: PyAV's errors are FFmpegError (subclasses of OSError /
# ValueError), plus our own reasons. Anything else is a bug and is not swallowed.
DECODE_ERRORS = (VideoDecodeError, av.error.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class SampledVideo:
    """The frames of one video that are encoded, and how they were found."""

    frames: np.ndarray  # (T, size, size, 3) uint8 RGB, T = min(num_decoded, num_frames)
    indices: list[int]  # which decoded frames they are (sorted, may repeat)
    num_decoded: int  # N: frames the decoder produced
    container_frames: int  # what the container claimed (header count, else packet count)
    note: str | None = None  # set when the container's count was wrong


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output row for ``interpolate(mode="nearest")`` from ``in_size`` to ``out_size``."""
    # Interpolating the index ramp itself gives torch's own floor(dst * in / out) in float32, edge cases included.
    # (Exact for in_size < 2**24; a few microseconds, so it is not cached.)
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    picked = torch.nn.functional.interpolate(ramp, size=(out_size, 1), mode="nearest")
    return picked.view(out_size).to(torch.int64).numpy()


def resize_nearest(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (..., H, W, 3) -> (..., size, size, 3), equal to the original's float ``interpolate`` + ``.to(uint8)``."""
    h, w = frames.shape[-3], frames.shape[-2]
    if (h, w) == (size, size):
        return frames
    rows, cols = nearest_indices(h, size), nearest_indices(w, size)
    return frames[..., rows[:, None], cols[None, :], :]


def _open_video(path: str | Path, threads: int) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoDecodeError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as exc:
        raise VideoDecodeError(f"not a video, or a corrupt one: FFmpeg cannot open it ({exc.strerror})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("no video stream in the file")
    stream = container.streams.video[0]
    # Frame + slice threads inside the decoder; 0 = FFmpeg picks from the number of cores.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return container, stream


def container_frame_count(path: str | Path) -> int:
    """Frames the container claims: the header's count (mp4) or, where there is none (mkv, webm), its video packets."""
    container, stream = _open_video(path, threads=1)
    with container:
        if stream.frames > 0:
            return int(stream.frames)
        # Demuxing reads the file without decoding it: a few percent of a decode. Empty packets flush, skip them.
        return sum(1 for packet in container.demux(stream) if packet.size)


def iter_frames(path: str | Path, threads: int = 0) -> Iterator[av.VideoFrame]:
    """Every decoded frame of the first video stream, in order."""
    container, stream = _open_video(path, threads)
    with container:
        yield from container.decode(stream)


def decode_all(path: str | Path) -> np.ndarray:
    """All frames as uint8 (N, H, W, 3) RGB. For tests and short clips only (a long video does not fit in memory)."""
    frames = [frame.to_ndarray(format="rgb24") for frame in iter_frames(path)]
    if not frames:
        raise VideoDecodeError("no frame could be decoded")
    return np.stack(frames)


def _decode_keep(path: str | Path, indices: list[int], size: int, threads: int) -> tuple[np.ndarray, int]:
    """One pass over the video keeping the frames at ``indices`` (resized). Returns (frames, frames decoded)."""
    wanted: dict[int, list[int]] = {}  # decoded frame index -> output slots (an index can repeat)
    for slot, index in enumerate(indices):
        wanted.setdefault(index, []).append(slot)
    out = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    count = 0
    try:
        for count, frame in enumerate(iter_frames(path, threads), start=1):
            slots = wanted.get(count - 1)
            if slots:
                out[slots] = resize_nearest(frame.to_ndarray(format="rgb24"), size)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"decoding failed after {count} frames: {exc}") from exc
    return out, count


def decode_sampled(path: str | Path, num_frames: int, size: int, threads: int = 0) -> SampledVideo:
    """The ``min(N, num_frames)`` sampled frames of ``path``, resized to ``size``; raises ``VideoDecodeError``."""
    claimed = container_frame_count(path)
    expected = claimed
    note = None
    for _ in range(2):
        if expected < 1:
            raise VideoDecodeError("the video has no frames" if claimed < 1 else "no frame could be decoded")
        indices = frame_indices(expected, num_frames)
        frames, decoded = _decode_keep(path, indices, size, threads)
        if decoded == expected:
            return SampledVideo(frames, indices, decoded, claimed, note)
        # The container was wrong: sample again from the frames that really exist.
        note = f"the container says {claimed} frames but {decoded} decode; sampled from the {decoded}"
        expected = decoded
    raise VideoDecodeError(f"the frame count changes between two decodes ({claimed} claimed, then {expected})")
