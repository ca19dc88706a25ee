"""OpenAI's chat-completions format: a request body checked into a ``ChatRequest``, the replies and chunks built, the
errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

A request holds text parts and exactly one video, in any user message, as one of:

    {"type": "video_url", "video_url": {"url": "clips/a.mp4"}}                  # or file:///abs/path, data:video/...
    {"type": "video_features", "video_features": {"url": "features/a.pkl"}}    # this server's extension

User and assistant messages alternate, starting and ending with a user message; the video goes with the first
question (as the model was trained). System (and developer) messages are accepted and ignored: the model's template
has its own system prompt.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from video_chatgpt.constants import VIDEO_PLACEHOLDER
from video_chatgpt.inference.engine import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE

VIDEO_PART_TYPES = ("video_url", "video_features")
MAX_STOP_STRINGS = 4  # as OpenAI


class ApiError(Exception):
    """An HTTP error reply in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 503: "server_error", 500: "server_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


@dataclass(frozen=True)
class VideoPart:
    kind: str  # "video_url" or "video_features"
    url: str
    param: str  # where it is in the request, for error messages: messages[0].content[1]


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: the question, the finished turns before it, its video, and the generation settings."""

    model: str
    question: str
    history: tuple[tuple[str, str], ...]
    video: VideoPart
    stream: bool = False
    include_usage: bool = False
    max_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def _number(body: dict, key: str, lo: float, hi: float, default, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise bad(f"{key}: {value!r} is not {what} from {lo:g} to {hi:g}", key)
    return value


def _text_and_videos(message: dict, where: str) -> tuple[str, list[VideoPart]]:
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    texts, videos = [], []
    for k, part in enumerate(content):
        param = f"{where}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{param}: a text part needs a string 'text'", param)
            texts.append(part["text"])
        elif kind in VIDEO_PART_TYPES:
            inner = part.get(kind)
            url = inner.get("url") if isinstance(inner, dict) else inner
            if not isinstance(url, str):
                raise bad(f'{param}: a {kind} part is {{"type": "{kind}", "{kind}": {{"url": "..."}}}}', param)
            videos.append(VideoPart(kind, url, param))
        elif kind in ("image_url", "input_image", "input_audio", "file"):
            raise bad(f"{param}: {kind} parts are not read by this model; send one video as a video_url part", param)
        else:
            raise bad(f"{param}: unknown part type {kind!r}; expected text, video_url or video_features", param)
    return "\n".join(texts), videos


def parse_chat_request(body: object) -> ChatRequest:
    """The request body (parsed JSON) as a ``ChatRequest``; ``ApiError`` 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: required (see GET /v1/models)", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages: required, a non-empty list", "messages")
    turns: list[tuple[str, str]] = []  # (role, text)
    videos: list[VideoPart] = []
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role: {role!r}; expected user, assistant or system", f"{where}.role")
        text, found = _text_and_videos(message, where)
        if found and role != "user":
            raise bad(f"{where}: a video goes in a user message", where)
        if VIDEO_PLACEHOLDER in text:
            raise bad(f"{where}: leave {VIDEO_PLACEHOLDER} out of the text; the video is a video_url part", where)
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise bad(f"{where}: a {role} message where a {expected} message belongs (they alternate)", where)
        turns.append((role, text.strip()))
        videos += found
    if not turns or turns[-1][0] != "user":
        raise bad("messages: the last message must be the user's question", "messages")
    if not videos:
        raise bad("messages: no video; add a video_url (or video_features) part to a user message", "messages")
    if len(videos) > 1:
        names = ", ".join(v.param for v in videos)
        raise bad(f"messages: {len(videos)} videos ({names}); this model reads one video per request", "messages")
    if not turns[-1][1]:
        raise bad("messages: the last user message has no text (the question)", "messages")
    texts = [text for _, text in turns]
    history = tuple(zip(texts[0:-1:2], texts[1:-1:2]))

    if body.get("n") not in (None, 1):
        raise bad("n: only 1 answer per request", "n")
    tokens_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, tokens_key, 1, 2**31, DEFAULT_MAX_NEW_TOKENS, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise bad(f"stop: a string or a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad("stream: true or false", "stream")
    options = body.get("stream_options") or {}
    return ChatRequest(
        model=model,
        question=texts[-1],
        history=history,
        video=videos[0],
        stream=stream,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 0, 2, DEFAULT_TEMPERATURE)),
        top_p=float(_number(body, "top_p", 0, 1, 1.0)),
        seed=_number(body, "seed", -(2**63), 2**63 - 1, None, integer=True),
        stop=tuple(stop),
    )


# ------------------------------------------------------------------------------------------------ replies
def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int):
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None, usage_: dict | None = None) -> str:
    """One server-sent event of a streamed reply (``choices`` empty for the final usage chunk)."""
    choices = [] if usage_ else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    payload = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    payload["choices"] = choices
    if usage_:
        payload["usage"] = usage_
    return f"data: {json.dumps(payload)}\n\n"


DONE = "data: [DONE]\n\n"


def model_list(name: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "video-chatgpt"}],
    }
