"""A scripted OpenAI-compatible judge on 127.0.0.1 for the tests: real HTTP, replies chosen per request.

``ScriptedServer(script)`` serves ``POST /v1/chat/completions``; ``script(n, record, body)`` gets the request number
(0-based, over the whole server), the record the request is about (the ``Question:`` line of the user message, or
``Question 1:`` for consistency) and the JSON body, and returns a :class:`Reply`. Every request is logged (time,
record, Authorization header) so tests count them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_QUESTION = re.compile(r"^Question(?: 1)?: (.*)$", re.MULTILINE)


@dataclass
class Reply:
    content: str | None = None  # the assistant message (status 200)
    status: int = 200
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    block: threading.Event | None = None  # wait for this event before answering (a request left in flight)


def ok(content: str, delay: float = 0.0) -> Reply:
    return Reply(content=content, delay=delay)


@dataclass
class Logged:
    time: float
    record: str | None
    authorization: str | None
    body: dict


class ScriptedServer:
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
                    return self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                reply = server.script(n, record, body)
                if reply.block is not None:
                    reply.block.wait()
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}}, reply.headers)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{n}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "scripted-judge-1",
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": reply.content},
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                    reply.headers,
                )

            def _send(self, status, payload, headers):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, record: str) -> int:
        with self._lock:
            return sum(entry.record == record for entry in self.log)
