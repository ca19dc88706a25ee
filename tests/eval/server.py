"""A scripted OpenAI-compatible judge on 127.0.0.1 for the tests: real HTTP, replies chosen per request.

``ScriptedServer(script)`` serves ``POST /v1/chat/completions``; ``script(n, record, body)`` gets the request number
(0-based, over the whole server), the record the request is about (the ``Question:`` line of the user message, or
``Question 1:`` for consistency) and the JSON body, and returns a :class:`Reply`. Every request is logged (time,
record, Authorization header) so tests count them.

Besides well-formed completions, a reply can be any body with any content type (``body``), sent one byte at a time
(``drip``, the status line and headers too with ``drip_headers``), or ``stream_size`` bytes of a completion whose
content is padded out (with or without a Content-Length), written until the client hangs up.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.helpers.local_server import LocalServer

_QUESTION = re.compile(r"^Question(?: 1)?: (.*)$", re.MULTILINE)


@dataclass
class Reply:
    content: str | None = None  # the assistant message (status 200)
    status: int = 200
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    block: threading.Event | None = None  # wait for this event before answering (a request left in flight)
    body: bytes | None = None  # sent as it is instead of a completion holding ``content``
    content_type: str = "application/json"
    model: object = "scripted-judge-1"  # the completion's "model" field, any JSON value
    drip: float = 0.0  # seconds between single bytes of the body (and of the status line and headers, see below)
    drip_headers: bool = False
    stream_size: int = 0  # a completion of this many bytes, written in 64 KB pieces until the client hangs up
    declare_size: bool = True  # whether a ``stream_size`` reply has a Content-Length (else: read until close)


def ok(content: str, delay: float = 0.0) -> Reply:
    return Reply(content=content, delay=delay)


def completion(content: object, model: object = "scripted-judge-1", n: int = 0) -> dict:
    """The JSON object of a chat completion whose message holds ``content`` (any JSON value)."""
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


_PIECE = 64 * 1024


def _padded_completion(size: int) -> tuple[bytes, bytes, int]:
    """``(head, tail, pad)``: head + pad x b"x" + tail is a ``size``-byte completion whose content ends in a verdict."""
    marker = "@@PAD@@"
    text = json.dumps(completion(marker + " {'score': 3}"))
    head, tail = (part.encode() for part in text.split(marker))
    return head, tail, size - len(head) - len(tail)


@dataclass
class Logged:
    time: float
    record: str | None
    authorization: str | None
    body: dict


class ScriptedServer(LocalServer):
    def __init__(self, script) -> None:
        self.script = script
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                user = next((m["content"] for m in body.get("messages", []) if m["role"] == "user"), "")
                match = _QUESTION.search(user)
                record = match.group(1) if match else None
                with server._lock:
                    n = len(server.log)
                    server.log.append(Logged(time.monotonic(), record, self.headers.get("Authorization"), body))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode(), {})
                reply = server.script(n, record, body)
                if reply.block is not None:
                    reply.block.wait()
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    payload = {"error": {"message": f"scripted {reply.status}"}}
                    return self._send(reply.status, json.dumps(payload).encode(), reply.headers)
                if reply.stream_size:
                    return self._stream(reply)
                body = reply.body if reply.body is not None else json.dumps(completion(reply.content, reply.model, n))
                self._send(200, body if isinstance(body, bytes) else body.encode(), reply.headers, reply)

            def _head(self, status: int, headers: dict, content_type: str, length: int | None) -> bytes:
                lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('Scripted',))[0]}"]
                lines.append(f"Content-Type: {content_type}")
                lines += [f"Content-Length: {length}"] if length is not None else ["Connection: close"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

            def _send(self, status, body: bytes, headers, reply: Reply | None = None):
                content_type = reply.content_type if reply is not None else "application/json"
                head = self._head(status, headers, content_type, len(body))
                drip = reply.drip if reply is not None else 0.0
                try:
                    if not drip:
                        self.wfile.write(head + body)
                        return
                    data, start = head + body, 0 if reply.drip_headers else len(head)
                    self.wfile.write(data[:start])
                    for i in range(start, len(data)):
                        time.sleep(drip)
                        self.wfile.write(data[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout and size tests)
                    pass

            def _stream(self, reply: Reply):
                head, tail, pad = _padded_completion(reply.stream_size)
                piece = b"x" * _PIECE
                length = reply.stream_size if reply.declare_size else None
                try:
                    self.wfile.write(self._head(200, reply.headers, reply.content_type, length) + head)
                    for _ in range(pad // _PIECE):
                        self.wfile.write(piece)
                    self.wfile.write(piece[: pad % _PIECE] + tail)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.serve(Handler)

    def count(self, record: str) -> int:
        with self._lock:
            return sum(entry.record == record for entry in self.log)
