"""``video-chatgpt data <check|inspect|import|generate> ...``: check and import training data, or generate it.

Run::

    video-chatgpt data check --data_path video_chatgpt_training.json --video_folder clip_features/
    video-chatgpt data check --data_path ... --video_folder ... \\
        --model_name_or_path LLaVA-7B-Lightening-v1-1 --model_max_length 2048   # + token lengths, truncation
    video-chatgpt data check ... --quick     # values (NaN/inf) of a sample of 16 files only, not of every file
    video-chatgpt data check ... --json      # machine-readable report on stdout
    video-chatgpt data inspect ...           # see video_chatgpt.data.inspect
    video-chatgpt data import --format llava|sharegpt|qwen --input X --output_json Y   # video_chatgpt.data.importers
    video-chatgpt data generate --video_dir videos/ --output_json qa.json --vlm_model M   # video_chatgpt.data.generate

What ``data check`` finds, and how (every file's header, by default every file's values too): ``data.check``.
With ``--model_name_or_path`` the model's ``config.json`` gives the feature width (``mm_hidden_size``) and the vision
tower (``mm_vision_tower``) that the feature folder's manifest is checked against.

``data check`` exits 0 when training can run on the data (warnings included), 1 when it would fail or a file or
folder it needs is unusable (one line, as every command), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status, parse_bool
from video_chatgpt.bases import Base, open_base
from video_chatgpt.constants import DEFAULT_MODEL_MAX_LENGTH
from video_chatgpt.data.check import DEFAULT_FEATURE_DTYPE, DEFAULT_MAX_LISTED, check_training_data
from video_chatgpt.data.generate import main as generate_main
from video_chatgpt.data.importers import main as import_main
from video_chatgpt.errors import UserError, run_main

USAGE = "usage: video-chatgpt data {check,inspect,import,generate} [flags]   (video-chatgpt data check --help)"


def build_check_parser() -> argparse.ArgumentParser:
    p = command_parser("data check", "Check training data before training.")
    p.add_argument("--data_path", required=True, help="the training JSON (output of the converter)")
    p.add_argument(
        "--features_dir",
        "--video_folder",
        dest="video_folder",
        required=True,
        help="folder of the .pkl/.npy feature files",
    )
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
    values = p.add_mutually_exclusive_group()
    values.add_argument("--quick", action="store_true", help="read the values of a sample of 16 files, not all")
    values.add_argument("--deep", action="store_true", help="read the values of every file (the default)")
    p.add_argument(
        "--stage",
        choices=("pretrain", "finetune"),
        default=None,
        help="as in training: the template of the token lengths (pretrain: plain)",
    )
    p.add_argument("--num_workers", type=int, default=None, help="threads (default: CPU count, at most 16)")
    p.add_argument("--max_listed", type=int, default=DEFAULT_MAX_LISTED, help="findings listed per kind")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return p


def open_model_folder(model_folder: str | None) -> Base | None:
    """The ``--model_name_or_path`` folder as training resolves it (None when not given)."""
    if model_folder is None:
        return None
    if not Path(model_folder).is_dir():
        raise UserError(f"--model_name_or_path {model_folder}: no such folder; pass the base model folder")
    return open_base(model_folder)


def check_main(argv: list[str]) -> int:
    args = parse_args_or_status(build_check_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    base = open_model_folder(args.model_name_or_path)
    try:
        report = check_training_data(
            args.data_path,
            args.video_folder,
            base=base,
            model_max_length=args.model_max_length if args.model_name_or_path else None,
            expected_width=args.expected_width if args.expected_width is not None else base and base.feature_width,
            deep=not args.quick,
            num_workers=args.num_workers,
            num_video_tokens=args.num_video_tokens,
            expected_dtype=None if args.expected_dtype == "any" else args.expected_dtype,
            use_vid_start_end=args.mm_use_vid_start_end,
            vision_tower=base and base.vision_tower,
            stage=args.stage,
        )
    except UserError:  # already one line naming the file
        raise
    except ValueError as exc:  # e.g. a --model_name_or_path whose tokenizer does not load
        raise UserError(f"--model_name_or_path {args.model_name_or_path}: {exc}") from exc
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
    if sub == "import":
        return import_main(rest)
    if sub == "generate":
        return generate_main(rest)
    print(f"video-chatgpt data: unknown subcommand {sub!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt data"))
