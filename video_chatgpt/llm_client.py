"""The LLM client: chat-completion requests to any OpenAI-compatible server, bounded in time and size, with retries.

One module for every command that asks a model over HTTP (``evaluate``'s judge, ``data generate``'s VLM and LLM,
``serve``'s vLLM backend); it imports no pipeline stage. Any OpenAI-compatible server works (OpenAI, vLLM,
llama.cpp's server, Ollama's ``/v1``). ``ChatClient`` sends one request, ``read_completion`` checks a reply field by
field, ``Asker`` retries and turns every attempt into a result or a recorded failure, never a traceback. A message's
``content`` (text, or OpenAI content parts such as a base64 ``image_url``) is sent as it is.

* **Time**: each attempt has one total deadline, ``timeout`` seconds from connecting to the reply's last byte.
  HTTP clients (``httpx2``, and so the ``openai`` client built on it) bound each socket read only, so a server that
  drips a few bytes a second holds a request for as long as it likes; at the deadline ``_Deadline`` shuts the
  request's socket down, which ends the read in any phase (connect, headers, body).
* **Size**: a reply is read as it streams in and abandoned past ``max_reply_bytes`` (1 MiB: a judge's verdict is
  a few hundred bytes, a generated answer a few KB; parsed JSON can take ~20x its bytes in memory, per worker).
* **Shape**: the body must be JSON with a non-empty ``choices`` list whose first ``message.content`` is text, or a
  list of content parts whose ``text`` parts are joined (valid OpenAI). Anything else (an HTML or plain-text body,
  ``choices`` of another type, content a number) is an unusable reply; a ``model`` that is not text is not recorded.
* **Retries**: 429, 408, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
  (``backoff * 2**attempt`` times a factor in [0.5, 1.5], at most ``max_backoff``), waiting what ``Retry-After``
  (or ``retry-after-ms``) asks instead when the server sends it; an unusable or unparseable reply is asked again at
  once; after ``max_retries`` retries the record is a failure carrying the last raw reply (clipped) and the reason;
  401 / 403 / 404 (bad key, no access, unknown model or path) would fail every record: they stop the run
  (``ServerRefused``); other 4xx fail the record without a retry.

Why not the ``openai`` client: its timeout is per socket read and it has no reply size limit; bounding it needs a
custom transport under it and reading its raw replies past its parser (which returns a ``str`` for a non-JSON body
and lets ``choices`` be anything), which leaves it nothing to do. ``httpx2`` is the HTTP library it uses.

The API key goes into the request's header only; it is never part of an outcome, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from video_chatgpt.errors import UserError

FATAL_STATUS = (401, 403, 404)
RETRY_STATUS = (408, 429)  # plus every 5xx
MAX_REPLY_BYTES = 2**20  # 1 MiB: see the module docstring
RAW_CHARS = 4000  # the most of a raw reply an outcome keeps (the cache holds one per record)
CHAT_PATH = "chat/completions"


OPENAI_HOST = "api.openai.com"
NO_KEY = "EMPTY"  # what a local server without authentication receives when no key is set


def api_host(api_base: str, flag: str = "--api_base") -> str:
    """host[:port] of the API base, without scheme, credentials, path or query: what results may record."""
    parsed = urlparse(api_base)
    if not parsed.hostname:
        raise UserError(f"{flag} {api_base!r} is not a URL (expected e.g. http://localhost:8000/v1)")
    return parsed.hostname + (f":{parsed.port}" if parsed.port else "")


def key_from_environment(env_name: str, hosts: list[str], prog: str) -> str:
    """The API key in ``$env_name``; without one, ``NO_KEY`` for local servers and a ``UserError`` for OpenAI's."""
    key = os.environ.get(env_name, "")
    if key:
        return key
    if OPENAI_HOST in hosts:
        raise UserError(
            f"no API key: set the environment variable {env_name} (or name another one with --api_key_env) before "
            f"asking {OPENAI_HOST}"
        )
    print(f"{prog}: ${env_name} is not set; sending no key (fine for a local server)", file=sys.stderr)
    return NO_KEY


