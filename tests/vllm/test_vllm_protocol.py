"""The vLLM route over the wire, against a stand-in for vLLM on 127.0.0.1 (``tests/vllm/standin.py``): the
``prompt_embeds`` it receives are exactly our model's decoder input (``decoder_inputs``) for the prompt our engine
renders, and the exported LM's greedy answer on them is our engine's answer, streamed and not, for the document's
base and a chat base; vLLM's refusals, an unreachable server and bad features are one clear error each.

This is the protocol as vLLM's code reads it (``safe_load_prompt_embeds``: base64 of ``torch.save`` of a 2-D
tensor); it is not a running vLLM (no GPU here)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from tests.helpers import QUESTION, SECOND_QUESTION, free_port
from tests.vllm.standin import StandIn, load_prompt_embeds
from video_chatgpt.errors import UserError
from video_chatgpt.inference.engine import PromptTooLong, load_engine
from video_chatgpt.serve.vllm import VllmBackend, VllmError, completion_request, encode_prompt_embeds

MAX_NEW = 8


@pytest.fixture(scope="module")
def routes(run_and_export):
    """(engine on the run, stand-in vLLM on the exported folder, backend talking to it, video features)."""
    run, out = run_and_export
    engine = load_engine(run, device="cpu", dtype=torch.float32)
    n, width = engine.model.config.video_token_len, engine.model.config.mm_hidden_size
    features = np.random.default_rng(0).standard_normal((n, width)).astype(np.float16)
    with StandIn(out, api_key="sk-test") as standin:
        backend = VllmBackend(standin.url, "video-chatgpt", out, api_key="sk-test", timeout=120)
        yield engine, standin, backend, features
        backend.close()


@torch.no_grad()
def decoder_input(engine, ids: list[int], features: np.ndarray) -> torch.Tensor:
    return engine.model.decoder_inputs(torch.tensor([ids]), torch.from_numpy(features).unsqueeze(0))[0]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_vllm_receives_our_decoder_input_and_answers_as_our_model(routes, stream):
    engine, standin, backend, features = routes
    history = [(QUESTION, "It is red.")]
    for turns in ((), history):
        ids = engine.prompt_ids(SECOND_QUESTION if turns else QUESTION, features.shape[0], turns)
        question = SECOND_QUESTION if turns else QUESTION
        assert backend.prompt_ids(question, features.shape[0], turns) == ids  # the engine's prompt, same template

        sent = len(standin.received)
        settings = dict(history=turns, temperature=0.0, max_new_tokens=MAX_NEW)
        if stream:
            pieces = backend.stream(question, features, **settings)
            got = list(pieces)
            text, usage = "".join(got), pieces.usage
            assert len(got) >= 1 and pieces.finish_reason in ("stop", "length")
        else:
            text, usage = backend.complete(question, features, **settings)
        assert len(standin.received) == sent + 1
        received = standin.received[-1]
        expected = decoder_input(engine, ids, features)
        assert received.dtype == torch.float32 and received.shape == expected.shape
        assert torch.equal(received, expected)  # bit for bit: the video rows and every token row
        answer = engine.answer(question, features, temperature=0.0, max_new_tokens=MAX_NEW, history=turns)
        assert text.strip() == answer and answer
        assert usage.prompt_tokens == len(ids) and 1 <= usage.completion_tokens <= MAX_NEW

    body = standin.log[-1]["body"]
    assert "prompt" not in body and body["model"] == "video-chatgpt" and body["max_tokens"] == MAX_NEW
    assert body.get("stream", False) is stream
    assert standin.log[-1]["headers"]["Authorization"] == "Bearer sk-test"


def test_sampling_settings_and_stop_reach_vllm(routes):
    _, standin, backend, features = routes
    full, _ = backend.complete(QUESTION, features, temperature=0.0, max_new_tokens=MAX_NEW)
    word = full.split()[1] if len(full.split()) > 1 else full.split()[0]
    cut, _ = backend.complete(QUESTION, features, temperature=0.0, max_new_tokens=MAX_NEW, stop=[word])
    assert word not in cut and full.startswith(cut.rstrip())
    runs = [
        backend.complete(QUESTION, features, temperature=0.9, top_p=0.8, seed=s, max_new_tokens=4)[0] for s in (3, 3)
    ]
    assert runs[0] == runs[1]
    body = standin.log[-1]["body"]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.9, 0.8, 3, 4)


def test_errors_are_one_clear_line_each(routes, run_and_export):
    engine, standin, backend, features = routes
    _, out = run_and_export
    sent = len(standin.log)
    with pytest.raises(UserError, match=r"video features have shape \(3, 5\); expected \(tokens,"):
        backend.complete(QUESTION, features[:3, :5])
    with pytest.raises(UserError, match="rows \\(video tokens\\) but the model was trained with"):
        backend.complete(QUESTION, features[:-1])
    with pytest.raises(PromptTooLong):
        backend.complete(QUESTION * 400, features)
    assert len(standin.log) == sent  # refused before any request

    wrong_key = VllmBackend(standin.url, "video-chatgpt", out, api_key="sk-wrong", timeout=30)
    for call in (wrong_key.complete, wrong_key.stream):
        with pytest.raises(VllmError, match="vLLM answered 401: Unauthorized") as caught:
            call(QUESTION, features, max_new_tokens=2)
        assert caught.value.status == 401 and "sk-wrong" not in str(caught.value)
    unknown = VllmBackend(standin.url, "no-such-model", out, api_key="sk-test", timeout=30)
    with pytest.raises(VllmError, match="does not exist") as caught:
        unknown.complete(QUESTION, features, max_new_tokens=2)
    assert caught.value.status == 404
    nobody = VllmBackend(f"http://127.0.0.1:{free_port()}", "video-chatgpt", out, timeout=10)
    for call in (nobody.complete, nobody.stream):
        with pytest.raises(VllmError, match="^vLLM: ") as caught:
            call(QUESTION, features, max_new_tokens=2)
        assert caught.value.status == 502
    with pytest.raises(UserError, match="expected an http\\(s\\) URL"):
        VllmBackend("127.0.0.1:8000", "video-chatgpt", out)
    with pytest.raises(UserError, match="no video_chatgpt_export.json"):
        VllmBackend(standin.url, "video-chatgpt", out.parent)  # the folder above: not an export


def test_the_wire_format_is_what_vllm_decodes():
    """base64 of torch.save of one 2-D tensor; vLLM's reading (strict base64, weights_only) gives it back exactly;
    anything but a 2-D float tensor is refused before sending; the stand-in refuses what vLLM refuses."""
    embeds = torch.randn(7, 16, dtype=torch.float16)
    text = encode_prompt_embeds(embeds[2:])  # a view: only its own rows travel
    back = torch.load(io.BytesIO(base64.b64decode(text, validate=True)), weights_only=True)
    assert back.dtype == torch.float16 and torch.equal(back, embeds[2:])
    assert back.untyped_storage().nbytes() == 5 * 16 * 2  # not the 7 rows of the storage it is a view of
    assert torch.equal(load_prompt_embeds(text, 16), embeds[2:])
    for bad in (torch.randn(1, 5, 16), torch.ones(5, 16, dtype=torch.long), [[0.0] * 16]):
        with pytest.raises(ValueError, match="one 2-D float tensor"):
            encode_prompt_embeds(bad)
    with pytest.raises(ValueError, match="hidden_size 16 does not match the model's 32"):
        load_prompt_embeds(text, 32)
    with pytest.raises(ValueError, match="not base64"):
        load_prompt_embeds(text[:-3] + "!!!", 16)
    body = completion_request("m", embeds, max_tokens=5, temperature=0.0, seed=1, stop=["###"], stream=True)
    assert set(body) == {"model", "prompt_embeds", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
                         "stream_options"}  # fmt: skip
    assert body["stream_options"] == {"include_usage": True} and body["stop"] == ["###"]
    assert "seed" not in completion_request("m", embeds, max_tokens=5) and "stream" not in completion_request(
        "m", embeds, max_tokens=5
    )


class _Stalling(BaseHTTPRequestHandler):
    """Answers a stream with its headers and one chunk, then says nothing more (a stuck vLLM)."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "text": "It", "finish_reason": None}]}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.flush()
        time.sleep(6)


def test_a_stuck_stream_ends_at_the_timeout(routes, run_and_export):
    """Every request is bounded in total: a stream that stops sending raises VllmError 504 after ``timeout``."""
    _, _, _, features = routes
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = VllmBackend(f"http://127.0.0.1:{server.server_address[1]}", "m", run_and_export[1], timeout=1.0)
        start = time.monotonic()
        stream = backend.stream(QUESTION, features, max_new_tokens=4)
        pieces = []
        with pytest.raises(VllmError, match="no complete reply within 1 s") as caught:
            for piece in stream:
                pieces.append(piece)
        assert pieces == ["It"] and caught.value.status == 504 and time.monotonic() - start < 4
    finally:
        server.shutdown()
        server.server_close()
