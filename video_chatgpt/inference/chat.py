"""``video-chatgpt chat``: ask a trained Video-ChatGPT about a video.

    video-chatgpt chat --model-name LLaVA-7B-Lightening-v1-1 --projection_path video_chatgpt-7B.bin \\
        --video_path video.mp4 --question "What is happening in this video?"
    video-chatgpt chat --model-name ./Video-ChatGPT_7B-1.1_Checkpoints --video_path video.mp4   # our output folder
    video-chatgpt chat --model-name ... --projection_path ... --features_path v_abc.pkl            # a feature file
    video-chatgpt chat --model-name LLaVA-7B-Lightening-v1-1 --projection_path run/mm_projector.bin \
        --lora_path run --video_path video.mp4                  # a LoRA run's adapter on the base (issue 14)

Without ``--question`` it reads one question per line from standard input until EOF (or an empty line).
``--temperature`` 0.2 samples as the original did; 0 is greedy (deterministic); ``--seed`` makes sampling repeatable.
``--prompt_ids original`` gives the original inference's prompt ids (2 tokens longer) to reproduce published answers.

Every input is checked before the model loads (one line naming the file, exit 1): the model folder, its tokenizer
and weight shards (Git LFS pointers included), the projector, the video or feature file; features are refused when
their width is not the projector's or their row count is not the model's video token count.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from video_chatgpt.args import parse_args_or_status
from video_chatgpt.bases import open_base
from video_chatgpt.constants import ADAPTER_WEIGHTS_FILE
from video_chatgpt.data.conversation import TEMPLATES
from video_chatgpt.errors import UserError, run_main

# What torch.load raises on a file that is not a checkpoint (garbage, truncated, HTML error page, text).
_PROJECTOR_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
                          AttributeError, ImportError, IndexError, KeyError, TypeError)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="video-chatgpt chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model-name",
        "--model_name",
        dest="model_name",
        required=True,
        help="base LLaVA-7B-Lightening-v1-1 folder, or a Video-ChatGPT training output folder",
    )
    p.add_argument("--projection_path", default=None, help="mm_projector.bin / video_chatgpt-7B.bin")
    p.add_argument(
        "--lora_path",
        default=None,
        help="a LoRA run folder (adapter_model.safetensors + adapter_config.json) to add to the base",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_path", help="video file; features are computed on the fly")
    src.add_argument("--features_path", help="a precomputed feature file (.pkl/.npy) instead of a video")
    p.add_argument("--question", default=None, help="one question; without it, questions are read from stdin")
    p.add_argument(
        "--conv-mode", "--conv_mode", dest="conv_mode", default="video-chatgpt_v1", choices=sorted(TEMPLATES)
    )
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max_new_tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--vision_tower", default=None, help="default: the model config's mm_vision_tower")
    p.add_argument("--num_frames", type=int, default=None, help="frames sampled per video (default 100)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    p.add_argument(
        "--prompt_ids",
        choices=("ours", "original"),
        default="ours",
        help="ours: the ids the model was trained on; original: the original inference's (2 tokens "
        "longer), to reproduce published answers",
    )
    return p


def _need_file(path: str | Path, flag: str, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file; pass {what}")
    if not path.is_file():
        raise UserError(f"{flag} {path}: is a folder, not a file; pass {what}")
    return path


def check_model_inputs(
    model_name: str, projection_path: str | None, lora_path: str | None = None
) -> tuple[Path, Path | None]:
    """(base folder, projector file), checked before the model is loaded (minutes for 7B weights).

    Raises ``UserError`` (one line naming the file) for a missing model folder, a file given as the model, an
    unreadable ``video_chatgpt_base.json``, a base without tokenizer or weights (or with Git LFS pointers instead),
    and a missing, LFS-pointer or unreadable projector file, and a ``lora_path`` without an adapter.
    """
    from video_chatgpt.model.loading import read_projector_file
    from video_chatgpt.weights.check import require_tokenizer
    from video_chatgpt.weights.checkpoint import find_checkpoint, is_lfs_pointer, lfs_pointer_message

    folder = Path(model_name)
    if not folder.exists():
        raise UserError(
            f"--model-name {folder}: no such folder; pass the LLaVA-7B-Lightening-v1-1 folder or a training output "
            f"folder"
        )
    if not folder.is_dir():
        raise UserError(
            f"--model-name {folder}: is a file, not a model folder (a projector such as video_chatgpt-7B.bin goes "
            f"to --projection_path)"
        )
    resolved = open_base(folder, projection_path)
    base, projector = resolved.folder, resolved.projector_file
    require_tokenizer(base, "--model-name")
    find_checkpoint(base, "--model-name")  # weight shards present, complete, not LFS pointers
    if projector is not None:
        projector = _need_file(projector, "--projection_path", "the trained projector (mm_projector.bin)")
        if is_lfs_pointer(projector):
            raise UserError(lfs_pointer_message(projector))
        try:
            state = read_projector_file(projector)
        except _PROJECTOR_LOAD_ERRORS as exc:  # torch's own text is a paragraph about weights_only: not shown
            raise UserError(
                f"--projection_path {projector}: cannot be read as a PyTorch projector file (torch.load raised "
                f"{type(exc).__name__}; truncated or not a checkpoint); download or copy it again"
            ) from None
        if not isinstance(state, dict) or not state:
            raise UserError(f"--projection_path {projector}: holds no tensors (expected model.mm_projector.*)")
    if lora_path is not None and not Path(lora_path, ADAPTER_WEIGHTS_FILE).is_file():
        raise UserError(
            f"--lora_path {lora_path}: no {ADAPTER_WEIGHTS_FILE}; name the output folder of a "
            f"--lora_enable True training run"
        )
    return base, projector


def expected_video_tokens(engine) -> tuple[int | None, str]:
    """(rows a feature array must have, where that number comes from), or (None, why it cannot be known)."""
    recorded = engine.model.config.video_token_len
    if recorded:
        return int(recorded), "the training run's video_token_len"
    from video_chatgpt.features.encoder import video_tokens
    from video_chatgpt.features.towers import resolve_tower

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
    elif features.shape[0] != expected:
        raise UserError(
            f"--features_path {path}: {features.shape[0]} feature rows, but the model takes {expected} video tokens "
            f"({source}); extract the features with the model's vision tower and --num_frames"
        )


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt chat`` (raises ``UserError``; the console command wraps it in ``run_main``)."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    from video_chatgpt.features.decode import VideoDecodeError
    from video_chatgpt.features.store import FeatureFileError, load_features
    from video_chatgpt.inference.engine import load_engine

    # Every input checked before the model is loaded.
    check_model_inputs(args.model_name, args.projection_path, args.lora_path)
    if args.video_path:
        source = _need_file(args.video_path, "--video_path", "a video file (.mp4, .mkv, ...)")
    else:
        source = _need_file(args.features_path, "--features_path", "a feature file (.pkl/.npy)")
        try:
            features = load_features(source)
        except FeatureFileError as exc:
            raise UserError(f"--features_path {exc}") from None

    engine = load_engine(
        args.model_name,
        args.projection_path,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        vision_tower=args.vision_tower,
        num_frames=args.num_frames,
        conv_mode=args.conv_mode,
        prompt_ids=args.prompt_ids,
        lora_path=args.lora_path,
    )
    if args.video_path:
        try:
            features = engine.video_features(source)
        except VideoDecodeError as exc:
            raise UserError(f"--video_path {source}: {exc}") from None
    else:
        check_features(features, engine, source)

    def ask(question: str) -> None:
        answer = engine.answer(
            question, features, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
        )
        print(answer, flush=True)

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