class ServerRefused(Exception):
    """The server refuses every request (bad key, unknown model or URL): asking about more records cannot help."""


class ReplyError(Exception):
    """A reply that cannot be used (too large, not JSON, not a chat completion); the message says why."""


class DeadlinePassed(Exception):
    """No complete reply within the request's total deadline."""


class ConnectionFailed(Exception):
    """No HTTP exchange: connection refused or lost, TLS failed, the server does not speak HTTP."""


@dataclass(frozen=True)
class ClientSettings:
    model: str
    api_base: str
    temperature: float = 0.0
    seed: int | None = 0
    timeout: float = 60.0  # seconds per attempt, in total: connect, send, wait and read the whole reply
    max_retries: int = 5  # retries after the first attempt, for any reason
    backoff: float = 1.0  # seconds before the first retry of a transient error
    max_backoff: float = 60.0  # longest wait between attempts, Retry-After included
    max_reply_bytes: int = MAX_REPLY_BYTES

    def __post_init__(self):
        if self.max_retries < 0:  # Asker.ask makes max_retries + 1 attempts: at least one
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class Completion:
    text: str  # the assistant message (text parts joined)
    model: str | None  # the model the server says answered, when it says so as text


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def retry_after_seconds(headers) -> float | None:
    """The wait a 429/503 asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    for name, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        with contextlib.suppress(TypeError, ValueError):  # absent (None) or not a number
            return max(0.0, float(headers.get(name)) / per_second)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------------------------------------- one request
def _shutdown(sock: socket.socket | None) -> None:
    # socket.socket's own shutdown, also for an SSL socket (whose override would drop its TLS state first).
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed, or detached by the TLS wrap
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Deadline:
    """One request's total deadline: ``seconds`` after ``__enter__``, the request's sockets are shut down.

    A shut-down socket ends a read blocked in it at once, whatever the phase. The sockets come from httpcore's
    ``trace`` request extension (the TCP socket when it connects, the TLS one when the handshake ends); a socket
    that connects after the deadline is shut down as it arrives.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict) -> None:
        if not event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        sock = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


