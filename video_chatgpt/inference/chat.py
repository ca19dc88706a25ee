"""``video-chatgpt chat``: ask a trained Video-ChatGPT about a video.

    video-chatgpt chat --model-name LLaVA-7B-Lightening-v1-1 --projection_path video_chatgpt-7B.bin \\
        --video_path video.mp4 --question "What is happening in this video?"
    video-chatgpt chat --model-name ./Video-ChatGPT_7B-1.1_Checkpoints --video_path video.mp4   # our output folder
    video-chatgpt chat --model-name ... --projection_path ... --features_path v_abc.pkl            # a feature file

Without ``--question`` it reads one question per line from standard input until EOF (or an empty line).
``--temperature`` 0.2 samples as the original did; 0 is greedy (deterministic); ``--seed`` makes sampling repeatable.
"""

from __future__ import annotations

import argparse
import sys

import torch

from video_chatgpt.data.conversation import TEMPLATES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="video-chatgpt chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", "--model_name", dest="model_name", required=True,
                   help="base LLaVA-7B-Lightening-v1-1 folder, or a Video-ChatGPT training output folder")
    p.add_argument("--projection_path", default=None, help="mm_projector.bin / video_chatgpt-7B.bin")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_path", help="video file; features are computed on the fly")
    src.add_argument("--features_path", help="a precomputed feature file (.pkl/.npy) instead of a video")
    p.add_argument("--question", default=None, help="one question; without it, questions are read from stdin")
    p.add_argument("--conv-mode", "--conv_mode", dest="conv_mode", default="video-chatgpt_v1", choices=sorted(TEMPLATES))
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max_new_tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--vision_tower", default=None, help="default: the model config's mm_vision_tower")
    p.add_argument("--num_frames", type=int, default=None, help="frames sampled per video (default 100)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from video_chatgpt.features.store import load_features
    from video_chatgpt.inference.engine import load_engine

    engine = load_engine(
        args.model_name,
        args.projection_path,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        vision_tower=args.vision_tower,
        num_frames=args.num_frames,
        conv_mode=args.conv_mode,
    )
    features = load_features(args.features_path) if args.features_path else engine.video_features(args.video_path)

    def ask(question: str) -> None:
        answer = engine.answer(question, features, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
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
