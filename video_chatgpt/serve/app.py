"""``video-chatgpt serve``: an OpenAI-compatible API server for a trained model (FastAPI + uvicorn).

    video-chatgpt serve --model-name runs/quickstart/Video-ChatGPT_7B-1.1_Checkpoints \
        --vision_tower runs/quickstart/models/clip-vit-tiny --allowed_local_media_path runs/quickstart/world/videos
    VCG_KEY=secret video-chatgpt serve --model-name ... --api_key_env VCG_KEY --port 8000 --max_batch_size 8

``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` (OpenAI's format, streaming included) with one
video per request: a ``video_url`` part (a path or ``file://`` URL inside ``--allowed_local_media_path``, or
``data:video/mp4;base64,...``) or a ``video_features`` part (a feature file in that folder). Concurrent requests are
batched into shared forward passes; features are cached by content hash. The API, errors, examples: docs/serve.md.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' ``Request`` annotations at runtime.
import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.inference.demo import DEFAULT_MAX_VIDEO_SECONDS
from video_chatgpt.inference.engine import PromptTooLong, load_engine
from video_chatgpt.inference.flags import add_model_flags, check_model_flags, engine_kwargs
from video_chatgpt.serve import protocol
from video_chatgpt.serve.batching import (
    Backend,
    Done,
    Event,
    Failed,
    Job,
    LocalBackend,
    Piece,
    QueueFull,
    Sampling,
)
from video_chatgpt.serve.media import Media, MediaError
from video_chatgpt.serve.protocol import ApiError, ChatRequest
from video_chatgpt.serve.vllm import VllmBackend, VllmServeBackend

logger = logging.getLogger(__name__)

BACKENDS = ("local", "vllm")  # vllm: video_chatgpt/serve/vllm.py, over an export-lm folder
DEFAULT_MAX_REQUEST_MB = 64.0


class Server:
    """What the routes need: the backend (model and batcher), the media reader and the settings."""

    def __init__(
        self,
        backend: Backend,
        model_name: str,
        media_path: str | Path | None = None,
        api_key: str | None = None,
        max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
        max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20),
    ):
        self.backend = backend
        self.model_name = model_name
        self.media = Media(backend.engine, media_path, max_video_seconds)
        self._api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.created = int(time.time())

    def check_key(self, authorization: str | None) -> None:
        if self._api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._api_key.encode()):
            raise ApiError(401, "a wrong or missing API key (send Authorization: Bearer <key>)", code="invalid_api_key")

    def features(self, request: ChatRequest):
        video = request.video
        if video.kind == "video_features":
            return self.media.feature_file(video.url, video.param)
        return self.media.video_url(video.url, video.param)

    def job(self, request: ChatRequest, features, emit) -> Job:
        """The backend's job for a checked request (the prompt rendered in the model's template)."""
        engine = self.backend.engine
        ids, feats, room = engine.prepare(request.question, features, request.history)
        max_tokens = request.max_tokens if room is None else min(request.max_tokens, room)
        sampling = Sampling(request.temperature, request.top_p, request.seed)
        return Job(ids, feats, max_tokens, emit, sampling, request.stop)


def create_app(server: Server):
    """The FastAPI app over ``server``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="video-chatgpt serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.error("request failed: %s: %s", type(exc).__name__, exc)
        body = ApiError(500, f"internal error ({type(exc).__name__}); the server goes on").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(ApiError(404, f"no route {request.url.path}").body(), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc):
        message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(ApiError(405, message).body(), status_code=405)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_name, "backend": server.backend.name, **server.backend.load()}

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request.headers.get("authorization"))
        return protocol.model_list(server.model_name, server.created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        server.check_key(request.headers.get("authorization"))
        body = await read_body(request, server.max_request_bytes)
        try:
            parsed = json.loads(body)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            raise protocol.bad("the request body is not JSON") from None
        chat = protocol.parse_chat_request(parsed)
        if chat.model != server.model_name:
            raise ApiError(
                404, f"model {chat.model!r} is not served here; this server serves {server.model_name!r}", "model",
                "model_not_found",
            )  # fmt: skip
        try:
            features = await run_in_threadpool(server.features, chat)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Event] = asyncio.Queue()
            job = server.job(chat, features, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        except MediaError as exc:
            raise protocol.bad(str(exc), exc.param) from None
        except PromptTooLong as exc:
            raise protocol.bad(str(exc), "messages", "context_length_exceeded") from None
        except UserError as exc:
            raise protocol.bad(str(exc), "messages") from None
        try:
            server.backend.submit(job)
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy: {exc}; try again shortly", code="queue_full") from None
        rid = protocol.new_id()
        if chat.stream:
            return StreamingResponse(
                stream_events(events, job, rid, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        pieces: list[str] = []
        try:
            while not isinstance(event := await events.get(), Done | Failed):
                pieces.append(event.text)
        finally:
            job.cancel()  # a client that went away stops its generation (a no-op after Done)
        if isinstance(event, Failed):
            raise ApiError(500, event.message)
        return protocol.completion(
            rid, server.model_name, "".join(pieces), event.finish_reason, event.prompt_tokens, event.completion_tokens
        )

    return app


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 once it is longer than ``limit`` bytes (before reading it all)."""
    too_long = ApiError(413, f"the request body is over {limit / 2**20:g} MB (--max_request_mb)", code="too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_long
    data = bytearray()
    async for block in request.stream():
        data += block
        if len(data) > limit:
            raise too_long
    return bytes(data)


async def stream_events(events: asyncio.Queue, job: Job, rid: str, chat: ChatRequest) -> AsyncIterator[str]:
    """OpenAI's server-sent chunks: the role, the text pieces, the finish reason (and usage), ``[DONE]``."""
    model = chat.model
    try:
        yield protocol.chunk(rid, model, {"role": "assistant", "content": ""})
        while isinstance(event := await events.get(), Piece):
            yield protocol.chunk(rid, model, {"content": event.text})
        if isinstance(event, Failed):
            yield f"data: {json.dumps(ApiError(500, event.message).body())}\n\n"
        else:
            yield protocol.chunk(rid, model, {}, event.finish_reason)
            if chat.include_usage:
                yield protocol.chunk(
                    rid, model, {}, usage_=protocol.usage(event.prompt_tokens, event.completion_tokens)
                )
        yield protocol.DONE
    finally:
        job.cancel()  # the client went away mid-answer: its row of the batch stops at the next token


# ---------------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = command_parser("serve", __doc__)
    g = p.add_argument_group("the server")
    g.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines (default: this one only)")
    g.add_argument("--port", type=int, default=8000, help="port to serve on")
    g.add_argument("--served_model_name", help="the model's name in the API (default: the folder's)")
    g.add_argument("--api_key_env", help="name of the environment variable holding the API key")
    g.add_argument("--allowed_local_media_path", help="folder whose videos and feature files requests "
                   "may name by path or file:// URL (default: none; inline data: videos only)")  # fmt: skip
    g.add_argument("--max_video_seconds", type=float, default=DEFAULT_MAX_VIDEO_SECONDS)
    g.add_argument("--max_batch_size", type=int, default=8, help="requests generated together in one batch")
    g.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond this are refused with 503")
    g.add_argument("--max_request_mb", type=float, default=DEFAULT_MAX_REQUEST_MB, help="larger bodies: 413")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: the model in this process; vllm: "
        "a vLLM server over the export-lm folder named by --model_name_or_path (docs/vllm.md)",
    )
    g.add_argument("--vllm_url", help="--backend vllm: vLLM's OpenAI base URL, e.g. http://127.0.0.1:8001/v1")
    g.add_argument(
        "--vllm_model",
        help="--backend vllm: the name vLLM serves the export under (its --served-model-name; default: the folder as given)",
    )
    g.add_argument("--vllm_api_key_env", help="--backend vllm: environment variable with vLLM's --api-key")
    g.add_argument("--vllm_timeout", type=float, default=600.0, help="--backend vllm: seconds per request, in all")
    add_model_flags(p)
    return p


def check_server_flags(args: argparse.Namespace) -> str | None:
    """One-line errors for the server's own flags; returns the API key (None: no key check)."""
    for flag in ("max_batch_size", "max_queue"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    for flag in ("max_video_seconds", "max_request_mb"):
        value = getattr(args, flag)
        if not value > 0 or value == float("inf"):
            raise UserError(f"--{flag} {value}: must be a positive number")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: must be from 0 to 65535")
    if args.allowed_local_media_path is not None and not Path(args.allowed_local_media_path).is_dir():
        raise UserError(f"--allowed_local_media_path {args.allowed_local_media_path}: no such folder")
    if args.api_key_env is None:
        return None
    key = os.environ.get(args.api_key_env, "")
    if not key.strip():
        raise UserError(f"--api_key_env {args.api_key_env}: that environment variable is not set (or empty)")
    return key.strip()


def vllm_backend(args: argparse.Namespace) -> VllmServeBackend:
    """``--backend vllm``: the export folder's prompts and tower here, generation in vLLM (one line for a folder that
    is not an ``export-lm`` output, or a vLLM key variable that is not set)."""
    key = None
    if args.vllm_api_key_env:
        key = os.environ.get(args.vllm_api_key_env, "").strip()
        if not key:
            raise UserError(f"--vllm_api_key_env {args.vllm_api_key_env}: that environment variable is not set")
    client = VllmBackend(args.vllm_url, args.vllm_model or args.model_name, args.model_name, key, args.vllm_timeout)
    return VllmServeBackend(client, args.max_batch_size, args.max_queue, args.device)


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt serve`` (raises ``UserError``; the console command wraps it in ``run_main``)."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    api_key = check_server_flags(args)
    if args.backend == "local":
        check_model_flags(args)
    elif not args.vllm_url:
        raise UserError("--backend vllm needs --vllm_url (vLLM's base URL, e.g. http://127.0.0.1:8001/v1)")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UserError(f"serve needs FastAPI and uvicorn ({exc.name} is missing): pip install -e '.[serve]'") from None

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.backend == "vllm":
        backend = vllm_backend(args)
        engine = backend.engine
    else:
        engine = load_engine(**engine_kwargs(args))
        backend = LocalBackend(engine, args.max_batch_size, args.max_queue)
    server = Server(
        backend,
        args.served_model_name or Path(args.model_name).resolve().name,
        args.allowed_local_media_path,
        api_key,
        args.max_video_seconds,
        int(args.max_request_mb * 2**20),
    )
    try:
        engine.extractor  # noqa: B018 - built now, not by the first request (and not by two at once)
    except (ValueError, OSError, UserError) as exc:  # a feature-file-only server still works
        logger.warning("video_url parts cannot be decoded (only video_features parts): %s", exc)
    logger.info(
        "serving %r on http://%s:%d/v1 (batches up to %d, queue %d, key check %s)", server.model_name, args.host,
        args.port, args.max_batch_size, args.max_queue, "on" if api_key else "off",
    )  # fmt: skip
    try:
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="info")
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt serve"))
