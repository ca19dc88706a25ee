"""``video-chatgpt demo``: chat with a trained Video-ChatGPT about a video, in the browser (gradio).

    video-chatgpt demo --model_name_or_path ./Video-ChatGPT_7B-1.1_Checkpoints               # our training output folder
    video-chatgpt demo --model_name_or_path LLaVA-7B-Lightening-v1-1 --projection_path video_chatgpt-7B.bin --port 7860
    video-chatgpt demo --model_name_or_path runs/quickstart/Video-ChatGPT_7B-1.1_Checkpoints \\
        --vision_tower runs/quickstart/models/clip-vit-tiny --examples runs/quickstart/world/videos/test

then open http://127.0.0.1:7860 (``--host 0.0.0.0`` to serve other machines). ``make quickstart`` prints the third
command with its own paths.

One page: upload a video (or pick an example: ``--examples`` files or folders), watch it, and ask questions about
it in a multi-turn chat. The model is loaded once; a video's features are computed once, when it is chosen; answers
stream token by token; the conversation is rendered as the original demo does, so the first answer at
``--temperature 0`` is ``video-chatgpt chat --temperature 0``'s. Bad input never stops the server; it is explained on
the page: a file that is not a video, is damaged or empty, a video over ``--max_video_seconds``,
``--max_video_frames`` or ``--max_video_pixels`` (read from the container before anything is decoded), a file with
sound but no picture, a question before a video. Videos the browser cannot play (e.g. MPEG-4 part 2 in .mp4) are
shown through a small VP8 preview; the features are always computed from the file itself. More: docs/demo.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import VIDEO_PLACEHOLDER, VIDEO_SUFFIXES
from video_chatgpt.errors import UserError
from video_chatgpt.features.decode import DECODE_ERRORS
from video_chatgpt.inference.engine import DEFAULT_TEMPERATURE, Engine, PromptTooLong, load_engine
from video_chatgpt.inference.flags import add_model_flags, check_model_flags, engine_kwargs

logger = logging.getLogger(__name__)

# The original demo's controls: temperature 0.2 (DEFAULT_TEMPERATURE, as its inference), max new tokens 512
# (slider up to 1536; video_demo.py:179-181).
DEFAULT_MAX_NEW_TOKENS = 512
MAX_NEW_TOKENS_LIMIT = 1536
DEFAULT_MAX_VIDEO_SECONDS = 300.0
# Frames and pixels a request may make us decode: 5 minutes at 60 fps, and a 4K frame (3840 x 2160).
DEFAULT_MAX_VIDEO_FRAMES = 18_000
DEFAULT_MAX_VIDEO_PIXELS = 3840 * 2160
MAX_EXAMPLES = 12  # example videos listed on the page (the first ones, by name)
# What a browser's <video> plays as it is (suffix, codec); anything else gets a VP8 preview.
BROWSER_SUFFIXES = (".mp4", ".m4v", ".webm")
BROWSER_CODECS = ("h264", "vp8", "vp9", "av1")
PREVIEW_HEIGHT = 360  # pixels; the preview is only for watching
PREVIEW_FPS = 10  # frames a second in the preview (a faster source is shown with frames dropped)
PREVIEW_MAX_FRAMES = 1200  # the preview stops after this many frames (2 minutes at PREVIEW_FPS)
# Seconds the page waits for the next token before it gives up (a stuck generation must not hold the queue forever).
TOKEN_TIMEOUT_S = 300.0
NO_VIDEO = "Upload a video or pick an example first, then ask about it."
QUESTION_BEFORE_VIDEO = (
    "No video yet: upload one above (or pick an example), then press Send again; your question is kept."
)


class VideoProblem(UserError):
    """A chosen file cannot be used as a video; the message is shown on the page as it is."""


# ------------------------------------------------------------------------------------------------ the video
@dataclass(frozen=True)
class VideoInfo:
    """What the page says about a video before its features are computed."""

    seconds: float
    width: int
    height: int
    codec: str
    frames: int  # the container's count (0 when it does not say)


def _duration_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # container.duration is in AV_TIME_BASE units (microseconds)
    if stream.frames and stream.average_rate:
        return float(Fraction(stream.frames) / stream.average_rate)
    return None


@dataclass(frozen=True)
class VideoLimits:
    """What one chosen video may make the server decode: its length, its frame count, its frame size."""

    seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    frames: int = DEFAULT_MAX_VIDEO_FRAMES
    pixels: int = DEFAULT_MAX_VIDEO_PIXELS  # width x height of one frame


def _frame_count(stream, seconds: float | None) -> int:
    """The container's frame count, or its length times its frame rate when it gives no count (0: unknown)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if seconds is not None and rate:
        return int(seconds * float(rate)) + 1
    return 0


