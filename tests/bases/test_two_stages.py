"""Each family trains stage 1 (projector alone, plain template) then stage 2 (instruction data, chat template) with
the loss falling, saves, reloads through the inference engine and answers deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bases.conftest import FAMILIES
from tests.bases.world import COLOURS, NUM_TOKENS, colour_features
from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_FILE

STEPS = 30
PROJECTOR = {"llama3": "linear", "mistral": "mlp2x_gelu", "qwen2": "mlp2x_gelu"}
KEYS = {"linear": ["model.mm_projector.bias", "model.mm_projector.weight"],
        "mlp2x_gelu": ["model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.bias",
                       "model.mm_projector.2.weight"]}


def losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [x["loss"] for x in state["log_history"] if "loss" in x]


def common(base: Path, world: dict, projector: str) -> list[str]:
    return ["--model_name_or_path", str(base), "--video_folder", str(world["features"]),
            "--per_device_train_batch_size", "4", "--learning_rate", "3e-2", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--max_steps", str(STEPS),
            "--mm_projector_type", projector, "--mm_use_vid_start_end", "--vision_tower", "tiny-siglip"]


@pytest.fixture(scope="module", params=FAMILIES)
def two_stages(request, chat_bases, feature_world, tmp_path_factory):
    from video_chatgpt.train.train import train

    family = request.param
    out = tmp_path_factory.mktemp(f"two_stages_{family}")
    args = common(chat_bases[family], feature_world, PROJECTOR[family])
    stage1 = train([*args, "--stage", "pretrain", "--data_path", str(feature_world["captions"]),
                    "--output_dir", str(out / "stage1")])
    stage2 = train([*args, "--stage", "finetune", "--tune_mm_mlp_adapter", "True",
                    "--data_path", str(feature_world["instructions"]), "--output_dir", str(out / "stage2"),
                    "--pretrain_mm_mlp_adapter", str(stage1 / PROJECTOR_FILE)])
    return family, stage1, stage2


def test_loss_falls_in_both_stages(two_stages):
    _, stage1, stage2 = two_stages
    for out in (stage1, stage2):
        curve = losses(out)
        assert len(curve) == STEPS
        assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.3, (out.name, curve)


def test_saved_projector_and_config(two_stages, chat_bases):
    family, stage1, stage2 = two_stages
    kind = PROJECTOR[family]
    s1 = torch.load(stage1 / PROJECTOR_FILE, weights_only=True)
    s2 = torch.load(stage2 / PROJECTOR_FILE, weights_only=True)
    assert sorted(s2) == sorted([*KEYS[kind], EMBED_TOKENS_KEY])
    assert all(v.dtype == torch.float32 for v in s2.values())
    # Stage 2 started from stage 1's projector and moved it.
    assert not torch.equal(s1[KEYS[kind][1]], s2[KEYS[kind][1]])
    config = json.loads((stage2 / "config.json").read_text())
    assert config["conv_template"] == "chat" and config["mm_projector_type"] == kind
    assert config["video_token_len"] == NUM_TOKENS and config["mm_vision_tower"] == "tiny-siglip"
    assert json.loads((stage1 / "config.json").read_text())["conv_template"] == "plain"
    # The frozen language model is the base's, untouched: only the video parts trained.
    from safetensors.torch import load_file

    trainable = load_file(str(stage2 / "trainable.safetensors"))
    assert all(name.startswith("model.") for name in trainable), sorted(trainable)


def test_reload_and_chat_deterministically(two_stages):
    from video_chatgpt.inference.engine import load_engine

    _, _, stage2 = two_stages
    features = colour_features(0, np.random.default_rng(7))
    question = "What colour is the moving object in the video?"
    engine = load_engine(stage2, device="cpu")
    assert engine.conv_mode == "chat"
    first = engine.answer(question, features, temperature=0, max_new_tokens=8)
    assert first == engine.answer(question, features, temperature=0, max_new_tokens=8)
    again = load_engine(stage2, device="cpu")
    assert again.answer(question, features, temperature=0, max_new_tokens=8) == first
    sampled = [again.answer(question, features, temperature=0.7, max_new_tokens=8, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]
    # Trained: the right colour's answer scores higher than the others' on a held-out video of each colour.
    rng = np.random.default_rng(11)
    right = 0
    for colour in range(len(COLOURS)):
        scores = engine.score_answers(question, colour_features(colour, rng),
                                      [f"The object is {name}." for name in COLOURS])
        right += int(np.argmax(scores) == colour)
    assert right >= 2, right  # chance is 1 of 4


def test_features_with_another_row_count_are_refused(two_stages):
    from video_chatgpt.errors import UserError
    from video_chatgpt.inference.engine import load_engine

    _, _, stage2 = two_stages
    engine = load_engine(stage2, device="cpu")
    with pytest.raises(UserError, match=rf"have {NUM_TOKENS - 1} rows .* trained with {NUM_TOKENS}"):
        engine.answer("q", colour_features(0, np.random.default_rng(0))[: NUM_TOKENS - 1], temperature=0)