class ChatClient:
    """POSTs JSON to one OpenAI-compatible ``/v1`` endpoint; thread-safe (one instance serves all workers).

    Each request opens its own connection (no keep-alive), so that its deadline knows which socket to shut down;
    ``timeout`` also bounds each socket operation (connect, each read), as a client's timeout usually does.
    """

    def __init__(self, api_base: str, api_key: str, timeout: float, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        try:
            import httpx2
        except ImportError:
            raise UserError(
                'the LLM client needs the httpx2 package: pip install -e ".[eval]" (or pip install httpx2)'
            ) from None
        if not api_key.isascii():  # said without the key itself
            raise UserError("the API key holds non-ASCII characters, which an HTTP header cannot carry; check the key")
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._httpx = httpx2
        self._http = httpx2.Client(
            base_url=api_base.rstrip("/") + "/",
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Accept-Encoding": "identity",
            },
            timeout=timeout,
            limits=httpx2.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )

    @contextlib.contextmanager
    def _exchange(self, path: str, payload: dict, headers: dict[str, str] | None = None):
        """POST ``payload`` under one deadline: yields ``(response, its headers with lower-case names, deadline)``;
        a transport error (in the request or while the caller reads) becomes ``DeadlinePassed`` or
        ``ConnectionFailed``."""
        # Encoded here, not by httpx2 (which refuses NaN and cannot encode the lone surrogates a JSON file can hold):
        # ASCII JSON carries any text as escapes.
        content = json.dumps(payload).encode()
        deadline = _Deadline(self.timeout)
        with deadline:
            try:
                with self._http.stream(
                    "POST", path, content=content, headers=headers, extensions={"trace": deadline.trace}
                ) as response:
                    yield response, {k.lower(): v for k, v in response.headers.items()}, deadline
            except self._httpx.RequestError as exc:  # transport errors, and any other the HTTP layer raises
                raise self._transport_error(exc, deadline) from None

    def post(self, path: str, payload: dict) -> HttpReply:
        """One request and its whole reply, within ``timeout`` seconds in total.

        Raises ``DeadlinePassed``, ``ReplyError`` (larger than ``max_reply_bytes``, or compressed although it was
        asked not to be) or ``ConnectionFailed``.
        """
        with self._exchange(path, payload) as (response, headers, _):
            return HttpReply(response.status_code, headers, self._read_body(response, headers))

    def stream_lines(self, path: str, payload: dict) -> Iterator[HttpReply | bytes]:
        """A streamed request (server-sent events, e.g. vLLM's ``stream: true``): first an ``HttpReply`` with the
        status and headers (its body the whole reply when the status is not 200, else empty), then each line of a
        200 reply's body as it arrives, without its line end. The bounds of ``post``: ``timeout`` seconds in total
        and ``max_reply_bytes`` in all; closing the iterator early closes the connection. Raises as ``post``."""
        with self._exchange(path, payload, {"Accept": "text/event-stream"}) as (response, headers, deadline):
            if response.status_code != 200:
                yield HttpReply(response.status_code, headers, self._read_body(response, headers))
                return
            yield HttpReply(200, headers, b"")
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ReplyError(f"a compressed stream (Content-Encoding: {encoding[:40]})")
            size, pending = 0, b""
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise ReplyError(f"more than the {self.max_reply_bytes} bytes a reply may have")
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r")
            if deadline.expired:  # the shut-down socket reads as the end of the body
                raise DeadlinePassed(f"no complete reply within {self.timeout:g} s")
            if pending:
                yield pending

    def _transport_error(self, exc: Exception, deadline: _Deadline) -> Exception:
        if deadline.expired:
            return DeadlinePassed(f"no complete reply within {self.timeout:g} s")
        if isinstance(exc, self._httpx.TimeoutException):
            return DeadlinePassed(f"no reply within {self.timeout:g} s ({type(exc).__name__})")
        return ConnectionFailed(clip(str(exc) or type(exc).__name__, 300))

    def _read_body(self, response, headers: dict[str, str]) -> bytes:
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ReplyError(f"a compressed reply (Content-Encoding: {encoding[:40]}) although none was asked for")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise ReplyError(f"{int(declared)} bytes, more than the {self.max_reply_bytes} bytes a reply may have")
        body = bytearray()
        for chunk in response.iter_raw():
            if len(body) + len(chunk) > self.max_reply_bytes:
                raise ReplyError(f"more than the {self.max_reply_bytes} bytes a reply may have")
            body += chunk
        return bytes(body)

    def close(self) -> None:
        self._http.close()


