"""The engine's one generation path: ``Engine.stream`` yields text pieces that join to ``Engine.answer``'s text (and to
the plain decode of what ``generate`` made), stops early on an event or when closed, renders multi-turn
conversations, keeps the answer inside the model's context, and seeds sampling without touching the global RNG."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from video_chatgpt.data.tokenizer import load_hf_tokenizer
from video_chatgpt.inference.engine import GENERATE_THREAD, Detokenizer, PromptTooLong, load_engine
from video_chatgpt.sample.models import CHAT_FAMILIES, train_chat_tokenizer

QUESTION = "What colour is the moving object in the video?"
# Byte-fallback characters, a newline before "▁The", and what a space clean-up joins (" n't", " .").
TRICKY = "ꙮ 𝔘x, wörld 😀 中文 I do n't know .\n The end ."


@pytest.fixture(scope="module")
def engine(tiny_llava):
    """The tiny base without a trained projector: what is checked is the generation path, not the answers."""
    return load_engine(tiny_llava, None, device="cpu")


@pytest.fixture(scope="module")
def features(engine) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((356, engine.model.config.mm_hidden_size)).astype(np.float16)  # 100 frames + 256


def generating_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == GENERATE_THREAD]


@pytest.fixture(scope="module", params=["sentencepiece", "byte_level"])
def tokenizer(request, tiny_llava):
    """LLaMA's kind (SentencePiece pieces, ``<0x..>`` byte fallback) or Llama-3's / Qwen2's (byte-level BPE)."""
    if request.param == "sentencepiece":
        return load_hf_tokenizer(tiny_llava)
    return train_chat_tokenizer(CHAT_FAMILIES["qwen2"])


def token_sequences(tokenizer) -> list[list[int]]:
    """The tricky text's ids, and random sequences drawn from byte tokens, words, punctuation and newlines."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    pieces = [i for i in vocab.values() if i not in special]
    # Byte tokens (<0xE4>) and pieces of characters (a byte-level token that decodes to "\ufffd" alone), often.
    partial = [i for t, i in vocab.items() if t.startswith("<0x") or "\ufffd" in tokenizer.decode([i])]
    words = [i for t in ("The end do n't .\n x, 中", " The", " end", " .") for i in tokenizer.encode(t)]
    rng = np.random.default_rng(0)
    pool = np.array(pieces + partial * 20 + words * 20)
    randoms = [rng.choice(pool, size=300).tolist() for _ in range(3)]
    return [tokenizer.encode(TRICKY, add_special_tokens=False), *randoms]


@pytest.mark.parametrize("hold_last_word", [False, True])
def test_pieces_join_to_the_decoded_answer_and_are_never_taken_back(tokenizer, hold_last_word, caplog):
    # A tokenizer that cleans up spaces ("do n't" -> "don't"; transformers does it for BPE only when forced) changes
    # text already decoded: its last word is held back.
    tokenizer.clean_up_tokenization_spaces = hold_last_word
    tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = hold_last_word
    tricky, *randoms = token_sequences(tokenizer)
    assert ("don't know." if hold_last_word else "do n't know .") in tokenizer.decode(tricky)
    for ids in [tricky, *randoms]:
        text = Detokenizer(tokenizer)
        with caplog.at_level(logging.WARNING):
            pieces = [text.add([i]) for i in [*ids, tokenizer.eos_token_id, *ids[:3]]]  # after </s>: not the answer
            pieces.append(text.finish())
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert not [r for r in caplog.records if r.name == "video_chatgpt.inference.engine"]  # nothing taken back
        assert len([p for p in pieces if p]) >= 5  # released as it comes, not at the end
        if ids is tricky:
            assert "\ufffd" not in "".join(pieces)  # half a character is never sent


def test_stream_joins_to_answer_and_to_the_generated_ids(engine, features):
    pieces = list(engine.stream(QUESTION, features, temperature=0, max_new_tokens=24))
    answer = engine.answer(QUESTION, features, temperature=0, max_new_tokens=24)
    assert "".join(pieces) == answer and len(pieces) >= 2 and all(pieces)
    # The same answer straight from generate: the streaming path adds and drops nothing.
    prompt = torch.tensor([engine.prompt_ids(QUESTION, features.shape[0])])
    with torch.no_grad():
        new = engine.model.generate_with_video(
            prompt,
            torch.from_numpy(features).unsqueeze(0),
            max_new_tokens=24,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=engine.tokenizer.eos_token_id,
            pad_token_id=engine.tokenizer.pad_token_id,
        )[0].tolist()
    if engine.tokenizer.eos_token_id in new:
        new = new[: new.index(engine.tokenizer.eos_token_id)]
    assert answer == engine.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_stop_event_and_closing_end_generation(engine, features):
    def tokens(text: str) -> int:
        return len(engine.tokenizer.encode(text, add_special_tokens=False))

    assert tokens(engine.answer(QUESTION, features, temperature=0, max_new_tokens=40)) > 1
    stop = threading.Event()
    stop.set()  # e.g. a server's client went away: generation ends after the token it is making
    assert tokens("".join(engine.stream(QUESTION, features, temperature=0, max_new_tokens=40, stop=stop))) <= 1
    assert not generating_threads()
    stream = engine.stream(QUESTION, features, temperature=1.0, max_new_tokens=1000)
    next(stream)
    stream.close()  # a web page that goes away
    assert not generating_threads()


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(engine, features):
    before = torch.random.get_rng_state()
    first = engine.answer(QUESTION, features, temperature=1.0, max_new_tokens=16, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert engine.answer(QUESTION, features, temperature=1.0, max_new_tokens=16, seed=7) == first


def test_a_later_turn_follows_the_first_and_the_context_limit_holds(engine, features, monkeypatch):
    first = engine.answer(QUESTION, features, temperature=0, max_new_tokens=8)
    history = ((QUESTION, first),)
    ids = engine.prompt_ids("Which way does it move?", features.shape[0], history)
    assert ids[: len(engine.prompt_ids(QUESTION, features.shape[0]))] == engine.prompt_ids(QUESTION, features.shape[0])
    assert ids.count(engine.video_ids.patch) == features.shape[0]  # one video span, in turn 1
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", len(ids) + 2)
    asked = []
    generate = engine.model.generate_with_video
    monkeypatch.setattr(engine.model, "generate_with_video", lambda *a, **k: asked.append(k) or generate(*a, **k))
    engine.answer("Which way does it move?", features, history=history, temperature=0, max_new_tokens=100)
    assert asked[0]["max_new_tokens"] == 2  # what fits in the context
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", len(ids))
    with pytest.raises(PromptTooLong, match=f"{len(ids)} tokens long; the model reads at most {len(ids)}"):
        engine.stream("Which way does it move?", features, history=history)
