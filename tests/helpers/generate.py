"""Scripted VLM and LLM servers for ``data generate``'s tests: real HTTP on 127.0.0.1, replies computed from the request.

* ``vlm_caption(body)``: decodes the image of the request's ``image_url`` data URL and names its dominant colour (the
  mean of the bright pixels, nearest of the sample world's colours): "A red shape on a dark background."
* ``llm_reply(body)``: a description request (the prompt lists ``Frame captions:``) is answered with a description
  built from the colour the captions name; a QA request (``Video description:``) with a JSON list of pairs about the
  colour the description names, for the kind the prompt asks (the sample world's sentences, so that a model trained
  on them answers as the sample's quickstart model does).

``ModelServer(respond)`` serves ``POST /v1/chat/completions``: ``respond(n, key, body)`` gets the request number,
the request's key (the sha256 of its messages: one key per distinct request) and the JSON body, and returns a
``Reply``. Every request is logged, so tests count them per key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import numpy as np
from PIL import Image

from tests.helpers.local_server import LocalServer
from video_chatgpt.data.generate import KINDS, load_prompts
from video_chatgpt.sample.videos import COLOURS
from video_chatgpt.sample.world import COLOUR_QUESTIONS, colour_answer


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    block: threading.Event | None = None  # wait for it before answering (a request left in flight)


def request_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content if part.get("type") == "text")
    return content


def dominant_colour(body: dict) -> str | None:
    """The sample colour nearest to the mean of the image's bright pixels (None for a dark or missing image)."""
    parts = body["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
    if not urls:
        return None
    data = base64.b64decode(urls[0].split(",", 1)[1])
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).reshape(-1, 3)
    bright = pixels[pixels.max(axis=1) > 120]
    if len(bright) == 0:
        return None
    mean = bright.mean(axis=0)
    return min(COLOURS, key=lambda name: float(((np.array(COLOURS[name]) - mean) ** 2).sum()))


def vlm_caption(body: dict) -> str:
    colour = dominant_colour(body)
    return f"A {colour} shape on a dark background." if colour else "A dark, empty frame."


def _colour_in(text: str) -> str | None:
    counts = Counter(w for w in re.findall(r"[a-z]+", text.lower()) if w in COLOURS)
    return counts.most_common(1)[0][0] if counts else None


_PROMPTS = load_prompts()


def qa_kind(text: str) -> str | None:
    """The kind a QA prompt asks for: the kind whose task text it holds."""
    return next((k for k in KINDS if _PROMPTS[f"qa_{k}"].strip() in text), None)


def qa_pairs(kind: str, colour: str) -> list[dict]:
    answer = colour_answer(colour)
    return {
        "summary": [
            {"q": "Describe what happens in the video.", "a": f"A {colour} shape moves across a dark background."}
        ],
        "descriptive": [{"q": COLOUR_QUESTIONS[0], "a": answer}, {"q": "What is in the video?", "a": answer}],
        "temporal": [{"q": "Does the colour of the object change over time?", "a": f"No, it stays {colour}."}],
        "spatial": [{"q": "What is the background like around the object?", "a": "The background is dark."}],
        "reasoning": [{"q": "Why is the object easy to see?", "a": f"It is {colour} on a dark background."}],
        "consistency": [{"q": COLOUR_QUESTIONS[1], "q2": COLOUR_QUESTIONS[2], "a": answer}],
    }[kind]


def llm_reply(body: dict) -> str:
    text = user_text(body)
    if "Frame captions:" in text:
        captions = text.split("Frame captions:", 1)[1]
        colour = _colour_in(captions)
        return f"A {colour} object moves across a dark background; it stays {colour} the whole time."
    if "Video description:" in text:
        description = text.split("Video description:", 1)[1].split("\n\n", 1)[0]
        kind = qa_kind(text)
        return "```json\n" + json.dumps(qa_pairs(kind, _colour_in(description))) + "\n```"
    return "I do not know this request."


def vlm(n: int, key: str, body: dict) -> Reply:
    return Reply(vlm_caption(body))


def llm(n: int, key: str, body: dict) -> Reply:
    return Reply(llm_reply(body))


@dataclass
class Logged:
    time: float
    key: str
    body: dict


class ModelServer(LocalServer):
    def __init__(self, respond=None) -> None:
        self.respond = respond
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                key = request_key(body)
                with server._lock:
                    n = len(server.log)
                    server.log.append(Logged(time.monotonic(), key, body))
                reply = server.respond(n, key, body)
                if reply.block is not None:
                    reply.block.wait(60)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    data = json.dumps({"error": {"message": f"scripted {reply.status}"}}).encode()
                else:
                    message = {"role": "assistant", "content": reply.content}
                    data = json.dumps({"model": body.get("model"), "choices": [{"message": message}]}).encode()
                head = [f"HTTP/1.1 {reply.status} Scripted", "Content-Type: application/json"]
                head += [f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in reply.headers.items()]
                try:
                    self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.serve(Handler)

    def counts(self) -> Counter:
        with self._lock:
            return Counter(entry.key for entry in self.log)


def generate_argv(video_dir, output, vlm_server, llm_server, *extra) -> list[str]:
    """The flags of a ``data generate`` run against the scripted servers (fast retries)."""
    return [
        "data",
        "generate",
        "--video_dir",
        str(video_dir),
        "--output_json",
        str(output),
        "--vlm_model",
        "scripted-vlm",
        "--vlm_api_base",
        vlm_server.api_base,
        "--llm_model",
        "scripted-llm",
        "--llm_api_base",
        llm_server.api_base,
        "--api_key_env",
        "VCG_TEST_GENERATE_KEY",
        "--backoff",
        "0.02",
        "--max_backoff",
        "2",
        "--timeout",
        "20",
        *map(str, extra),
    ]
