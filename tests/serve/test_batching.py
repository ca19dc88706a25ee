"""Batching: parallel clients share forward passes and each gets the answer its request gets alone (greedy), over
real HTTP with the official client; a full queue is refused with 503 and the server goes on.

The session's trained run answers nearly every question alike ("The video shows a dark background."), which would
hide a mix-up between batch rows. Here its matrices are scaled by 4 in memory: the same model code, but answers that
depend on the question, the conversation and the features, so a row that read another row's prompt, padding or
video would show."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from tests.helpers import QUESTION, SECOND_QUESTION, free_port
from tests.helpers.serve import MAX_NEW_TOKENS, ThreadServer, client, video_message
from video_chatgpt.inference.engine import load_engine
from video_chatgpt.serve.app import Server
from video_chatgpt.serve.batching import Done, Job, LocalBackend, Piece

MODEL = "sensitive"
QUESTIONS = [QUESTION, SECOND_QUESTION, "Describe the video.", "What shape is it? Answer in a few words."]


@pytest.fixture(scope="module")
def sensitive(trained_run, tiny_clip):
    engine = load_engine(trained_run, None, device="cpu", vision_tower=str(tiny_clip))
    with torch.no_grad():
        for param in engine.model.parameters():
            if param.ndim == 2:
                param.mul_(4)
    return engine


@pytest.fixture(scope="module")
def feature_files(sensitive, tmp_path_factory) -> list:
    """Four random feature files of the model's shape, in an allowed folder."""
    folder = tmp_path_factory.mktemp("serve_features")
    shape = (sensitive.model.config.video_token_len, sensitive.model.config.mm_hidden_size)
    paths = []
    for seed in range(4):
        path = folder / f"f{seed}.npy"
        np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float16))
        paths.append(path)
    return paths


def cases(feature_files) -> list[tuple[str, list, int]]:
    """(question, history, feature index): prompts of different lengths, so a batch is left-padded."""
    out = []
    for k in range(8):
        history = [("Describe the video.", "A shape moves.")] * (k % 3)
        out.append((QUESTIONS[k % len(QUESTIONS)], history, k % len(feature_files)))
    return out


