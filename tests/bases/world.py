"""A tiny world for the other-bases tests: feature files whose colour is readable, captions and instruction QA.

Features are written directly (no video decoding): each video's (N, C) rows carry its colour's direction plus noise,
so the projector has something to learn; stage 1 records are video-caption pairs, stage 2 records are multi-turn
instruction records about the same videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
    from video_chatgpt.features.store import save_features

    rng = np.random.default_rng(seed)
    features = folder / "features"
    features.mkdir(parents=True, exist_ok=True)
    captions, instructions = [], []
    for i in range(num_videos):
        colour = i % len(COLOURS)
        save_features(features / f"v{i}.pkl", colour_features(colour, rng))
        name = COLOURS[colour]
        captions.append({"id": f"v{i}", "video": f"v{i}.pkl", "conversations": [
            {"from": "human", "value": "<video>\nDescribe the video."},
            {"from": "gpt", "value": f"A {name} square moving."}]})
        instructions.append({"id": f"v{i}", "video": f"v{i}.pkl", "conversations": [
            {"from": "human", "value": "What colour is the moving object in the video?\n<video>"},
            {"from": "gpt", "value": f"The object is {name}."},
            {"from": "human", "value": "Say it again."},
            {"from": "gpt", "value": f"It is {name}."}]})
    paths = {"features": features, "captions": folder / "captions.json", "instructions": folder / "instructions.json"}
    paths["captions"].write_text(json.dumps(captions))
    paths["instructions"].write_text(json.dumps(instructions))
    return paths