def probe_video(path: str | Path, limits: VideoLimits | float, name: str | None = None) -> VideoInfo:
    """Open ``path`` as a video without decoding it; ``VideoProblem`` in plain words when it cannot be one or is
    over ``limits`` (read from the container's metadata: length, frame count or length x frame rate, frame size;
    a bare number is a limit on seconds only)."""
    import av

    path = Path(path)
    name = name or path.name
    formats = ", ".join(VIDEO_SUFFIXES)
    if not path.is_file():
        raise VideoProblem(f"{name} is not there any more; upload it again.")
    if path.stat().st_size == 0:
        raise VideoProblem(f"{name} is empty (0 bytes). Upload a video file ({formats}).")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoProblem(
            f"{name} is not a video, or it is damaged: it cannot be opened as one. Upload a video file ({formats})."
        ) from exc
    with container:
        if not container.streams.video:
            if container.streams.audio:
                raise VideoProblem(f"{name} has sound but no picture (an audio-only file). Upload a video.")
            raise VideoProblem(f"{name} has no video stream. Upload a video file ({formats}).")
        stream = container.streams.video[0]
        seconds = _duration_seconds(container, stream)
        info = VideoInfo(
            seconds or 0.0,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.codec_context.name,
            _frame_count(stream, seconds),
        )
    if not isinstance(limits, VideoLimits):
        limits = VideoLimits(seconds=float(limits))
    if seconds is not None and seconds > limits.seconds:
        raise VideoProblem(
            f"{name} is {_format_seconds(seconds)} long; this demo takes videos up to "
            f"{_format_seconds(limits.seconds)} (--max_video_seconds {limits.seconds:g}). Upload a shorter clip."
        )
    if info.frames > limits.frames:
        raise VideoProblem(
            f"{name} has {info.frames:,} frames; this demo takes videos of up to {limits.frames:,} frames "
            f"(--max_video_frames {limits.frames}). Upload a shorter clip or one with fewer frames a second."
        )
    if info.width * info.height > limits.pixels:
        raise VideoProblem(
            f"{name} is {info.width} x {info.height} = {info.width * info.height:,} pixels a frame; this demo takes "
            f"up to {limits.pixels:,} (--max_video_pixels {limits.pixels}). Upload a smaller video."
        )
    if info.width <= 0 or info.height <= 0:
        raise VideoProblem(f"{name} does not say its frame size ({info.width} x {info.height}); it is damaged.")
    return info


