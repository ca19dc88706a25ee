"""Chat-template rendering per family: ids are the tokenizer's own template ids, the loss is on the assistant turns
(content + end-of-turn token) only, and typed role words or special-token text stay text."""

from __future__ import annotations

import pytest

from tests.helpers import FAMILIES
from video_chatgpt.constants import IGNORE_INDEX, VIDEO_END_TOKEN, VIDEO_PATCH_TOKEN, VIDEO_START_TOKEN
from video_chatgpt.data.conversation import CHAT_TEMPLATE, PLAIN_TEMPLATE, render_sample
from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer

N = 5  # video tokens
ANSWER_1 = "The object is red. Café ✓ 日本"
ANSWER_2 = "It moves left."
ROLE_WORDS = "user: assistant ASSISTANT: <|im_start|>assistant [INST] <|eot_id|> </s> <vid_patch>"
# What each family's template closes an assistant turn with (the hand-made expectation of the supervised text).
END_OF_TURN = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen2": "<|im_end|>"}


def record(answer_1: str = ANSWER_1) -> list[dict]:
    return [
        {"from": "human", "value": "<video>\nWhat colour is the moving object? ünïcode"},
        {"from": "gpt", "value": answer_1},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": ANSWER_2},
    ]


def setup(folder):
    tok = load_hf_tokenizer(folder)
    video_ids, _ = add_video_tokens(tok, use_start_end=True)
    return tok, video_ids, SegmentEncoder(tok)


def supervised_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for x, y in zip(ids, labels):
        if y != IGNORE_INDEX:
            assert x == y
            current.append(x)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_match_the_hand_made_expectation(chat_bases, family):
    tok, video_ids, enc = setup(chat_bases[family])
    r = render_sample(record(), enc, video_ids, N, template=CHAT_TEMPLATE)
    runs = [tok.decode(run).strip() for run in supervised_runs(r.input_ids, r.labels)]
    assert runs == [ANSWER_1 + END_OF_TURN[family], ANSWER_2 + END_OF_TURN[family]]
    assert r.input_ids.count(video_ids.patch) == N and r.num_video_spans == 1
    span = [video_ids.start, *[video_ids.patch] * N, video_ids.end]
    at = r.input_ids.index(video_ids.start)
    assert r.input_ids[at : at + N + 2] == span and set(r.labels[at : at + N + 2]) == {IGNORE_INDEX}


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_are_the_tokenizers_own_template_ids(chat_bases, family):
    tok, video_ids, enc = setup(chat_bases[family])
    r = render_sample(record(), enc, video_ids, N, template=CHAT_TEMPLATE)
    span_text = f"{VIDEO_START_TOKEN}{VIDEO_PATCH_TOKEN}{VIDEO_END_TOKEN}"
    messages = [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].replace("<video>", span_text)}
        for t in record()
    ]
    expected = tok.apply_chat_template(messages, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    collapsed = [x for i, x in enumerate(r.input_ids) if not (x == video_ids.patch and r.input_ids[i - 1] == x)]
    assert collapsed == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_prompt_is_the_training_prefix(chat_bases, family):
    """No whitespace surprise between training and inference: the prompt chat renders is exactly the start of the
    training sample, up to the first answer."""
    tok, video_ids, enc = setup(chat_bases[family])
    train = render_sample(record(), enc, video_ids, N, template=CHAT_TEMPLATE)
    prompt = render_sample([record()[0], {"from": "gpt", "value": None}], enc, video_ids, N, template=CHAT_TEMPLATE)
    first_supervised = next(i for i, y in enumerate(train.labels) if y != IGNORE_INDEX)
    assert train.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    # Mistral's answer starts with a space that merges into the first answer token ("▁The"): same index either way.
    assert first_supervised in (len(prompt.input_ids), len(prompt.input_ids) - 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_role_words_and_special_text_in_an_answer_stay_text(chat_bases, family):
    tok, video_ids, enc = setup(chat_bases[family])
    plain = render_sample(record(), enc, video_ids, N, template=CHAT_TEMPLATE)
    tricky = render_sample(record(ANSWER_1 + " " + ROLE_WORDS), enc, video_ids, N, template=CHAT_TEMPLATE)
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    count = lambda ids: {s: ids.count(s) for s in special}  # noqa: E731
    assert count(tricky.input_ids) == count(plain.input_ids)  # no extra special token from the typed text
    runs = [tok.decode(run).strip() for run in supervised_runs(tricky.input_ids, tricky.labels)]
    assert runs[0].startswith(ANSWER_1) and runs[0].endswith(END_OF_TURN[family]) and "[INST]" in runs[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_stage_1_template(chat_bases, family):
    tok, video_ids, enc = setup(chat_bases[family])
    r = render_sample(record(), enc, video_ids, N, template=PLAIN_TEMPLATE)
    bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
    span = [video_ids.start, *[video_ids.patch] * N, video_ids.end]
    assert r.input_ids[: len(bos) + len(span)] == bos + span
    assert tok.decode([x for x in r.labels if x != IGNORE_INDEX]).strip() == ANSWER_1 + tok.eos_token
