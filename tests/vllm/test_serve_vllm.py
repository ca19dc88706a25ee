"""``serve --backend vllm``: the OpenAI API of ``serve`` in front of vLLM (here its stand-in on 127.0.0.1). A client's
request becomes a Completions request with our model's exact decoder input as ``prompt_embeds``; the answer, streamed
and not, is our engine's; vLLM's refusals come back as errors and the server goes on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import QUESTION, free_port
from tests.helpers.serve import ThreadServer, client, video_message
from tests.vllm.standin import StandIn
from video_chatgpt.cli import main
from video_chatgpt.features.store import save_features
from video_chatgpt.inference.engine import load_engine
from video_chatgpt.serve.app import Server
from video_chatgpt.serve.vllm import VllmBackend, VllmServeBackend

MAX_NEW = 8


@pytest.fixture(scope="module")
def served(run_and_export, tmp_path_factory):
    """(our engine on the run, the stand-in vLLM on its export, our server in front of it, the feature file)."""
    run, out = run_and_export
    engine = load_engine(run, device="cpu", dtype=torch.float32)
    n, width = engine.model.config.video_token_len, engine.model.config.mm_hidden_size
    media = tmp_path_factory.mktemp("media")
    features = np.random.default_rng(1).standard_normal((n, width)).astype(np.float16)
    save_features(media / "v_feat.pkl", features)
    with StandIn(out) as standin:
        backend = VllmServeBackend(VllmBackend(standin.url, "video-chatgpt", out, timeout=120), max_running=2)
        server = Server(backend, "video-chatgpt", media, api_key=None)
        with ThreadServer(server, free_port()) as api:
            yield engine, standin, api, features


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_api_request_reaches_vllm_as_our_decoder_input_and_answers_as_our_model(served, stream):
    engine, standin, api, features = served
    messages = [video_message(QUESTION, "v_feat.pkl", kind="video_features")]
    api_client = client(api.url, api_key="unused")
    sent = len(standin.received)
    if stream:
        chunks = api_client.chat.completions.create(
            model="video-chatgpt", messages=messages, temperature=0, max_tokens=MAX_NEW, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = api_client.chat.completions.create(model="video-chatgpt", messages=messages, temperature=0,
                                                   max_tokens=MAX_NEW)  # fmt: skip
        text = reply.choices[0].message.content
        ids = engine.prompt_ids(QUESTION, features.shape[0])
        assert reply.usage.prompt_tokens == len(ids) and 1 <= reply.usage.completion_tokens <= MAX_NEW
    assert len(standin.received) == sent + 1
    ids = engine.prompt_ids(QUESTION, features.shape[0])
    with torch.no_grad():
        expected = engine.model.decoder_inputs(torch.tensor([ids]), torch.from_numpy(features).unsqueeze(0))[0]
    assert torch.equal(standin.received[-1], expected)  # bit for bit, through the API
    answer = engine.answer(QUESTION, features, temperature=0.0, max_new_tokens=MAX_NEW)
    assert text.strip() == answer and answer


def test_the_vllm_backend_needs_its_url(tmp_path, capsys):
    assert main(["serve", "--backend", "vllm", "--model_name_or_path", str(tmp_path)]) == 1
    assert "--backend vllm needs --vllm_url" in capsys.readouterr().err
