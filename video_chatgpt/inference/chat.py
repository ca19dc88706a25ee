"""``video-chatgpt chat``: ask a trained Video-ChatGPT about a video.

    video-chatgpt chat --model_name_or_path LLaVA-7B-Lightening-v1-1 --projection_path video_chatgpt-7B.bin \\
        --video_path video.mp4 --question "What is happening in this video?"
    video-chatgpt chat --model_name_or_path ./Video-ChatGPT_7B-1.1_Checkpoints --video_path video.mp4   # our output folder
    video-chatgpt chat --model_name_or_path ... --projection_path ... --features_path v_abc.pkl            # a feature file
    video-chatgpt chat --model_name_or_path LLaVA-7B-Lightening-v1-1 --projection_path run/mm_projector.bin \\
        --lora_path run --video_path video.mp4                  # a LoRA run's adapter on the base

Without ``--question`` it reads one question per line from standard input until EOF (or an empty line). Answers are
printed as they are generated.
``--temperature`` 0.2 samples as the original did; 0 is greedy (deterministic); ``--seed`` makes sampling repeatable.
``--prompt_ids original`` gives the original inference's prompt ids (2 tokens longer) to reproduce published answers.

Every input is checked before the model loads (one line naming the file, exit 1): the model folder, its tokenizer
and weight shards (Git LFS pointers included), the projector, the video or feature file; features are refused when
their width is not the projector's or their row count is not the model's video token count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.decode import VideoDecodeError
from video_chatgpt.features.encoder import video_tokens
from video_chatgpt.features.store import FeatureFileError, load_features
from video_chatgpt.features.towers import resolve_tower
from video_chatgpt.inference.engine import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, load_engine
from video_chatgpt.inference.flags import add_model_flags, check_model_flags, engine_kwargs, need_file


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("chat", __doc__)
    add_model_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_path", help="video file; features are computed on the fly")
    src.add_argument("--features_path", help="a precomputed feature file (.pkl/.npy) instead of a video")
    p.add_argument("--question", default=None, help="one question; without it, questions are read from stdin")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy (deterministic)")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens")
    p.add_argument("--seed", type=int, default=None, help="makes sampling (temperature > 0) repeatable")
    return p


def expected_video_tokens(engine) -> tuple[int | None, str]:
    """(rows a feature array must have, where that number comes from), or (None, why it cannot be known)."""
    recorded = engine.model.config.video_token_len
    if recorded:
        return int(recorded), "the training run's video_token_len"
    try:
        spec = resolve_tower(engine.vision_tower)
    except (UserError, OSError, ValueError):
        return None, f"the vision tower {engine.vision_tower} is not available here"
    return video_tokens(spec, engine.num_frames), f"{engine.num_frames} frames + the spatial tokens of {spec.name}"


def check_features(features: np.ndarray, engine, path: Path) -> None:
    """Refuse features the model cannot read as one video: the width its projector reads, the row count of its
    video span (``video_token_len``)."""
    width = engine.model.config.mm_hidden_size
    if features.ndim != 2 or features.shape[1] != width:
        raise UserError(
            f"--features_path {path}: features of shape {tuple(features.shape)}, but the model's projector reads "
            f"(tokens, {width}); extract them with the model's vision tower ({engine.vision_tower})"
        )
    expected, source = expected_video_tokens(engine)
    if expected is None:
        print(f"video-chatgpt chat: warning: the feature row count is not checked: {source}", file=sys.stderr)
    check_rows(f"--features_path {path}", features.shape[0], expected, source)


def check_rows(where: str, rows: int, expected: int | None, source: str) -> None:
    """Refuse features of ``rows`` rows when the model takes ``expected`` video tokens (``expected_video_tokens``)."""
    if expected is not None and rows != expected:
        raise UserError(
            f"{where}: {rows} feature rows, but the model takes {expected} video tokens ({source}); extract the "
            f"features with the model's vision tower and --num_frames"
        )


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt chat`` (raises ``UserError``; the console command wraps it in ``run_main``)."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    # Every input checked before the model is loaded.
    check_model_flags(args)
    if args.video_path:
        source = need_file(args.video_path, "--video_path", "a video file (.mp4, .mkv, ...)")
    else:
        source = need_file(args.features_path, "--features_path", "a feature file (.pkl/.npy)")
        try:
            features = load_features(source)
        except FeatureFileError as exc:
            raise UserError(f"--features_path {exc}") from None

    engine = load_engine(**engine_kwargs(args))
    if args.video_path:
        try:
            features = engine.video_features(source)
        except VideoDecodeError as exc:
            raise UserError(f"--video_path {source}: {exc}") from None
    else:
        check_features(features, engine, source)

    def ask(question: str) -> None:
        pieces = engine.stream(
            question, features, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
        )
        for piece in pieces:  # the answer as it is generated; joined, it is engine.answer's text
            print(piece, end="", flush=True)
        print(flush=True)

    if args.question is not None:
        ask(args.question)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("question> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        ask(line.strip())


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt chat"))
