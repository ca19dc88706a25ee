"""Training data for the tests: the converter's record format over random features, and forged feature files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from video_chatgpt.features.store import save_features

NUM_FRAMES = 100  # temporal tokens; + the 16x16 patch grid of the tiny CLIP = 356 video tokens, as the real model
NUM_PATCHES = 256


def make_training_data(instructions: Path, model: Path, out: Path, num_frames: int = NUM_FRAMES) -> dict:
    """Training JSON (the converter's record format) + random float16 features for every video of the instructions:
    ``{"data_path", "video_folder", "records", "width"}``."""
    width = json.loads((model / "config.json").read_text())["mm_hidden_size"]
    items = json.loads(instructions.read_text())
    records = [
        {
            "id": it["video_id"],
            "video": it["video_id"] + ".pkl",
            "conversations": [{"from": "human", "value": it["q"] + "\n<video>"}, {"from": "gpt", "value": it["a"]}],
        }
        for it in items
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(records))
    rng = np.random.default_rng(0)
    for vid in sorted({r["id"] for r in records}):
        features = rng.standard_normal((num_frames + NUM_PATCHES, width)).astype(np.float16)
        save_features(out / "features" / f"{vid}.pkl", features)
    return {"data_path": out / "train.json", "video_folder": out / "features", "records": records, "width": width}


# Forged pickles of a few dozen bytes asking for gigabytes, each a different route to the allocation.
