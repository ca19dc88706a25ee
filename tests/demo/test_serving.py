"""How the demo serves its one model (issue 23, item 11): closing a request's stream stops the generation, and
requests are queued so that the model serves one at a time.

The model is a projector run of one step on the tiny LLaVA (a random language model: its greedy answers fill the
token budget, so an uninterrupted control is long), trained once per module."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.helpers import QUESTION, free_port
from tests.helpers.data import make_training_data
from tests.helpers.train import TINY, train_paths
from video_chatgpt.inference.demo import Conversation, DemoBackend, build_app, queue_requests
from video_chatgpt.inference.engine import GENERATE_THREAD, load_engine

BUDGET = 120  # new tokens a request may ask for; the control's greedy answer fills it


@pytest.fixture(scope="module")
def engine(tmp_path_factory, sample_world, tiny_llava, tiny_clip):
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("serving")
    data = make_training_data(sample_world["instructions"], tiny_llava, root / "data")
    out = root / "run"
    train([*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "1", "--save_strategy", "no"])
    return load_engine(out, None, device="cpu", vision_tower=str(tiny_clip))


@pytest.fixture(scope="module")
def state(engine) -> Conversation:
    width = engine.model.config.mm_hidden_size
    features = np.random.default_rng(0).standard_normal((engine.extractor.num_tokens, width)).astype(np.float16)
    return Conversation(video="v.mp4", features=features, status="ok")


class CountedSteps:
    """Counts the model's generation steps: one call of its output layer (the LM head) per new token."""

    def __init__(self, model):
        self.count = 0
        self._handle = model.get_output_embeddings().register_forward_hook(self._step)

    def _step(self, *_args) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def test_closing_the_stream_stops_generation(engine, state, tmp_path):
    """gradio closes ``ask``'s iterator when the page goes away or "Clear chat" cancels the request: the model
    takes (next to) no step after that, where the uninterrupted control, the same greedy request, takes ~100."""
    backend = DemoBackend(engine, tmp_path)
    steps = CountedSteps(engine.model)
    try:
        control = backend.ask(QUESTION, state, 0, BUDGET)
        next(control)
        at_first_piece = steps.count
        for _ in control:
            pass
        control_after = steps.count - at_first_piece
        steps.count = 0
        asking = backend.ask(QUESTION, state, 0, BUDGET)
        next(asking)
        at_close = steps.count
        asking.close()  # returns once the generation thread has ended
        after_close = steps.count - at_close
    finally:
        steps.close()
    assert not [t for t in threading.enumerate() if t.name == GENERATE_THREAD]
    assert control_after >= BUDGET // 2, f"the control took only {control_after} more steps: too short to tell"
    assert after_close <= 3, f"{after_close} steps after the stream was closed (the control took {control_after})"


class TimedEngine:
    """The engine, with each stream's start and end recorded (``spans``) and its pieces slowed a little, so that two
    requests served at the same time would overlap."""

    def __init__(self, engine):
        self.engine = engine
        self.spans: list[tuple[float, float]] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, *args, **kwargs):
        pieces = self.engine.stream(*args, **kwargs)

        def timed():
            start = time.monotonic()
            try:
                for piece in pieces:
                    time.sleep(0.02)
                    yield piece
            finally:
                pieces.close()
                self.spans.append((start, time.monotonic()))

        return timed()


def test_requests_are_queued_and_the_model_serves_one_at_a_time(engine, sample_world, tmp_path):
    """The page as ``video-chatgpt demo`` serves it (``build_app`` + ``queue_requests``), in-process on a free
    127.0.0.1 port: two sessions ask at the same moment; the second answer starts after the first one ended."""
    from gradio_client import Client, handle_file

    timed = TimedEngine(engine)
    app = build_app(DemoBackend(timed, tmp_path), "test", 0.0, 32)
    queue_requests(app, max_queue=8)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2)]
        video = sorted(sample_world["videos_test"].glob("*.mp4"))[0]
        for client in clients:
            client.predict(handle_file(str(video)), api_name="/upload_video")
        jobs = [client.submit(QUESTION, 0, 32, api_name="/ask") for client in clients]
        chats = [job.result(timeout=120)[0] for job in jobs]
    finally:
        app.close()
    assert all(len(chat) == 2 for chat in chats)  # both sessions were answered
    assert len(timed.spans) == 2, timed.spans
    (first_start, first_end), (second_start, _) = sorted(timed.spans)
    assert first_end - first_start > 0.3  # long enough that a second request served at once would overlap it
    assert second_start >= first_end, f"the two answers were generated at the same time: {timed.spans}"
