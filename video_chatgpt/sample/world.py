"""The bundled sample world: synthetic videos with known answers, instruction data and held-out questions.

Files written by ``make_sample_world(out)``:

* ``videos/train/*.mp4``, ``videos/test/*.mp4``: synthetic videos (coloured shape moving in a direction);
* ``VideoInstruct_sample.json``: a list of ``{"video_id", "q", "a"}`` in the exact format of the 100K
  VideoInstruct JSON, for the training videos;
* ``test_qa.json``: held-out questions about the held-out videos, in the benchmark format
  ``{"video_name", "Q", "A"}`` plus the ``choices`` and ``answer`` of the colour question;
* ``truth.json``: the ground truth of every video.

CLI: ``video-chatgpt sample world --out runs/sample/world``
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from video_chatgpt.sample.videos import COLOURS, VideoTruth, make_synthetic_video, random_truths

COLOUR_QUESTIONS = (
    "What colour is the moving object in the video?",
    "Which colour does the shape in this video have?",
    "Can you tell me the colour of the object that moves?",
)


def colour_answer(colour: str) -> str:
    """The answer sentence of a colour question; ``colour`` is the only word that differs between videos."""
    return f"The object is {colour}."


def instruction_items(truth: VideoTruth, rng: np.random.Generator) -> list[dict]:
    """VideoInstruct-style QA items (``video_id``/``q``/``a``) for one video: colour, shape, motion, description."""
    c, s, d = truth.colour, truth.shape, truth.direction
    return [
        {"video_id": truth.video_id, "q": str(rng.choice(COLOUR_QUESTIONS)), "a": colour_answer(c)},
        {"video_id": truth.video_id, "q": "What shape is shown in the video?", "a": f"The video shows a {c} {s}."},
        {"video_id": truth.video_id, "q": "In which direction does the object move?", "a": f"The {c} {s} moves {d}."},
        {
            "video_id": truth.video_id,
            "q": "Describe what happens in the video.",
            "a": f"A {c} {s} moves {d} across a dark background. The {s} keeps its colour, {c}, the whole time.",
        },
    ]


def make_sample_world(out: str | Path, num_train: int = 48, num_test: int = 16, seed: int = 0) -> dict[str, Path]:
    """Write the sample world into ``out`` (see the module docstring); returns the paths by role."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    train = random_truths(num_train, seed=seed, prefix="v_trn")
    test = random_truths(num_test, seed=seed + 1, prefix="v_tst")
    for split, truths in (("train", train), ("test", test)):
        for k, truth in enumerate(truths):
            make_synthetic_video(
                out / "videos" / split / f"{truth.video_id}.mp4",
                truth,
                seed=seed * 10_000 + k + (split == "test") * 5000,
            )
    items = [item for truth in train for item in instruction_items(truth, rng)]
    order = rng.permutation(len(items))  # the real JSON is not grouped by video either
    items = [items[i] for i in order]
    (out / "VideoInstruct_sample.json").write_text(json.dumps(items, indent=1))
    test_qa = [
        {
            "video_name": t.video_id,
            "Q": COLOUR_QUESTIONS[0],
            "A": colour_answer(t.colour),
            "choices": [colour_answer(c) for c in COLOURS],
            "answer": t.colour,
        }
        for t in test
    ]
    (out / "test_qa.json").write_text(json.dumps(test_qa, indent=1))
    (out / "truth.json").write_text(
        json.dumps({"train": [asdict(t) for t in train], "test": [asdict(t) for t in test]}, indent=1)
    )
    return {
        "videos_train": out / "videos" / "train",
        "videos_test": out / "videos" / "test",
        "instructions": out / "VideoInstruct_sample.json",
        "test_qa": out / "test_qa.json",
        "truth": out / "truth.json",
    }


def caption(truth: VideoTruth) -> str:
    """A short text stand-in for a video, used only to teach the tiny base model the language."""
    return f"a {truth.colour} {truth.shape} moving {truth.direction}"


def language_corpus(n: int = 2000, seed: int = 100) -> tuple[list[list[dict]], list[str]]:
    """Text-only conversations (with ``<video>``) and one caption each, for ``pretrain_language``.

    Drawn from random ground truths (not the sample's videos), one question per truth, placed as the converted
    training data places ``<video>`` (after the question for even items, before it for odd ones).
    """
    rng = np.random.default_rng(seed)
    conversations, captions = [], []
    for i, truth in enumerate(random_truths(n, seed=seed, prefix="v_txt")):
        item = instruction_items(truth, rng)[int(rng.integers(4))]
        human = f"{item['q']}\n<video>" if i % 2 == 0 else f"<video>\n{item['q']}"
        conversations.append([{"from": "human", "value": human}, {"from": "gpt", "value": item["a"]}])
        captions.append(caption(truth))
    return conversations, captions
