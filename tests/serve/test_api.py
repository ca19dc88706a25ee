"""``video-chatgpt serve`` through the official ``openai`` client over real HTTP: the answers are the model's own
(``Engine.answer`` unbatched, greedy), streamed or not, from every kind of video source, in multi-turn
conversations, with ``stop``/``max_tokens``/``seed`` and usage counts; parallel clients share batches and each gets
its own answer."""

from __future__ import annotations

import base64
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.helpers import QUESTION, SECOND_QUESTION
from tests.helpers.serve import MAX_NEW_TOKENS, client, rel, video_message


def model_name(server) -> str:
    return client(server["url"]).models.list().data[0].id


def ask(server, messages, **kwargs):
    return client(server["url"]).chat.completions.create(
        model=model_name(server), messages=messages, temperature=0, max_tokens=MAX_NEW_TOKENS, **kwargs
    )


def health(server) -> dict:
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as response:
        return json.loads(response.read())


def test_models_and_health(server, trained_run):
    models = client(server["url"]).models.list()
    assert [m.id for m in models.data] == [trained_run.name]
    state = health(server)
    assert state["status"] == "ok" and state["model"] == trained_run.name and state["backend"] == "local"


def test_answer_is_the_models_own(server, media, engine, features_of):
    """Greedy, not streamed: the text is ``Engine.answer``'s; usage counts the prompt (video tokens included) and
    the generated tokens."""
    video = media["videos"][0]
    expected = engine.answer(QUESTION, features_of(video), temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    reply = ask(server, [video_message(QUESTION, rel(video, media["root"]))])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    prompt = engine.prompt_ids(QUESTION, features_of(video).shape[0])
    assert reply.usage.prompt_tokens == len(prompt)
    assert 1 <= reply.usage.completion_tokens <= MAX_NEW_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert (reply.choices[0].finish_reason == "length") == (reply.usage.completion_tokens == MAX_NEW_TOKENS)


def test_streamed_answer(server, media, engine, features_of):
    """``stream: true``: server-sent chunks whose text joined is the same answer; the role first, the finish
    reason last, then the usage chunk (``include_usage``)."""
    video = media["videos"][1]
    expected = engine.answer(QUESTION, features_of(video), temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    chunks = list(
        ask(
            server,
            [video_message(QUESTION, f"file://{video}")],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # streamed, not one piece
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_raw_stream_ends_with_done(server, media, trained_run):
    """The wire format itself: ``data: {...}`` events and a last ``data: [DONE]``."""
    body = {
        "model": trained_run.name,
        "messages": [video_message(QUESTION, rel(media["videos"][0], media["root"]))],
        "stream": True,
        "max_tokens": 4,
        "temperature": 0,
    }
    from tests.helpers.serve import API_KEY

    request = urllib.request.Request(
        server["url"] + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("source", ["inline", "features"])
def test_other_video_sources(server, media, engine, features_of, source):
    """The same video inline (``data:video/mp4;base64,...``) or as a precomputed feature file (the
    ``video_features`` part) gives the same answer as by path."""
    video = media["videos"][2]
    features = features_of(video)
    expected = engine.answer(QUESTION, features, temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    if source == "inline":
        url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
        message = video_message(QUESTION, url)
    else:
        path = media["root"] / "features" / f"{video.stem}.npy"
        np.save(path, features)
        message = video_message(QUESTION, rel(path, media["root"]), kind="video_features")
    assert ask(server, [message]).choices[0].message.content == expected


def test_multi_turn(server, media, engine, features_of):
    """A conversation: earlier turns rendered in the model's template with the video after the first question."""
    video = media["videos"][0]
    features = features_of(video)
    first = engine.answer(QUESTION, features, temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    expected = engine.answer(
        SECOND_QUESTION, features, temperature=0, max_new_tokens=MAX_NEW_TOKENS, history=[(QUESTION, first)]
    )
    messages = [
        {"role": "system", "content": "You are helpful."},  # accepted, ignored (the template has its own)
        video_message(QUESTION, rel(video, media["root"])),
        {"role": "assistant", "content": first},
        {"role": "user", "content": SECOND_QUESTION},
    ]
    assert ask(server, messages).choices[0].message.content == expected


def test_max_tokens_stop_and_seed(server, media, engine, features_of):
    video = media["videos"][0]
    message = video_message(QUESTION, rel(video, media["root"]))
    expected = engine.answer(QUESTION, features_of(video), temperature=0, max_new_tokens=MAX_NEW_TOKENS)
    reply = client(server["url"]).chat.completions.create(
        model=model_name(server), messages=[message], temperature=0, max_completion_tokens=3
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert expected.startswith(reply.choices[0].message.content)
    # A stop string: the answer up to it, without it.
    words = expected.split()
    assert len(words) > 1, expected
    reply = ask(server, [message], stop=[words[1], "@@never@@"])
    assert reply.choices[0].message.content == expected[: expected.index(words[1])]
    assert reply.choices[0].finish_reason == "stop"
    # Sampling with a seed is repeatable.
    sampled = [
        client(server["url"])
        .chat.completions.create(
            model=model_name(server), messages=[message], temperature=1.0, top_p=0.9, seed=7, max_tokens=8
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_parallel_clients_each_get_their_own_answer(server, media, engine, features_of):
    """Eight clients at once, about four different held-out videos with questions (and histories) of different
    lengths, so the batch is left-padded: each reply is the answer its request gets alone, and the server did batch
    them. (``test_batching`` does the same on a model whose answers differ between the requests.)"""
    videos = media["videos"][:4]
    cases = []
    for k in range(8):
        video, url = videos[k % len(videos)], rel(videos[k % len(videos)], media["root"])
        question = QUESTION if k < 4 else SECOND_QUESTION + " Answer briefly." * (k - 3)
        if k % 3:
            messages, history = [video_message(question, url)], []
        else:
            history = [("Describe the video.", "A shape moves.")]
            messages = [
                video_message(history[0][0], url),
                {"role": "assistant", "content": history[0][1]},
                {"role": "user", "content": question},
            ]
        expected = engine.answer(
            question, features_of(video), temperature=0, max_new_tokens=MAX_NEW_TOKENS, history=history
        )
        cases.append((messages, expected))
    before = health(server)

    def one(case):
        return ask(server, case[0]).choices[0].message.content

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(one, cases, timeout=300))
    assert got == [expected for _, expected in cases]
    after = health(server)
    assert after["requests"] - before["requests"] == len(cases)
    assert after["batches"] - before["batches"] < len(cases)  # some requests shared a forward pass