# ------------------------------------------------------------------------------------------------ the reply
def clip(text: str, limit: int = RAW_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how many there were (what an outcome keeps of a reply)."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text)} characters]"


def _clean(text: str) -> str:
    # JSON escapes can make lone surrogates, which no file can hold as UTF-8: replace them.
    return text.encode("utf-8", "replace").decode("utf-8")


def _describe(value: object) -> str:
    """``missing or null``, ``str 'abc'``, ``list``: a field's value for a message, short whatever it holds."""
    if value is None:
        return "missing or null"
    if isinstance(value, (str, int, float, bool)):
        return f"{type(value).__name__} {clip(repr(value), 60)}"
    return type(value).__name__


def body_text(body: bytes) -> str:
    """A reply body as text for a failure record (undecodable bytes replaced), clipped."""
    return clip(body[: RAW_CHARS * 4].decode("utf-8", "replace"))


def read_completion(body: bytes) -> Completion:
    """The assistant text and the model name of a chat-completion reply; ``ReplyError`` saying what is wrong.

    ``message.content`` may be text or a list of content parts (``{"type": "text", "text": ...}``; other parts,
    e.g. a refusal, are left out), as the OpenAI API allows.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON or not UTF-8, a number too long, nested too deep
        raise ReplyError(f"not JSON ({type(exc).__name__}): {clip(body_text(body), 120)!r}") from None
    if not isinstance(data, dict):
        raise ReplyError(f"a JSON {type(data).__name__}, expected a chat completion object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ReplyError(f"'choices' is {_describe(choices)}, expected a non-empty list")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise ReplyError(f"'choices[0].message' is {_describe(message)}, expected an object")
    content = message.get("content")
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ReplyError("'content' is a list without text parts")
        content = "".join(texts)
    if not isinstance(content, str):
        raise ReplyError(f"'content' is {_describe(content)}, expected text")
    model = data.get("model")
    return Completion(_clean(content), _clean(model[:200]) if isinstance(model, str) and model else None)


# ------------------------------------------------------------------------------------------- the asker
class Asker:
    """Asks one chat completion per record with bounded retries. Thread-safe: one instance serves all workers.

    ``role`` names the server in the one line that stops a run (``the judge server answered HTTP 401 ...``)."""

    def __init__(
        self, settings: ClientSettings, api_key: str, jitter_seed: int | None = None, role: str = "LLM"
    ) -> None:
        self.settings = settings
        self.role = role
        self.client = ChatClient(settings.api_base, api_key, settings.timeout, settings.max_reply_bytes)
        self._lock = threading.Lock()
        self._rng = random.Random(jitter_seed)
        self.requests = 0  # HTTP requests sent (every attempt)
        self.reported_models: set[str] = set()

    def _backoff(self, attempt: int) -> float:
        with self._lock:
            factor = self._rng.uniform(0.5, 1.5)
        return min(self.settings.max_backoff, self.settings.backoff * 2**attempt * factor)

    def ask(self, messages: list[dict], parse: Callable[[str], tuple[object, str | None]]) -> dict:
        """``{"ok", "reply", "reason", "raw", "attempts", "model"}`` for one record; never raises but ``ServerRefused``.

        ``parse(text) -> (value, None) | (None, reason)`` reads the assistant's text; ``reply`` is its value.
        """
        s = self.settings
        payload = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if s.seed is not None:
            payload["seed"] = s.seed
        for attempt in range(s.max_retries + 1):
            with self._lock:
                self.requests += 1
            outcome, wait, final = self._attempt(payload, parse, attempt)
            if final:
                break
            if attempt < s.max_retries and wait > 0:
                time.sleep(wait)
        return {**outcome, "attempts": attempt + 1}

    def _attempt(self, payload: dict, parse: Callable, attempt: int) -> tuple[dict, float, bool]:
        """One request: ``(outcome, seconds to wait before the next attempt, whether to stop here)``."""
        s = self.settings

        def failed(reason: str, raw: str | None = None, model: str | None = None, wait: float = 0.0, final=False):
            return {"ok": False, "reply": None, "reason": reason, "raw": raw, "model": model}, wait, final

        try:
            reply = self.client.post(CHAT_PATH, payload)
        except DeadlinePassed:
            return failed(f"no reply within --timeout {s.timeout:g} s", wait=self._backoff(attempt))
        except ConnectionFailed as exc:
            return failed(f"connection failed: {exc}", wait=self._backoff(attempt))
        except ReplyError as exc:
            return failed(f"unusable reply: {exc}")  # asked again at once
        if not 200 <= reply.status < 300:
            raw = body_text(reply.body)
            if reply.status in FATAL_STATUS:
                raise ServerRefused(
                    f"the {self.role} server answered HTTP {reply.status} for model {s.model!r}: {raw[:200]}"
                )
            if reply.status not in RETRY_STATUS and reply.status < 500:
                return failed(f"HTTP {reply.status}", raw, final=True)  # the server will never accept it as it is
            asked = retry_after_seconds(reply.headers)
            wait = min(s.max_backoff, asked) if asked is not None else self._backoff(attempt)
            return failed(f"HTTP {reply.status}", raw, wait=wait)
        try:
            completion = read_completion(reply.body)
        except ReplyError as exc:
            return failed(f"unusable reply: {exc}", body_text(reply.body))
        if completion.model:
            with self._lock:
                self.reported_models.add(completion.model)
        value, problem = parse(completion.text)
        if value is None:
            return failed(f"unparseable reply: {problem}", clip(completion.text), completion.model)
        ok = {"ok": True, "reply": value, "reason": None, "raw": clip(completion.text), "model": completion.model}
        return ok, 0.0, True