def messages_of(question, history, path) -> list[dict]:
    if not history:
        return [video_message(question, path.name, kind="video_features")]
    messages = [video_message(history[0][0], path.name, kind="video_features")]
    for k, (q, a) in enumerate(history):
        messages += ([{"role": "user", "content": q}] if k else []) + [{"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}]


class _Logits(LogitsProcessor):
    """Records each step's (B, V) scores, changing nothing."""

    def __init__(self):
        self.steps = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


def test_padded_rows_compute_what_they_compute_alone(sensitive, feature_files):
    """``Engine.generate_batch`` over prompts of different lengths (left-padded): every row's next-token scores at
    every step are the ones it gets alone (the attention mask hides the padding, the position ids start at each
    row's first real token). Greedy answers alone would hide a wrong mask on this tiny model."""
    engine = sensitive
    prompts = [engine.prepare(q, np.load(feature_files[i]), h)[:2] for q, h, i in cases(feature_files)[:4]]
    assert len({len(ids) for ids, _ in prompts}) > 1

    def scores(batch) -> list[torch.Tensor]:
        recorder = _Logits()
        engine.generate_batch(
            batch,
            streamer=None,
            stopping_criteria=StoppingCriteriaList(),
            max_new_tokens=3,
            logits_processor=LogitsProcessorList([recorder]),
        )
        return recorder.steps

    together = scores(prompts)
    for row, prompt in enumerate(prompts):
        alone = scores([prompt])
        for step, single in enumerate(alone):
            torch.testing.assert_close(together[step][row], single[0], atol=1e-4, rtol=1e-4)


def test_batched_rows_equal_their_unbatched_answers(sensitive, feature_files):
    """The batcher without HTTP: eight jobs submitted together run in shared batches; each row's text, finish
    reason and token counts are those of ``Engine.answer`` alone."""
    engine, feats = sensitive, [np.load(p) for p in feature_files]
    expected = [
        engine.answer(q, feats[i], temperature=0, max_new_tokens=MAX_NEW_TOKENS, history=h)
        for q, h, i in cases(feature_files)
    ]
    assert len(set(expected)) >= 3, expected  # the rows differ: a mix-up would show
    backend = LocalBackend(engine, max_batch_size=8, max_queue=8)
    results = [([], []) for _ in expected]
    finished = [threading.Event() for _ in expected]
    try:
        for k, (q, h, i) in enumerate(cases(feature_files)):
            ids, features, _ = engine.prepare(q, feats[i], h)

            def emit(event, k=k):
                results[k][0 if isinstance(event, Piece) else 1].append(event)
                if not isinstance(event, Piece):
                    finished[k].set()

            backend.submit(Job(ids, features, MAX_NEW_TOKENS, emit))
        assert all(event.wait(300) for event in finished)
        lengths = {len(engine.prompt_ids(q, feats[i].shape[0], h)) for q, h, i in cases(feature_files)}
        assert len(lengths) > 1  # prompts of different lengths: the batches were padded
        assert ["".join(p.text for p in pieces) for pieces, _ in results] == expected
        assert all(isinstance(done[0], Done) and done[0].completion_tokens >= 1 for _, done in results)
        assert backend.load()["largest_batch"] > 1
    finally:
        backend.close()


def test_parallel_clients_each_get_their_own_answer(sensitive, feature_files):
    """Eight clients at once through the official client: each reply is the unbatched answer to its own request,
    and the server batched them (fewer batches than requests)."""
    engine, feats = sensitive, [np.load(p) for p in feature_files]
    expected = [
        engine.answer(q, feats[i], temperature=0, max_new_tokens=MAX_NEW_TOKENS, history=h)
        for q, h, i in cases(feature_files)
    ]
    server = Server(LocalBackend(engine, max_batch_size=8, max_queue=16), MODEL, feature_files[0].parent)
    with ThreadServer(server, free_port()) as running:

        def one(case):
            question, history, i = case
            reply = client(running.url).chat.completions.create(
                model=MODEL,
                messages=messages_of(question, history, feature_files[i]),
                temperature=0,
                max_tokens=MAX_NEW_TOKENS,
            )
            return reply.choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, cases(feature_files), timeout=300))
        load = server.backend.load()
    assert got == expected
    assert load["requests"] == 8 and load["batches"] < 8


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return json.loads(response.read())


def wait_until(check, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_full_queue_is_refused_with_503(tiny_llava, feature_files):
    """One request generating, one waiting (``--max_queue 1``, batches of 1): the next is refused with 503 in
    OpenAI's error shape; once the long one is closed by its client (its generation stops), the waiting one and a
    new one are answered. The model is the untrained sample base: sampled at temperature 2 its next token is nearly
    uniform over 32K, so the long answer does not end by itself (``</s>`` is 1 in 32K)."""
    from openai import APIStatusError

    untrained = load_engine(tiny_llava, None, device="cpu")
    server = Server(LocalBackend(untrained, max_batch_size=1, max_queue=1), MODEL, feature_files[0].parent)
    message = [video_message(QUESTION, feature_files[0].name, kind="video_features")]
    with ThreadServer(server, free_port()) as running:
        api = client(running.url)
        # A long sampled answer (high temperature: </s> is unlikely), streamed, read one chunk at a time.
        long = api.chat.completions.create(model=MODEL, messages=message, temperature=2.0, max_tokens=1500, stream=True)
        next(iter(long))
        wait_until(lambda: health(running.url)["running"] == 1)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                api.chat.completions.create, model=MODEL, messages=message, temperature=0, max_tokens=4
            )
            wait_until(lambda: health(running.url)["waiting"] == 1)
            with pytest.raises(APIStatusError) as refused:
                api.chat.completions.create(model=MODEL, messages=message, temperature=0, max_tokens=4)
            assert refused.value.status_code == 503
            assert refused.value.body["code"] == "queue_full" and "--max_queue 1" in refused.value.body["message"]
            long.close()  # the client goes away: its generation stops, the waiting request runs
            assert waiting.result(timeout=120).choices[0].finish_reason in ("stop", "length")
        reply = api.chat.completions.create(model=MODEL, messages=message, temperature=0, max_tokens=4)
        assert reply.choices[0].message.content
        assert health(running.url)["waiting"] == 0
