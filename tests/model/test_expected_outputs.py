"""Fixed-seed expected outputs of the video model on each kind of base: the document's LLaVA v1 (``llava_v1``), a
LLaVA-1.5 folder in the transformers layout (``llava_hf``) and a plain causal LM (``causal_lm``, the tiny Qwen2).

Each test loads the base as inference does (video tokens added to the tokenizer, the embeddings fitted to them),
feeds fixed ids around a span of fixed (1, N, C) features, and compares the last position's first logits and the
loss on the text after the video with numbers written here. The numbers were printed by running this code once;
a change to the loader, the vocabulary fitting, the projector or the way features replace the patch embeddings
moves them (the video changes the last logits by far more than the tolerance: checked below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from video_chatgpt.bases import open_base
from video_chatgpt.constants import IGNORE_INDEX
from video_chatgpt.data.tokenizer import load_video_tokenizer
from video_chatgpt.model.loading import load_model

NUM_VIDEO_TOKENS = 8  # N: a short video span keeps the forward pass tiny
WIDTH = 32  # C: the tiny towers' feature width (the plain causal LM's projector is built for it)
PREFIX = [11, 42, 97, 150]  # text before <vid_start>: ids every tiny vocabulary holds (the chat LMs have ~500)
SUFFIX = [23, 64, 301, 7, 88]  # text after <vid_end>: the supervised part
ATOL = 1e-4

# kind -> (last position's logits[:5], loss on SUFFIX): printed by this file's code once, pasted here.
EXPECTED = {
    "llava_v1": ([0.2452766, -0.2666403, -0.0346404, -0.0450388, -0.0195308], 10.3964672),
    "llava_hf": ([-0.0972765, 0.0239405, 0.0974711, 0.0224471, 0.0726189], 10.4080944),
    "causal_lm": ([0.0, 2.0443764, -1.8836083, -3.5496562, 2.9101231], 7.7150397),
}


def load_base(folder: Path, **fields) -> tuple[torch.nn.Module, str]:
    """The fp32 video model of a base folder and its kind, with the video tokens (start/end too) in its vocabulary,
    through the one loader (``model.loading.load_model``), as inference loads it."""
    base = open_base(folder)
    tokenizer, video_ids, num_new = load_video_tokenizer(base.folder, use_start_end=True)
    assert num_new == 3  # none of the tiny bases has the video tokens yet: the start/end rows are the mean rows
    model = load_model(
        base, video_ids, num_new, dtype=torch.float32, mm_use_vid_start_end=True, video_token_len=NUM_VIDEO_TOKENS,
        **fields,
    )  # fmt: skip
    return model.eval(), base.kind


def fixed_inputs(config, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, L) ids ``PREFIX <vid_start> <vid_patch> x N <vid_end> SUFFIX``, (1, L) labels on SUFFIX only, and
    (1, N, C) standard-normal features drawn from ``seed``."""
    span = (
        [config.video_start_token_id] + [config.video_patch_token_id] * NUM_VIDEO_TOKENS + [config.video_end_token_id]
    )
    ids = torch.tensor([PREFIX + span + SUFFIX])
    labels = ids.clone()
    labels[:, : len(PREFIX) + len(span)] = IGNORE_INDEX
    features = torch.randn(1, NUM_VIDEO_TOKENS, config.mm_hidden_size, generator=torch.Generator().manual_seed(seed))
    return ids, labels, features


def check_expected_outputs(folder: Path, kind: str, **fields) -> None:
    torch.manual_seed(0)  # the rows the resize adds (and a plain causal LM's new projector) are drawn from it
    model, loaded_kind = load_base(folder, **fields)
    assert loaded_kind == kind
    ids, labels, features = fixed_inputs(model.config)
    with torch.no_grad():
        last = model(input_ids=ids, video_spatio_temporal_features=features).logits[0, -1]  # (V,)
        loss = model(input_ids=ids, video_spatio_temporal_features=features, labels=labels).loss
        _, _, other = fixed_inputs(model.config, seed=1)
        other_last = model(input_ids=ids, video_spatio_temporal_features=other).logits[0, -1]
    print(f"{kind}: logits[:5] {[round(v, 7) for v in last[:5].tolist()]}, loss {loss.item():.7f}")
    logits, expected_loss = EXPECTED[kind]
    torch.testing.assert_close(last[:5], torch.tensor(logits), atol=ATOL, rtol=0)
    assert loss.item() == pytest.approx(expected_loss, abs=ATOL)
    # The video reaches the output: other features move the last logits far beyond the tolerance.
    assert (other_last - last).abs().max() > 100 * ATOL


def test_document_base_llava_v1(tiny_llava):
    check_expected_outputs(tiny_llava, "llava_v1")


def test_llava_1_5_folder_llava_hf(llava_hf):
    check_expected_outputs(llava_hf, "llava_hf")


def test_plain_causal_lm_qwen2(chat_bases):
    check_expected_outputs(chat_bases["qwen2"], "causal_lm", mm_hidden_size=WIDTH)
