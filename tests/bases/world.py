"""A tiny world for the other-bases tests: feature files whose colour is readable, captions and instruction QA.

Features are written directly (no video decoding): each video's (N, C) rows carry its colour's direction plus noise,
so the projector has something to learn; stage 1 records are video-caption pairs, stage 2 records are multi-turn
instruction records about the same videos. ``make_siglip_world``: the same records over real (synthetic, encoded)
videos whose features the document's extraction script makes with a tiny SigLIP tower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import REPO
from video_chatgpt.features.store import save_features
from video_chatgpt.sample.models import make_tiny_siglip
from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video

COLOURS = ("red", "green", "blue", "yellow")
NUM_TOKENS = 8  # 4 frames + 2x2 spatial tokens: a small video span
WIDTH = 32  # the tiny CLIP/SigLIP width


def colour_features(colour: int, rng: np.random.Generator, tokens: int = NUM_TOKENS, width: int = WIDTH) -> np.ndarray:
    """(tokens, width) fp16: colour one-hot-ish direction (scaled) plus noise."""
    base = np.zeros(width, dtype=np.float32)
    base[colour * (width // len(COLOURS)) : (colour + 1) * (width // len(COLOURS))] = 2.0
    return (base + 0.3 * rng.standard_normal((tokens, width))).astype(np.float16)


def make_world(folder: Path, num_videos: int = 16, seed: int = 0) -> dict[str, Path]:
    """``{"features", "captions", "instructions"}``: a feature folder and the two training JSONs."""
    rng = np.random.default_rng(seed)
    features = folder / "features"
    features.mkdir(parents=True, exist_ok=True)
    for i in range(num_videos):
        save_features(features / f"v{i}.pkl", colour_features(i % len(COLOURS), rng))
    return {"features": features, **write_records(folder, num_videos)}


SIGLIP_FRAMES = 4  # frames sampled per video by the SigLIP extraction


def make_siglip_world(folder: Path, num_videos: int = 8) -> dict[str, Path]:
    """The same records over real videos (a coloured square moving) whose features the document's script extracts
    with a tiny SigLIP tower (``make_tiny_siglip``: 64 px, patch 16, no CLS): ``{"features", "captions",
    "instructions", "tower", "held_out"}`` (one held-out video of each colour, ``held_out/h{colour}.mp4``)."""
    tower = make_tiny_siglip(folder / "siglip-tiny")
    videos, held_out = folder / "videos", folder / "held_out"
    for i in range(num_videos):
        make_synthetic_video(
            videos / f"v{i}.mp4", VideoTruth(f"v{i}", COLOURS[i % len(COLOURS)], "square", "up", 12, 64, 48), seed=i
        )
    for colour, name in enumerate(COLOURS):
        make_synthetic_video(
            held_out / f"h{colour}.mp4", VideoTruth(f"h{colour}", name, "square", "left", 12, 64, 48), seed=100 + colour
        )
    features = folder / "features"
    cmd = [
        sys.executable,
        "scripts/save_spatio_temporal_clip_features.py",
        "--video_dir_path",
        str(videos),
        "--clip_feat_path",
        str(features),
        "--vision_tower",
        str(tower),
        "--num_frames",
        str(SIGLIP_FRAMES),
        "--num_workers",
        "0",
        "--no_progress",
    ]
    run = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {"features": features, "tower": tower, "held_out": held_out, **write_records(folder, num_videos)}


def write_records(folder: Path, num_videos: int) -> dict[str, Path]:
    """Stage 1 video-caption records and stage 2 multi-turn instruction records for videos ``v0 .. v{n-1}``, whose
    colour is ``COLOURS[i % 4]``."""
    captions, instructions = [], []
    for i in range(num_videos):
        name = COLOURS[i % len(COLOURS)]
        captions.append(
            {
                "id": f"v{i}",
                "video": f"v{i}.pkl",
                "conversations": [
                    {"from": "human", "value": "<video>\nDescribe the video."},
                    {"from": "gpt", "value": f"A {name} square moving."},
                ],
            }
        )
        instructions.append(
            {
                "id": f"v{i}",
                "video": f"v{i}.pkl",
                "conversations": [
                    {"from": "human", "value": "What colour is the moving object in the video?\n<video>"},
                    {"from": "gpt", "value": f"The object is {name}."},
                    {"from": "human", "value": "Say it again."},
                    {"from": "gpt", "value": f"It is {name}."},
                ],
            }
        )
    paths = {"captions": folder / "captions.json", "instructions": folder / "instructions.json"}
    paths["captions"].write_text(json.dumps(captions))
    paths["instructions"].write_text(json.dumps(instructions))
    return paths
