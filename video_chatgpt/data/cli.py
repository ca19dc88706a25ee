"""``video-chatgpt data <check|inspect> ...``: look at the training data before training.

Run::

    video-chatgpt data check --data_path video_chatgpt_training.json --video_folder clip_features/
    video-chatgpt data check --data_path ... --video_folder ... \\
        --model_name_or_path LLaVA-7B-Lightening-v1-1 --model_max_length 2048   # + token lengths, truncation
    video-chatgpt data check ... --deep      # load every feature file, not only the headers and a sample
    video-chatgpt data check ... --json      # machine-readable report on stdout
    video-chatgpt data inspect ...           # see video_chatgpt.data.inspect

``data check`` exits 0 when training can run on the data (warnings included), 1 when it would fail, 2 on bad flags
or an unusable tokenizer folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from video_chatgpt.cli import parse_args_or_status, parse_bool
from video_chatgpt.data.check import DEFAULT_FEATURE_DTYPE, DEFAULT_MAX_LISTED, check_training_data

# The original's default for --model_max_length (train.py); the check only uses it with a tokenizer.
DEFAULT_MODEL_MAX_LENGTH = 2048
USAGE = "usage: video-chatgpt data {check,inspect} [flags]   (video-chatgpt data check --help)"


def build_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="video-chatgpt data check", description="Check training data before training.")
    p.add_argument("--data_path", required=True, help="the training JSON (output of the converter)")
    p.add_argument("--video_folder", required=True, help="folder of the .pkl/.npy feature files")
    p.add_argument("--model_name_or_path", default=None, help="model folder whose tokenizer gives token lengths")
    p.add_argument("--model_max_length", type=int, default=DEFAULT_MODEL_MAX_LENGTH, help="as in training")
    p.add_argument("--expected_width", type=int, default=None, help="feature width the projector reads")
    p.add_argument("--num_video_tokens", type=int, default=None, help="feature rows the model expects")
    p.add_argument(
        "--expected_dtype", default=DEFAULT_FEATURE_DTYPE, help="feature dtype; 'any' accepts one shared by all"
    )
    p.add_argument(
        "--mm_use_vid_start_end",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
        help="video span with <vid_start>/<vid_end>, as the documented recipe (default True)",
    )
    p.add_argument("--deep", action="store_true", help="load every feature file fully (slower)")
    p.add_argument("--num_workers", type=int, default=None, help="threads (default: CPU count, at most 16)")
    p.add_argument("--max_listed", type=int, default=DEFAULT_MAX_LISTED, help="findings listed per kind")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return p



def check_main(argv: list[str]) -> int:
    args = parse_args_or_status(build_check_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    try:
        report = check_training_data(
            args.data_path,
            args.video_folder,
            tokenizer_path=args.model_name_or_path,
            model_max_length=args.model_max_length if args.model_name_or_path else None,
            expected_width=args.expected_width,
            deep=args.deep,
            num_workers=args.num_workers,
            num_video_tokens=args.num_video_tokens,
            expected_dtype=None if args.expected_dtype == "any" else args.expected_dtype,
            use_vid_start_end=args.mm_use_vid_start_end,
        )
    except (OSError, ValueError) as exc:  # e.g. a --model_name_or_path without a tokenizer
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.format(max_listed=args.max_listed))
    return 1 if report.fatal else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    if sub == "check":
        return check_main(rest)
    if sub == "inspect":
        # Imported only here: it is another module's command, with its own dependencies.
        return int(importlib.import_module("video_chatgpt.data.inspect").main(rest) or 0)
    print(f"video-chatgpt data: unknown subcommand {sub!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