def _format_seconds(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{seconds:.1f} s"


def browser_playable(path: Path, info: VideoInfo) -> bool:
    return path.suffix.lower() in BROWSER_SUFFIXES and info.codec in BROWSER_CODECS


def write_preview(path: str | Path, out: Path, max_frames: int = PREVIEW_MAX_FRAMES) -> Path:
    """A VP8 .webm copy of ``path``, at most ``PREVIEW_HEIGHT`` pixels high and ``PREVIEW_FPS`` frames a second, for
    the page's player (no sound). It stops after ``max_frames`` frames: the preview is for watching, and the one
    model waits while it is made."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path)) as src, av.open(str(out), mode="w") as dst:
        stream = src.streams.video[0]
        source_rate = stream.average_rate or Fraction(25)
        rate = min(source_rate, Fraction(PREVIEW_FPS))
        height = min(PREVIEW_HEIGHT, stream.codec_context.height)
        width = round(stream.codec_context.width * height / stream.codec_context.height)
        enc = dst.add_stream("libvpx", rate=rate)
        enc.width, enc.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        enc.pix_fmt = "yuv420p"
        enc.options = {"deadline": "realtime", "cpu-used": "8", "b": "1M"}
        written = 0
        for k, frame in enumerate(src.decode(stream)):
            if int(k * rate / source_rate) < written:  # the source is faster than the preview: drop this frame
                continue
            if written >= max_frames:
                break
            img = frame.reformat(width=enc.width, height=enc.height, format="yuv420p")
            img.pts, img.time_base = written, Fraction(1, 1) / rate  # frame n at n / rate seconds
            written += 1
            for packet in enc.encode(img):
                dst.mux(packet)
        for packet in enc.encode():
            dst.mux(packet)
    return out


# ------------------------------------------------------------------------------------------------ the chat
@dataclass(frozen=True)
class Conversation:
    """One browser session's state: the chosen video, its features, and the finished turns."""

    video: str | None = None  # the name shown on the page
    features: np.ndarray | None = None  # (N, C) float16, computed once per chosen video
    turns: tuple[tuple[str, str], ...] = ()  # (question, answer) pairs, answers exactly as the model gave them
    status: str = ""  # the line about the video (its feature time), shown again after a problem is cleared


def chat_messages(turns: tuple[tuple[str, str], ...], pending: tuple[str, str] | None = None) -> list[dict]:
    """The Chatbot's messages for the finished turns and, while it streams, the current one."""
    messages = []
    for q, a in [*turns, *([pending] if pending else [])]:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages


@dataclass
class DemoBackend:
    """The page's handlers over one loaded ``Engine`` (model, projector and tower loaded once)."""

    engine: Engine
    preview_dir: Path  # where browser-playable previews are written (the server removes it when it stops)
    limits: VideoLimits = field(default_factory=VideoLimits)  # what one chosen video may make us decode
    examples: dict[str, Path] = field(default_factory=dict)  # name on the page -> file

    # -------------------------------------------------------------------------------- choosing a video
    def choose_video(
        self, path: str | Path | None, name: str | None = None
    ) -> tuple[str | None, str, list, Conversation]:
        """(video for the player, status, chat messages, new state) for a chosen file; problems go to the status."""
        if not path:
            return None, NO_VIDEO, [], Conversation()
        path = Path(path)
        name = name or path.name
        try:
            info = probe_video(path, self.limits, name)
            start = time.perf_counter()
            features = self._features(path, name)
            seconds = time.perf_counter() - start
        except VideoProblem as exc:
            logger.info("%s: refused: %s", name, exc)
            return None, f"**{exc}**", [], Conversation()
        logger.info("%s: %s, %d x %d, features in %.2f s", name, _format_seconds(info.seconds), info.width,
                    info.height, seconds)  # fmt: skip
        status = (
            f"**{name}**: {_format_seconds(info.seconds)}, {info.width} x {info.height}, {info.codec}. "
            f"Features: {features.shape[0]} video tokens in {seconds:.2f} s, computed once and reused for "
            f"every question about this video."
        )
        player = path
        if not browser_playable(path, info):
            import av

            try:
                player = write_preview(path, self.preview_dir / f"{time.time_ns()}-{path.stem}.webm")
                status += f" (Shown as a VP8 preview: browsers do not play {info.codec} video.)"
            except (av.error.FFmpegError, OSError, ValueError) as exc:  # the chat works without a picture
                logger.warning("no preview of %s: %s", path, exc)
                player = None
                status += " (The browser cannot show this video, and a preview could not be made.)"
        return (str(player) if player else None), status, [], Conversation(video=name, features=features, status=status)

    def _features(self, path: Path, name: str) -> np.ndarray:
        try:
            return self.engine.video_features(path)
        except DECODE_ERRORS as exc:  # a file that opens but cannot be decoded to the end
            raise VideoProblem(
                f"{name} could not be read as a video ({exc}). It is probably damaged; upload another copy."
            ) from exc

    def choose_upload(self, path: str | None):
        return self.choose_video(path)

    def choose_example(self, name: str):
        if name not in self.examples:
            return None, f"**There is no example called {name!r}.**", [], Conversation()
        return self.choose_video(self.examples[name], name)

    def forget_video(self, state: Conversation):
        return None, NO_VIDEO, [], Conversation()

    def clear_chat(self, state: Conversation):
        """A new conversation about the same video (its features are kept)."""
        state = replace(state, turns=())
        return [], "", state.status or NO_VIDEO, state

    # -------------------------------------------------------------------------------- asking
    def ask(
        self, question: str, state: Conversation, temperature: float, max_new_tokens: float
    ) -> Iterator[tuple[list, str, str, Conversation]]:
        """Stream the answer: yields (chat messages, question box, status, state); the last has the finished turn.

        Closing this iterator (gradio does when the page goes away or "Clear chat" cancels the request) closes the
        engine's stream, which stops generating."""
        question = (question or "").strip()
        shown = chat_messages(state.turns)
        problem = None
        if state.features is None:
            problem = QUESTION_BEFORE_VIDEO
        elif not question:
            problem = "Type a question first."
        elif VIDEO_PLACEHOLDER in question:
            problem = f"Please leave {VIDEO_PLACEHOLDER} out of the question: it marks where the video goes."
        if problem:
            yield shown, question, f"**{problem}**", state
            return
        try:
            pieces = self.engine.stream(
                question,
                state.features,
                history=state.turns,
                temperature=float(temperature),
                max_new_tokens=int(max_new_tokens),
                token_timeout=TOKEN_TIMEOUT_S,
            )
        except PromptTooLong as exc:
            status = (
                f"**This conversation is {exc.tokens} tokens long; the model reads at most {exc.limit}. "
                f"Press Clear chat to start a new one about the same video.**"
            )
            yield shown, question, status, state
            return
        answer, start = "", time.perf_counter()
        with contextlib.closing(pieces):
            for piece in pieces:
                answer += piece
                yield chat_messages(state.turns, (question, answer)), "", state.status, state
        logger.info("%s: turn %d answered (%d characters) in %.1f s", state.video, len(state.turns) + 1, len(answer),
                    time.perf_counter() - start)  # fmt: skip
        done = replace(state, turns=(*state.turns, (question, answer)))
        yield chat_messages(done.turns), "", state.status, done


# ------------------------------------------------------------------------------------------------ the page
def build_app(backend: DemoBackend, title: str, temperature: float, max_new_tokens: int):
    """The gradio Blocks page over ``backend``."""
    import gradio as gr

    # delete_cache: every hour, gradio removes the uploads and previews it holds that are older than a day.
    with gr.Blocks(title="Video-ChatGPT", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(f"# Video-ChatGPT\n{title}")
        state = gr.State(Conversation())
        with gr.Row():
            with gr.Column(scale=2):
                # The upload is a file box, and the player only shows: a browser <video> given a file it cannot play
                # (MPEG-4 part 2, the sample's codec) raises gradio's "Video not playable" error; the player gets the
                # file itself or its VP8 preview (see choose_video).
                upload = gr.File(label="Upload a video", elem_id="demo-upload", height=140)
                video = gr.Video(label="Video", interactive=False, elem_id="demo-video")
                example = gr.Textbox(visible=False)  # the clicked example's name
                examples = None
                if backend.examples:
                    examples = gr.Examples(
                        examples=[[name] for name in backend.examples],
                        inputs=[example],
                        example_labels=list(backend.examples),
                        label="Examples (click one)",
                    )
                with gr.Accordion("Generation", open=True):
                    temp = gr.Slider(0.0, 1.0, value=temperature, step=0.05, label="Temperature (0: greedy)")
                    max_new = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=max_new_tokens, step=1, label="Max new tokens")
            with gr.Column(scale=3):
                status = gr.Markdown(NO_VIDEO, elem_id="demo-status")
                chatbot = gr.Chatbot(label="Chat", elem_id="demo-chat", height=420, feedback_options=None)
                question = gr.Textbox(
                    label="Question",
                    placeholder="What colour is the moving object in the video?",
                    elem_id="demo-question",
                    lines=1,
                    max_lines=4,
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="demo-send")
                    clear = gr.Button("Clear chat", elem_id="demo-clear")
        chosen = [video, status, chatbot, state]
        # One model, one request at a time: every event that runs it shares the "model" slot of the queue.
        # After an upload the box is emptied again, so the next video is one more upload (no x to press first).
        upload.upload(backend.choose_upload, [upload], chosen, api_name="upload_video", concurrency_id="model").then(
            lambda: None, None, [upload], api_visibility="private"
        )
        if examples is not None:  # a click fills the hidden box, then the example is chosen like an upload
            examples.load_input_event.then(
                backend.choose_example, [example], chosen, api_name="choose_example", concurrency_id="model"
            ).then(lambda: None, None, [upload], api_visibility="private")
        upload.clear(backend.forget_video, [state], chosen, api_visibility="private")
        asking = [question, state, temp, max_new]
        answered = [chatbot, question, status, state]
        submit = question.submit(backend.ask, asking, answered, api_name="ask", concurrency_id="model")
        click = send.click(backend.ask, asking, answered, api_visibility="private", concurrency_id="model")
        clear.click(backend.clear_chat, [state], answered, cancels=[submit, click], api_name="clear_chat")
        # The chat box's own trash button: the same, so what the model sees is what the page shows.
        chatbot.clear(backend.clear_chat, [state], answered, cancels=[submit, click], api_visibility="private")
    return app


def queue_requests(app, max_queue: int):
    """Queue the page's requests: the model serves one at a time (every event that runs it shares the "model"
    slot, whose limit is 1); requests waiting beyond ``max_queue`` are turned away."""
    return app.queue(max_size=max_queue, default_concurrency_limit=1)


# ------------------------------------------------------------------------------------------------ the command
def find_examples(paths: list[str] | None) -> dict[str, Path]:
    """Example videos by name: the given files and the videos in the given folders (none when not given)."""
    if not paths:
        return {}
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"--examples {p}: no such file or folder; name video files or folders of videos")
    return {f.name: f.resolve() for f in files[:MAX_EXAMPLES]}


