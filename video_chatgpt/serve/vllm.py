"""The vLLM backend of ``video-chatgpt serve``: our prompt embeddings, vLLM's generation (its Completions API).

vLLM serves the plain language model that ``video-chatgpt export-lm`` writes, started with prompt embeddings on::

    video-chatgpt export-lm runs/stage2 runs/stage2-lm
    vllm serve runs/stage2-lm --enable-prompt-embeds --served-model-name video-chatgpt --port 8001

This module computes, on the CPU, exactly what our model feeds its decoder (the token embeddings of the prompt in
the model's template with the projected video features at the video span: ``model.export.PromptEmbedder``, the same
``place_video`` as ``VideoMixin.decoder_inputs``) and sends it to vLLM's ``POST {url}/completions`` as
``prompt_embeds`` (base64 of ``torch.save`` of one 2-D ``(tokens, hidden)`` tensor, no ``prompt``; streamed as
server-sent ``data: {...}`` chunks ending in ``data: [DONE]``). ``VllmBackend`` mirrors ``Engine.stream``/``answer``
(``complete``, ``stream``); ``VllmServeBackend`` is ``serve --backend vllm``. Errors: ``UserError`` for features of
the wrong shape, ``PromptTooLong``, ``VllmError`` (``status``: vLLM's own 4xx, else 502, or 504 past the timeout) for
everything on the wire, which goes through the project's bounded client (``llm_client.ChatClient``). The Python use,
the wire format and what is tested (a stand-in for vLLM, not vLLM itself): docs/vllm.md.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from video_chatgpt.data.conversation import render_sample
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds, load_video_tokenizer
from video_chatgpt.errors import UserError
from video_chatgpt.features.encoder import VideoFeatureExtractor
from video_chatgpt.inference.engine import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    PromptTooLong,
    Turn,
    conversation_records,
    default_device,
    video_extractor,
)
from video_chatgpt.llm_client import ChatClient, ConnectionFailed, DeadlinePassed, HttpReply, ReplyError, clip
from video_chatgpt.model.export import ExportInfo, PromptEmbedder
from video_chatgpt.serve.batching import Done, Failed, Job, Piece, QueueFull

COMPLETIONS_PATH = "completions"
MAX_REPLY_BYTES = 16 << 20  # a long streamed answer is ~250 bytes of JSON per token
DEFAULT_TIMEOUT = 600.0  # seconds per request, in total (a long answer at scale)
EMBED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what vLLM accepts


class VllmError(Exception):
    """vLLM refused or failed a request; ``status`` is the HTTP status to answer with (vLLM's 4xx, else 502/504)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# ------------------------------------------------------------------------------------------------ the protocol
def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """One prompt's (tokens, hidden) embeddings as vLLM reads them: base64 of ``torch.save`` of the tensor."""
    if not torch.is_tensor(embeds) or embeds.ndim != 2 or embeds.dtype not in EMBED_DTYPES:
        got = (tuple(embeds.shape), embeds.dtype) if torch.is_tensor(embeds) else type(embeds).__name__
        raise ValueError(f"prompt embeddings must be one 2-D float tensor (tokens, hidden); got {got}")
    buffer = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous().clone(), buffer)  # clone: only this tensor's storage is saved
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def completion_request(
    model: str,
    prompt_embeds: torch.Tensor,
    *,
    max_tokens: int,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    stream: bool = False,
) -> dict:
    """The JSON body of a vLLM Completions request with ``prompt_embeds`` (and no ``prompt``)."""
    body = {
        "model": model,
        "prompt_embeds": encode_prompt_embeds(prompt_embeds),
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
    }
    if seed is not None:
        body["seed"] = int(seed)
    if stop:
        body["stop"] = list(stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _refusal(reply: HttpReply) -> VllmError:
    """A non-200 reply as one error: vLLM's own message (OpenAI's error shape), clipped; its 4xx kept."""
    try:
        message = json.loads(reply.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = reply.body.decode("utf-8", "replace")
    status = reply.status if 400 <= reply.status < 500 else 502
    return VllmError(f"vLLM answered {reply.status}: {clip(str(message), 300)}", status)


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (prompt, completion)):
        return None
    return Usage(prompt, completion)


def _choice(obj: object, where: str) -> dict | None:
    """``choices[0]`` of a completion (or chunk) as a dict with text ``text``; None for a chunk without choices."""
    if not isinstance(obj, dict):
        raise VllmError(f"vLLM's {where} is not a JSON object")
    choices = obj.get("choices")
    if choices == [] and "usage" in obj:
        return None  # the usage chunk at the end of a stream
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise VllmError(f"vLLM's {where} has no choices")
    if not isinstance(choices[0].get("text"), str):
        raise VllmError(f"vLLM's {where}: choices[0].text is not text")
    return choices[0]


def read_completion_reply(body: bytes) -> tuple[str, Usage | None, str | None]:
    """``(text, usage, finish_reason)`` of a vLLM completion body; ``VllmError`` when it is not one."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise VllmError(f"vLLM's reply is not JSON: {clip(body.decode('utf-8', 'replace'), 200)}") from None
    choice = _choice(obj, "reply")
    if choice is None:
        raise VllmError("vLLM's reply has no choices")
    return choice["text"], _usage(obj.get("usage")), choice.get("finish_reason")


def open_stream(client: ChatClient, body: dict) -> CompletionStream:
    """Send a streamed request; a refusal or a failure before the first line is raised now (``VllmError``)."""
    lines = client.stream_lines(COMPLETIONS_PATH, body)
    try:
        head = next(lines)
    except (DeadlinePassed, ConnectionFailed, ReplyError) as exc:
        raise _wire_error(exc) from None
    if head.status != 200:
        lines.close()
        raise _refusal(head)
    return CompletionStream(lines)


class CompletionStream:
    """The text pieces of a streamed completion, as vLLM sends them; ``usage`` and ``finish_reason`` are set once
    the stream is read to its end. ``close()`` (or leaving a ``for`` loop early and dropping it) hangs up."""

    def __init__(self, lines: Iterator[HttpReply | bytes]):
        self._lines = lines
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    text = clip(data.decode("utf-8", "replace"), 200)
                    raise VllmError(f"vLLM sent a chunk that is not JSON: {text}") from None
                if isinstance(obj, dict) and "error" in obj:  # an error after the stream began
                    message = obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"]
                    raise VllmError(f"vLLM stopped the stream: {clip(str(message), 300)}")
                self.usage = _usage(obj.get("usage")) or self.usage
                choice = _choice(obj, "stream chunk")
                if choice is None:
                    continue
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                if choice["text"]:
                    yield choice["text"]
            raise VllmError("vLLM's stream ended without [DONE]")
        except (DeadlinePassed, ConnectionFailed, ReplyError) as exc:
            raise _wire_error(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        self._lines.close()


def _wire_error(exc: Exception) -> VllmError:
    status = 504 if isinstance(exc, DeadlinePassed) else 502
    return VllmError(f"vLLM: {exc}", status)


# ------------------------------------------------------------------------------------------------ the backend
def api_base(url: str) -> str:
    """vLLM's OpenAI base URL: ``http://host:port/v1`` (``/v1`` added when the URL has no path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--vllm_url {url!r}: expected an http(s) URL such as http://127.0.0.1:8001/v1")
    return url.rstrip("/") + ("/v1" if parts.path in ("", "/") else "")


class VllmBackend:
    """Answers questions about videos with a vLLM server over an ``export-lm`` folder (see the module doc).

    ``export_folder``: the folder ``video-chatgpt export-lm`` wrote (what ``vllm serve`` was given); its tokenizer,
    template, embedding table and projector build the prompts. ``model_name``: the name vLLM serves it under
    (``--served-model-name``, else the folder path it was given). ``api_key``: vLLM's ``--api-key``, if it has one.
    ``template``: overrides the exported conversation template (``conv_mode`` of a document-base model).
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        export_folder: str | Path,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        template: str | None = None,
    ):
        self.model_name = model_name
        self.embedder = PromptEmbedder.load(export_folder)
        info = self.embedder.info
        tokenizer, video_ids, num_new = load_video_tokenizer(export_folder, use_start_end=info.use_start_end)
        if num_new or video_ids != VideoTokenIds(info.patch_token_id, info.start_token_id, info.end_token_id):
            raise UserError(
                f"{export_folder}: its tokenizer's video tokens {video_ids} are not the exported ids "
                f"({info.patch_token_id}, {info.start_token_id}, {info.end_token_id}); export the run again"
            )
        self.tokenizer, self.video_ids = tokenizer, video_ids
        self.encoder = SegmentEncoder(tokenizer)
        self.template = template or info.template
        self.client = ChatClient(api_base(url), api_key or "EMPTY", timeout, MAX_REPLY_BYTES)

    @property
    def info(self) -> ExportInfo:
        """The export's settings: ``vision_tower``, ``num_frames``, ``video_token_len`` (what the server's feature
        extraction needs), ``template``, ``max_model_len``, ..."""
        return self.embedder.info

    def prompt_ids(self, question: str, num_video_tokens: int, history: Sequence[Turn] = ()) -> list[int]:
        """The generation prompt, as ``Engine.prompt_ids`` renders it (same records, template and encoder)."""
        records = conversation_records(history, question)
        return render_sample(records, self.encoder, self.video_ids, num_video_tokens, template=self.template).input_ids

    def prompt_embeds(self, question: str, features: np.ndarray, history: Sequence[Turn] = ()) -> torch.Tensor:
        """(tokens, hidden) embeddings of the prompt with the video: what our model's decoder would read."""
        features = np.asarray(features)
        if features.ndim != 2:
            raise UserError(f"video features have shape {features.shape}; expected (tokens, width)")
        ids = self.prompt_ids(question, features.shape[0], history)
        return self.embedder(ids, features)

    def request(self, question: str, features: np.ndarray, *, history: Sequence[Turn] = (), stream: bool = False,
                temperature: float = DEFAULT_TEMPERATURE, top_p: float = 1.0,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int | None = None,
                stop: Sequence[str] | None = None) -> dict:  # fmt: skip
        """The Completions request body for a question about a video (``max_tokens`` capped by the context)."""
        embeds = self.prompt_embeds(question, features, history)
        limit = self.embedder.info.max_model_len
        if limit:
            if embeds.shape[0] >= limit:
                raise PromptTooLong(embeds.shape[0], limit)
            max_new_tokens = min(max_new_tokens, limit - embeds.shape[0])
        return completion_request(
            self.model_name, embeds, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop, stream=stream,
        )  # fmt: skip

    def complete(self, question: str, features: np.ndarray, **settings) -> tuple[str, Usage | None]:
        """The whole answer and vLLM's token counts. ``settings``: ``history``, ``temperature``, ``top_p``,
        ``max_new_tokens``, ``seed``, ``stop`` (as ``request``)."""
        body = self.request(question, features, stream=False, **settings)
        try:
            reply = self.client.post(COMPLETIONS_PATH, body)
        except (DeadlinePassed, ConnectionFailed, ReplyError) as exc:
            raise _wire_error(exc) from None
        if reply.status != 200:
            raise _refusal(reply)
        text, usage, _ = read_completion_reply(reply.body)
        return text, usage

    def stream(self, question: str, features: np.ndarray, **settings) -> CompletionStream:
        """The answer as text pieces while vLLM generates it (settings as ``complete``). The request is sent now,
        so a refusal (``VllmError``) is raised here, before the first piece."""
        return open_stream(self.client, self.request(question, features, stream=True, **settings))

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------ serve --backend vllm
@dataclass(frozen=True)
class _ExportedConfig:
    video_token_len: int | None
    mm_hidden_size: int


