"""The demo's handlers in-process (no server): the multi-turn prompt, the answer streamed through the engine, early
stop, the length limit and the conversation state."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import MAX_NEW_TOKENS, QUESTION


@pytest.fixture(scope="module")
def backend(trained_run, tiny_clip, tmp_path_factory):
    from video_chatgpt.inference.demo import DemoBackend, VideoLimits
    from video_chatgpt.inference.engine import load_engine

    engine = load_engine(trained_run, None, device="cpu", vision_tower=str(tiny_clip))
    return DemoBackend(engine, tmp_path_factory.mktemp("previews"), VideoLimits(seconds=10))


@pytest.fixture(scope="module")
def features(backend, demo_inputs) -> np.ndarray:
    return backend.engine.video_features(demo_inputs["video"])


def test_second_turn_is_rendered_after_the_first_as_the_original_demo(backend):
    """Original (video_demo.py / chat.py): ``q1 + "\\n<video>"`` in turn 1, ``{system} USER: q1 <span> ASSISTANT: a1</s>
    USER: q2 ASSISTANT:`` with ``</s>`` a special token: the turn-2 prompt is the turn-1 prompt, the answer, EOS, then
    the next question with the template's roles; one video span, in turn 1."""
    engine = backend.engine
    q1, a1, q2 = QUESTION, "The object is red.", "Which way does it move?"
    first = engine.prompt_ids(q1, 7)  # turn 1 is exactly what `video-chatgpt chat` renders
    second = engine.prompt_ids(q2, 7, history=((q1, a1),))
    assert second[: len(first)] == first
    tail = engine.encoder.encode(a1) + [engine.tokenizer.eos_token_id] + engine.encoder.encode(f"USER: {q2} ASSISTANT:")
    assert second[len(first) :] == tail
    assert second.count(engine.video_ids.patch) == 7 and second.count(engine.video_ids.start) == 1


def test_page_streams_the_engines_answer(backend, features):
    from video_chatgpt.inference.demo import Conversation

    state = Conversation(video="v.mp4", features=features, status="ok")
    shown = [messages[-1]["content"] for messages, *_ in backend.ask(QUESTION, state, 0, MAX_NEW_TOKENS)]
    expected = backend.engine.answer(QUESTION, features, temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    assert shown[-1] == expected and expected
    assert len(set(shown)) >= 2  # piece by piece, not one block
    assert all(expected.startswith(v) for v in shown)  # closing the stream stops it: test_serving.py


def test_ask_keeps_turns_and_refuses_a_conversation_longer_than_the_model(backend, features, monkeypatch):
    from video_chatgpt.inference.demo import Conversation

    state = Conversation(video="v.mp4", features=features, status="ok")
    *_, (messages, box, status, state) = backend.ask(QUESTION, state, 0, MAX_NEW_TOKENS)
    assert [m["role"] for m in messages] == ["user", "assistant"] and box == "" and status == "ok"
    assert state.turns[0][0] == QUESTION and state.turns[0][1] == messages[1]["content"]
    monkeypatch.setattr(backend.engine.model.config, "max_position_embeddings", features.shape[0])
    ((messages, box, status, after),) = backend.ask("And then?", state, 0, MAX_NEW_TOKENS)
    assert "the model reads at most" in status and "Clear chat" in status and after is state and box == "And then?"
    chat, box, status, cleared = backend.clear_chat(state)
    assert chat == [] and cleared.turns == () and cleared.features is features and status == "ok"
    ((messages, box, status, _),) = backend.ask("What is <video> here?", cleared, 0, MAX_NEW_TOKENS)
    assert "leave <video> out" in status


def test_a_question_before_a_video_keeps_the_question_and_says_what_to_do(backend):
    from video_chatgpt.inference.demo import NO_VIDEO, QUESTION_BEFORE_VIDEO, Conversation

    ((messages, box, status, state),) = backend.ask(QUESTION, Conversation(), 0, MAX_NEW_TOKENS)
    assert messages == [] and box == QUESTION and state == Conversation()
    assert QUESTION_BEFORE_VIDEO in status and NO_VIDEO not in status  # not the page's first line again


def test_each_video_and_answer_is_one_console_line(backend, demo_inputs, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="video_chatgpt.inference.demo"):
        *_, state = backend.choose_upload(str(demo_inputs["video"]))
        *_, (_, _, _, state) = backend.ask(QUESTION, state, 0, MAX_NEW_TOKENS)
    lines = [r.getMessage() for r in caplog.records if r.name == "video_chatgpt.inference.demo"]
    name = demo_inputs["video"].name
    assert len(lines) == 2 and lines[0].startswith(f"{name}: ") and "features in" in lines[0], lines
    assert lines[1].startswith(f"{name}: turn 1 answered"), lines