def served_paths(examples: dict[str, Path], previews: Path) -> list[str]:
    """What gradio may serve from the disk: each example file itself (not its folder: a secret beside an example
    stays private) and the demo's own preview folder."""
    return sorted({str(p.resolve()) for p in examples.values()} | {str(previews.resolve())})


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("demo", __doc__)
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    for flag, kind, default, metavar, refused in (
        ("--max_video_seconds", float, DEFAULT_MAX_VIDEO_SECONDS, "S", "longer videos are refused on the page"),
        ("--max_video_frames", int, DEFAULT_MAX_VIDEO_FRAMES, "N", "videos with more frames are refused"),
        ("--max_video_pixels", int, DEFAULT_MAX_VIDEO_PIXELS, "N", "larger frames (width x height) are refused"),
    ):
        p.add_argument(flag, type=kind, default=default, metavar=metavar, help=refused)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="the page's initial temperature")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"the page's initial max new tokens (1 to {MAX_NEW_TOKENS_LIMIT})",
    )
    p.add_argument(
        "--examples", nargs="*", help="example videos or folders of them, shown under the upload box (default: none)"
    )
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond this are turned away")
    return p


def flag_problem(args: argparse.Namespace) -> str | None:
    if not 0 < args.max_video_seconds < float("inf"):
        return f"--max_video_seconds must be positive and finite, got {args.max_video_seconds:g}"
    for flag in ("max_video_frames", "max_video_pixels"):
        if getattr(args, flag) <= 0:
            return f"--{flag} must be positive, got {getattr(args, flag)}"
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return f"--max_new_tokens must be 1 to {MAX_NEW_TOKENS_LIMIT}, got {args.max_new_tokens}"
    if not 0 <= args.temperature <= 1:
        return f"--temperature must be 0 to 1, got {args.temperature:g}"
    return None


