"""The API server tests' constants and clients: the official ``openai`` client with bounded timeouts, a message with
one video, and a server run in this process (uvicorn in a thread) for the tests that need to look inside it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO, free_port

API_KEY_ENV = "VCG_SERVE_TEST_KEY"
API_KEY = "sk-test-4f1e9c0b7a2d"  # must never appear in the server's output
MAX_VIDEO_SECONDS = 10.0  # the sample videos are 2.4-6.4 s
MAX_REQUEST_MB = 1.0  # a 2 MB body is "huge"
MAX_NEW_TOKENS = 16
TIMEOUT_S = 120.0  # per request (2 busy cores)
SERVER_START_S = 180  # bounded wait for the server (model + tower on 2 busy cores)


def client(url: str, api_key: str = API_KEY):
    """The official OpenAI client on the server, no retries, bounded timeout."""
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=TIMEOUT_S, max_retries=0)


def video_message(question: str, url: str, kind: str = "video_url") -> dict:
    """A user message: the question and one video part (``video_url`` or ``video_features``)."""
    return {"role": "user", "content": [{"type": "text", "text": question}, {"type": kind, kind: {"url": url}}]}


def rel(path: Path, root: Path) -> str:
    """``path`` as the server's clients name it: relative to the allowed folder."""
    return str(path.relative_to(root))


class ThreadServer:
    """``create_app(Server(...))`` served by uvicorn on a free 127.0.0.1 port in a thread of this process."""

    def __init__(self, server, port: int):
        import uvicorn

        from video_chatgpt.serve.app import create_app

        self.server = server
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=30)
        self.server.backend.close()


@contextlib.contextmanager
def serve_process(flags: list[str], log: Path, env: dict | None = None) -> Iterator[dict]:
    """``video-chatgpt serve FLAGS --port <free>`` in a subprocess, its whole output in ``log``; yields
    ``{"url", "log", "process"}`` once ``/health`` answers; stopped on exit."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
    cmd = [sys.executable, "-m", "video_chatgpt.cli", "serve", *flags, "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log, "process": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
