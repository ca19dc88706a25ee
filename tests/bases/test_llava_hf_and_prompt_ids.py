"""A LLaVA-1.5 folder in the transformers layout initialises the video model (its LM and GELU projector), trains and
chats; ``--prompt_ids original`` adds exactly the original inference's two tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bases.world import NUM_TOKENS, colour_features
from video_chatgpt.constants import PROJECTOR_FILE


def test_llava_hf_folder_gives_its_language_model_and_projector(llava_hf):
    from transformers import LlavaForConditionalGeneration

    from video_chatgpt.bases import open_base
    from video_chatgpt.data.tokenizer import VideoTokenIds
    from video_chatgpt.model.loading import load_model

    base = open_base(llava_hf)
    assert base.kind == "llava_hf"
    model = load_model(base, VideoTokenIds(patch=5, start=None, end=None), 0)
    full = LlavaForConditionalGeneration.from_pretrained(llava_hf).eval()
    proj = full.model.multi_modal_projector
    assert model.config.mm_projector_type == "mlp2x_gelu" and model.config.mm_hidden_size == proj.linear_1.in_features
    assert torch.equal(model.model.mm_projector[0].weight, proj.linear_1.weight)
    assert torch.equal(model.model.mm_projector[2].bias, proj.linear_2.bias)
    # The projector is LLaVA's function: Linear -> GELU -> Linear.
    x = torch.randn(3, proj.linear_1.in_features)
    assert torch.allclose(model.model.mm_projector(x), proj(x), atol=1e-6)
    # The language model answers text exactly as the LLaVA model does.
    ids = torch.tensor([[1, 450, 1203, 338, 2654, 29889]])
    with torch.no_grad():
        ours = model.eval()(input_ids=ids).logits
        theirs = full(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_llava_hf_trains_and_chats(llava_hf, feature_world, tmp_path):
    from video_chatgpt.inference.engine import load_engine
    from video_chatgpt.train.train import train

    out = train(
        [
            "--model_name_or_path",
            str(llava_hf),
            "--video_folder",
            str(feature_world["features"]),
            "--data_path",
            str(feature_world["instructions"]),
            "--output_dir",
            str(tmp_path / "run"),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-2",
            "--max_steps",
            "4",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_vision_tower"] == str(llava_hf.resolve())
    assert "conv_template" not in config or config["conv_template"] in (None, "vicuna_v1_1")  # Vicuna-1.5: LLaVA's v1
    saved = torch.load(out / PROJECTOR_FILE, weights_only=True)
    assert "model.mm_projector.0.weight" in saved and "model.mm_projector.2.weight" in saved
    # Training moved LLaVA's projector (its GELU MLP, read from the base) ...
    from transformers import LlavaForConditionalGeneration

    start = LlavaForConditionalGeneration.from_pretrained(llava_hf).model.multi_modal_projector
    for ours, theirs in (("0", start.linear_1), ("2", start.linear_2)):
        assert saved[f"model.mm_projector.{ours}.weight"].shape == theirs.weight.shape
        assert not torch.allclose(saved[f"model.mm_projector.{ours}.weight"].float(), theirs.weight.float())
    # ... and the loss fell ...
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    # ... and the chat's answer reads the video: the scores of its first token move with the features. (The
    # answers' text does not show it: this tiny random LM's top tokens stay where 4 steps leave them.)
    engine = load_engine(out, device="cpu")
    assert engine.model.config.video_token_len == NUM_TOKENS
    rng = np.random.default_rng(0)
    answer = engine.answer("What colour is it?", colour_features(1, rng), temperature=0, max_new_tokens=6)
    assert answer  # the chat answers
    ids = torch.tensor([engine.prompt_ids("What colour is it?", NUM_TOKENS)])
    scores = []
    for colour in (0, 1, 0):
        features = engine._features_tensor(colour_features(colour, np.random.default_rng(1)))
        with torch.no_grad():
            logits = engine.model(input_ids=ids, video_spatio_temporal_features=features).logits
        scores.append(torch.log_softmax(logits[0, -1].float(), dim=-1))
    assert torch.equal(scores[0], scores[2])  # the same video, the same scores
    moved = (scores[0] - scores[1]).abs().max().item()
    assert moved > 1e-2, f"the first token's log-probabilities move by {moved:.2e} between two videos"


def test_prompt_ids_original_are_the_fast_tokenizers_ids(tiny_llava):
    """The original inference built the prompt text (``q + "\\n" + <vid_start> + patches + <vid_end>`` in the
    video-chatgpt_v1 template) and called the fast tokenizer on it (``tokenizer([prompt]).input_ids``): the
    ``original`` ids must be exactly those, two more than ours."""
    from transformers import AutoTokenizer

    from video_chatgpt.constants import VIDEO_END_TOKEN, VIDEO_PATCH_TOKEN, VIDEO_START_TOKEN
    from video_chatgpt.data.conversation import INFERENCE_TEMPLATE, TEMPLATES, inference_conversation, render_sample
    from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer
    from video_chatgpt.inference.engine import original_inference_ids

    tok = load_hf_tokenizer(tiny_llava)
    video_ids, _ = add_video_tokens(tok, use_start_end=True)
    enc = SegmentEncoder(tok)
    question, n = "What is happening?", 4
    ours = render_sample(inference_conversation(question), enc, video_ids, n, template=INFERENCE_TEMPLATE).input_ids
    original = original_inference_ids(ours, enc, video_ids)

    fast = AutoTokenizer.from_pretrained(tiny_llava, use_fast=True)  # the original's inference tokenizer
    fast.add_tokens([VIDEO_PATCH_TOKEN], special_tokens=True)
    fast.add_tokens([VIDEO_START_TOKEN, VIDEO_END_TOKEN], special_tokens=True)
    span = VIDEO_START_TOKEN + VIDEO_PATCH_TOKEN * n + VIDEO_END_TOKEN
    prompt = f"{TEMPLATES[INFERENCE_TEMPLATE].system} USER: {question}\n{span} ASSISTANT:"  # its get_prompt()
    assert fast.convert_tokens_to_ids(VIDEO_START_TOKEN) == video_ids.start  # the same vocabulary
    assert original == fast([prompt]).input_ids[0]
    assert len(original) == len(ours) + 2


def test_unknown_prompt_ids_style_is_refused():
    from video_chatgpt.errors import UserError
    from video_chatgpt.inference.engine import load_engine

    with pytest.raises(UserError, match="prompt_ids"):
        load_engine("unused", prompt_ids="bogus")
