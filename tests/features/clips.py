"""Small clips with the GOP structures of real videos, for the seek path's tests: long and short GOPs, open GOPs
(frames shown before their keyframe), many B-frames, a variable frame rate, HEVC and VP9, and a truncated file.

Each clip is a few hundred frames of 96x64 (encoded in well under a second): the frame content only needs to make
the encoders use every frame type. ``open_gop_leading`` says whether a file really has an open GOP.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.features.reference import _mdat_offset


def render(n: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a blocky texture panning right, a red block moving, a scene cut every 97 frames."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    texture = None
    for i in range(n):
        if i % 97 == 0:  # a scene cut: the encoder may place a keyframe here (scenecut is off for fixed GOPs)
            small = rng.integers(0, 256, (height // 8 + 1, 2 * width // 8 + 1, 3), dtype=np.uint8)
            texture = small.repeat(8, axis=0).repeat(8, axis=1)[:height, : 2 * width]
        shift = (i * 3) % width
        frame = texture[:, shift : shift + width].copy()
        x = (i * 2) % (width - 16)
        frame[8:24, x : x + 16] = (230, 30, 30)
        out[i] = frame
    return out


def write_clip(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    gop: int = 250,
    bframes: int = 3,
    open_gop: bool = False,
    vfr: bool = False,
    fps: int = 25,
    faststart: bool = False,
) -> Path:
    """Encode with a fixed GOP (``gop`` frames between keyframes, no scene-cut keyframes) and ``bframes`` B-frames.

    ``vfr``: timestamps in milliseconds with irregular steps (20 to 100 ms), as phone videos have; ``faststart``:
    the mp4's index before its data, as streamed files have (a cut download of one still opens).
    """
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-pyramid=normal"
            stream.options = {"preset": "veryfast", "x264-params": params + (":open-gop=1" if open_gop else "")}
        elif codec == "libx265":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop={int(open_gop)}:log-level=0"
            stream.options = {"preset": "ultrafast", "x265-params": params}
        elif codec == "libvpx-vp9":  # alt-ref frames: hidden frames inside superframes
            stream.options = {"g": str(gop), "auto-alt-ref": "1", "lag-in-frames": "16", "deadline": "realtime"}
        else:
            stream.options = {"g": str(gop)}
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        steps = np.random.default_rng(1).choice([20, 33, 40, 67, 100], size=len(frames))
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = int(steps[:i].sum()), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate_mp4(path: Path, keep: float) -> Path:
    """Cut a faststart mp4 after the packet that ends ``keep`` of the way into its data (its index, before the data,
    still lists every frame): a partial download that stopped between two frames."""
    with av.open(str(path)) as container:
        ends = [p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size]
    data = path.read_bytes()
    start = _mdat_offset(data)
    cut = max(end for end in ends if end <= start + (len(data) - start) * keep)
    path.write_bytes(data[:cut])
    return path


def packets(path: Path) -> list[tuple[int, bool]]:
    """(pts, keyframe) of each video packet in decode order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]


def open_gop_leading(path: Path) -> int:
    """Frames that come after a keyframe in decode order but are shown before it (0 for closed GOPs)."""
    table = packets(path)
    count = 0
    for k, (key_pts, key) in enumerate(table):
        if key and k > 0:
            count += sum(1 for pts, _ in table[k + 1 : k + 20] if pts < key_pts)
    return count


def make_clips(out: Path) -> dict[str, Path]:
    """Every clip of the seek tests, by name."""
    out.mkdir(parents=True, exist_ok=True)
    frames = render(600)
    clips = {
        "long_gop_mp4": write_clip(out / "v_longgop.mp4", frames, gop=250),
        "short_gop_mp4": write_clip(out / "v_shortgop.mp4", frames[:300], gop=12),
        "open_gop_mp4": write_clip(out / "v_opengop.mp4", frames[:300], gop=48, open_gop=True),
        "open_gop_mkv": write_clip(out / "v_opengop.mkv", frames[:300], gop=48, open_gop=True),
        "bframes_mp4": write_clip(out / "v_bframes.mp4", frames[:300], gop=60, bframes=8),
        "no_bframes_mkv": write_clip(out / "v_nobframes.mkv", frames[:300], gop=40, bframes=0),
        "vfr_mp4": write_clip(out / "v_vfr.mp4", frames[:300], gop=50, vfr=True),
        "vfr_mkv": write_clip(out / "v_vfr.mkv", frames[:300], gop=50, vfr=True),
        "hevc_open_gop_mp4": write_clip(out / "v_hevc.mp4", frames[:240], codec="libx265", gop=40, open_gop=True),
        "vp9_webm": write_clip(out / "v_vp9.webm", frames[:240], codec="libvpx-vp9", gop=60),
    }
    clips["truncated_mp4"] = truncate_mp4(write_clip(out / "v_trunc.mp4", frames[:300], gop=50, faststart=True), 0.6)
    return clips