@dataclass(frozen=True)
class _ExportedModel:
    config: _ExportedConfig


class ExportedPrompts:
    """The prompt side of ``serve --backend vllm``: what the server asks of an ``Engine`` (``prepare``,
    ``video_features``, ``extractor``, ``model.config``), from an ``export-lm`` folder, without its language model:
    the tokenizer, template and video-token ids of ``VllmBackend``, and the exported tower for videos."""

    def __init__(self, backend: VllmBackend, device: str | None = None):
        self.backend = backend
        info = backend.info
        self.model = _ExportedModel(_ExportedConfig(info.video_token_len, info.feature_width))
        self.device = torch.device(device) if device else default_device()
        self._extractor = None

    @property
    def extractor(self) -> VideoFeatureExtractor:
        """The exported run's tower, built on first use (the same features as the training files)."""
        if self._extractor is None:
            info = self.backend.info
            if not info.vision_tower:
                raise ValueError("the export records no vision tower: only video_features parts can be answered")
            self._extractor = video_extractor(info.vision_tower, info.num_frames, self.device, info.video_token_len)
        return self._extractor

    def video_features(self, video_path: str | Path) -> np.ndarray:
        return self.extractor.features_from_video(video_path)

    def prepare(self, question: str, features: np.ndarray, history: Sequence[Turn] = ()):
        """(prompt ids, (1, N, C) features, room left for the answer or None), as ``Engine.prepare``."""
        features = np.asarray(features)
        ids = self.backend.prompt_ids(question, features.shape[0], history)
        limit = self.backend.info.max_model_len
        if limit and len(ids) >= limit:
            raise PromptTooLong(len(ids), limit)
        return ids, torch.from_numpy(features).unsqueeze(0), (limit - len(ids) if limit else None)