def check_port_free(host: str, port: int) -> None:
    """A one-line error naming ``--port`` when ``host:port`` is taken (gradio's own error suggests its settings)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot serve on {host}:{port} ({exc.strerror}): another program uses that port; pass --port with a "
                f"free one (e.g. --port {port + 1})"
            ) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args_or_status(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    problem = flag_problem(args)
    if problem:  # a usage error, as argparse reports one (exit status 2)
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401 (checked before the model is loaded)
    except ImportError as exc:
        raise UserError(f"the web demo needs gradio 6 ({exc}); install it with pip install -e '.[demo]'") from exc
    examples = find_examples(args.examples)
    check_port_free(args.host, args.port)  # before minutes of loading
    check_model_flags(args)
    engine = load_engine(**engine_kwargs(args))
    tower = engine.extractor  # built now, so a bad tower stops the start, not the first upload
    title = (
        f"Model `{args.model_name}`, tower `{engine.vision_tower}` ({tower.num_tokens} video tokens per video), "
        f"template `{engine.conv_mode}`, on {engine.device}."
    )
    handler = logging.StreamHandler()  # one console line per video and per answer (gradio itself is quiet)
    handler.setFormatter(logging.Formatter("%(asctime)s demo: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="video-chatgpt-demo-") as previews:
        limits = VideoLimits(args.max_video_seconds, args.max_video_frames, args.max_video_pixels)
        backend = DemoBackend(engine, Path(previews), limits, examples)
        app = build_app(backend, title, args.temperature, args.max_new_tokens)
        queue_requests(app, args.max_queue)
        print(f"video-chatgpt demo: serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        app.launch(
            server_name=args.host,
            server_port=args.port,
            allowed_paths=served_paths(examples, Path(previews)),
            show_error=True,
            footer_links=["api"],
            quiet=True,
        )
    return 0
