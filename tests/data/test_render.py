"""The rendered ids/labels against an independent simulation of the original (slow tokenizer + preprocess_v1)."""

import re

import pytest
import sentencepiece

from video_chatgpt.constants import IGNORE_INDEX
from video_chatgpt.data.conversation import TEMPLATES, inference_conversation, render_sample
from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer

N_VIDEO = 7  # a small span keeps the expected lists readable; the code takes any count


@pytest.fixture(scope="module")
def tok(tiny_llava):
    hf = load_hf_tokenizer(tiny_llava, model_max_length=2048)
    ids, new = add_video_tokens(hf, use_start_end=True)
    assert new == 3 and (ids.patch, ids.start, ids.end) == (32003, 32004, 32005)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_llava / "tokenizer.model"))
    return hf, ids, SegmentEncoder(hf), sp


def original_tokenize(text, sp, specials):
    """transformers-4.29 slow LlamaTokenizer: split on special tokens, strip their neighbours, sp.encode chunks."""
    parts = [p for p in re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if p != ""]
    for i, p in enumerate(parts):
        if p in specials:
            if i > 0 and parts[i - 1] not in specials:
                parts[i - 1] = parts[i - 1].rstrip()
            if i + 1 < len(parts) and parts[i + 1] not in specials:
                parts[i + 1] = parts[i + 1].lstrip()
    ids = [1]
    for p in parts:
        ids += [specials[p]] if p in specials else sp.encode(p)
    return ids


def original_preprocess_v1(conv, sp, specials, n_video):
    """The original's prompt string and label mask (preprocess_multimodal + preprocess_v1)."""
    system = TEMPLATES["vicuna_v1_1"].system
    span = "<vid_start>" + "<vid_patch>" * n_video + "<vid_end>"
    text = system + " "
    for i, turn in enumerate(conv):
        role = "USER" if turn["from"] == "human" else "ASSISTANT"
        text += role + ": " + turn["value"].replace("<video>", span) + [" ", "</s>"][i % 2]
    ids = original_tokenize(text, sp, specials)
    labels = list(ids)
    cur = 1
    labels[0] = IGNORE_INDEX
    for rou in text.split("</s>"):
        if rou == "":
            break
        parts = rou.split(" ASSISTANT: ")
        parts[0] += " ASSISTANT: "
        round_len = len(original_tokenize(rou, sp, specials))
        instr_len = len(original_tokenize(parts[0], sp, specials)) - 2
        labels[cur : cur + instr_len] = [IGNORE_INDEX] * instr_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
    assert cur == len(ids), "the original would have masked this whole sample"
    return ids, labels


CONVS = [
    [{"from": "human", "value": "What is the man doing?\n<video>"}, {"from": "gpt", "value": "He is riding bikes."}],
    [{"from": "human", "value": "<video>\nDescribe the video."}, {"from": "gpt", "value": "A red square moves left."}],
    [{"from": "human", "value": "日本語で説明して\n<video>"}, {"from": "gpt", "value": "Ça va, naïve café — 好的。"}],
    [
        {"from": "human", "value": "<video>\nWhat colour?"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the  shape ?"},
        {"from": "gpt", "value": "A circle,\nround."},
    ],
]


@pytest.mark.parametrize("conv", CONVS)
def test_ids_and_labels_match_the_original(tok, conv):
    hf, vids, enc, sp = tok
    specials = {"<vid_patch>": vids.patch, "<vid_start>": vids.start, "<vid_end>": vids.end, "</s>": 2}
    want_ids, want_labels = original_preprocess_v1(conv, sp, specials, N_VIDEO)
    got = render_sample(conv, enc, vids, N_VIDEO)
    assert got.input_ids == want_ids
    assert got.labels == want_labels
    assert got.num_video_spans == 1


def test_hand_computed_layout(tok):
    hf, vids, enc, sp = tok
    conv = CONVS[0]
    got = render_sample(conv, enc, vids, N_VIDEO)
    system = TEMPLATES["vicuna_v1_1"].system
    head = sp.encode(system + " USER: What is the man doing?")  # "\n" before <vid_start> is stripped
    tail_prompt = sp.encode("ASSISTANT:")  # the space after <vid_end> is stripped
    answer = sp.encode("ASSISTANT: He is riding bikes.")[len(tail_prompt) :]
    span = [vids.start] + [vids.patch] * N_VIDEO + [vids.end]
    assert got.input_ids == [1, *head, *span, *tail_prompt, *answer, 2]
    n_masked = 1 + len(head) + len(span) + len(tail_prompt)
    assert got.labels == [IGNORE_INDEX] * n_masked + answer + [2]
    # The supervised tokens decode to exactly the answer and </s>.
    assert hf.decode([x for x in got.labels if x != IGNORE_INDEX]) == "He is riding bikes.</s>"


def test_answer_ending_in_s_is_not_damaged(tok):
    hf, vids, enc, _ = tok
    got = render_sample(CONVS[0], enc, vids, N_VIDEO)
    assert hf.decode([x for x in got.labels if x not in (IGNORE_INDEX, 2)]).endswith("bikes.")


def test_truncation_and_span_cut(tok):
    _, vids, enc, _ = tok
    full = render_sample(CONVS[0], enc, vids, N_VIDEO)
    cut = render_sample(CONVS[0], enc, vids, N_VIDEO, max_length=len(full.input_ids) - 2)
    assert cut.truncated and cut.full_length == len(full.input_ids)
    assert cut.input_ids == full.input_ids[:-2] and cut.labels == full.labels[:-2]
    with pytest.raises(ValueError, match="cuts the video span"):
        render_sample(CONVS[0], enc, vids, N_VIDEO, max_length=20)


def test_inference_prompt(tok):
    _, vids, enc, sp = tok
    got = render_sample(inference_conversation("What colour?"), enc, vids, N_VIDEO, template="video-chatgpt_v1")
    system = TEMPLATES["video-chatgpt_v1"].system
    assert "language.Follow" in system
    span = [vids.start] + [vids.patch] * N_VIDEO + [vids.end]
    assert got.input_ids == [1, *sp.encode(system + " USER: What colour?"), *span, *sp.encode("ASSISTANT:")]
    assert all(x == IGNORE_INDEX for x in got.labels)


def test_bad_turns(tok):
    _, vids, enc, _ = tok
    with pytest.raises(ValueError, match="alternate"):
        render_sample([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], enc, vids, N_VIDEO)
    with pytest.raises(ValueError, match="'from' and 'value'"):
        render_sample([{"value": "a"}], enc, vids, N_VIDEO)