class VllmServeBackend:
    """``serve --backend vllm``: each request's prompt embeddings go to vLLM's Completions API (vLLM batches them);
    up to ``max_running`` requests are in flight at once and ``max_queue`` more wait. The server talks to it as to
    ``LocalBackend`` (``engine``, ``submit``, ``load``, ``close``)."""

    name = "vllm"

    def __init__(self, backend: VllmBackend, max_running: int = 8, max_queue: int = 64, device: str | None = None):
        self.vllm = backend
        self.engine = ExportedPrompts(backend, device)
        self.max_running, self.max_queue = max_running, max_queue
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="video-chatgpt-vllm")
        self._lock = threading.Lock()
        self._waiting = self._running = 0

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting (--max_queue {self.max_queue})")
            self._waiting += 1
        self._pool.submit(self._run, job)

    def load(self) -> dict:
        with self._lock:
            return {"waiting": self._waiting, "running": self._running}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.vllm.close()

    def _run(self, job: Job) -> None:
        with self._lock:
            self._waiting -= 1
            self._running += 1
        try:
            embeds = self.vllm.embedder(job.ids, job.features[0].numpy())
            body = completion_request(
                self.vllm.model_name, embeds, max_tokens=job.max_tokens, temperature=job.sampling.temperature,
                top_p=job.sampling.top_p, seed=job.sampling.seed, stop=list(job.stop) or None, stream=True,
            )  # fmt: skip
            pieces = open_stream(self.vllm.client, body)  # wire errors: VllmError, here and while it is read
            generated = 0
            for piece in pieces:
                if job.cancelled.is_set():  # the client went away: hang up on vLLM
                    pieces.close()
                    return
                generated += 1
                job.emit(Piece(piece))
            usage = pieces.usage
            job.emit(Done(
                "length" if pieces.finish_reason == "length" else "stop",
                usage.prompt_tokens if usage else len(job.ids),
                usage.completion_tokens if usage else generated,
            ))  # fmt: skip
        except VllmError as exc:
            job.emit(Failed(f"vLLM: {exc}"))
        finally:
            with self._lock:
                self._running -= 1
