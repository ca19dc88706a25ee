"""The judge client: one chat-completion request per record over real HTTP, with bounded retries.

Any OpenAI-compatible server works (OpenAI, vLLM, llama.cpp's server, Ollama's ``/v1``), through the maintained
``openai`` client with its own retries switched off, so that every attempt is ours to bound and count:

* 429, 408, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
  (``backoff * 2**attempt`` times a factor in [0.5, 1.5], at most ``max_backoff``), waiting what ``Retry-After``
  (or ``retry-after-ms``) asks instead when the server sends it;
* a reply that does not parse is asked again at once;
* after ``max_retries`` retries the record is a failure carrying the last raw reply and the reason;
* 401 / 403 / 404 (bad key, no access, unknown model or path) would fail every record: they stop the run
  (``JudgeRefused``); other 4xx fail the record without a retry.

The API key goes to the client only; it is never part of an outcome, a log line or an error message.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass

from video_chatgpt.eval.protocol import parse_reply

FATAL_STATUS = (401, 403, 404)
RETRY_STATUS = (408, 429)  # plus every 5xx


class JudgeRefused(Exception):
    """The server refuses every request (bad key, unknown model or URL): judging more records cannot help."""


@dataclass(frozen=True)
class JudgeSettings:
    model: str
    api_base: str
    temperature: float = 0.0
    seed: int | None = 0
    timeout: float = 60.0  # seconds per request
    max_retries: int = 5  # retries after the first attempt, for any reason
    backoff: float = 1.0  # seconds before the first retry of a transient error
    max_backoff: float = 60.0  # longest wait between attempts, Retry-After included


def retry_after_seconds(headers) -> float | None:
    """The wait a 429/503 asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Judge:
    """Thread-safe: one instance serves all workers (the underlying HTTP client pools connections)."""

    def __init__(self, settings: JudgeSettings, api_key: str, jitter_seed: int | None = None) -> None:
        from openai import OpenAI

        self.settings = settings
        self._client = OpenAI(api_key=api_key, base_url=settings.api_base, max_retries=0, timeout=settings.timeout)
        self._lock = threading.Lock()
        self._rng = random.Random(jitter_seed)
        self.requests = 0  # HTTP requests sent (every attempt)
        self.reported_models: set[str] = set()

    def _backoff(self, attempt: int) -> float:
        with self._lock:
            factor = self._rng.uniform(0.5, 1.5)
        return min(self.settings.max_backoff, self.settings.backoff * 2**attempt * factor)

    def judge(self, messages: list[dict[str, str]], kind: str) -> dict:
        """``{"ok", "reply", "reason", "raw", "attempts", "model"}`` for one record; never raises but ``JudgeRefused``."""
        import openai

        s = self.settings
        reason, raw, model = "not attempted", None, None
        attempts = 0
        for attempt in range(s.max_retries + 1):
            attempts += 1
            with self._lock:
                self.requests += 1
            wait = 0.0
            try:
                kwargs = {"seed": s.seed} if s.seed is not None else {}
                response = self._client.chat.completions.create(
                    model=s.model, messages=messages, temperature=s.temperature, timeout=s.timeout, **kwargs
                )
            except openai.APITimeoutError:
                reason, wait = f"no reply within --timeout {s.timeout:g} s", self._backoff(attempt)
            except openai.APIConnectionError as exc:
                reason, wait = f"connection failed: {exc}", self._backoff(attempt)
            except openai.APIStatusError as exc:
                code = exc.status_code
                raw = _body_text(exc)
                if code in FATAL_STATUS:
                    raise JudgeRefused(
                        f"the judge server answered HTTP {code} for model {s.model!r}: {raw[:200]}"
                    ) from None
                reason = f"HTTP {code}"
                if code not in RETRY_STATUS and code < 500:
                    break  # a request the server will never accept as it is
                asked = retry_after_seconds(exc.response.headers if exc.response is not None else None)
                wait = min(s.max_backoff, asked) if asked is not None else self._backoff(attempt)
            else:
                model = response.model
                if model:
                    with self._lock:
                        self.reported_models.add(model)
                raw = response.choices[0].message.content if response.choices else None
                reply, problem = parse_reply(raw, kind)
                if reply is not None:
                    return {
                        "ok": True,
                        "reply": reply,
                        "reason": None,
                        "raw": raw,
                        "attempts": attempts,
                        "model": model,
                    }
                reason = f"unparseable reply: {problem}"
            if attempt < s.max_retries and wait > 0:
                time.sleep(wait)
        return {"ok": False, "reply": None, "reason": reason, "raw": raw, "attempts": attempts, "model": model}


def _body_text(exc) -> str:
    """The error body the server sent (non-streamed responses are read in full), for the failure record."""
    return exc.response.text if exc.response is not None else str(exc)
