"""``video-chatgpt apply-delta``: base LLaMA-7B + LLaVA delta -> LLaVA-Lightning-7B-v1-1, in bounded memory.

The documented command (``python scripts/apply_delta.py`` is this same command)::

    python scripts/apply_delta.py \\
        --base-model-path <LLaMA-7B in Hugging Face format> \\
        --target-model-path LLaVA-Lightning-7B-v1-1 \\
        --delta-path liuhaotian/LLaVA-Lightning-7B-delta-v1-1

``--delta-path`` (and ``--base-model-path``) may be a local folder or a hub id; a hub id is taken from the local
Hugging Face cache, or downloaded into it when the hub can be reached and ``HF_HUB_OFFLINE`` is not set.

Gives the same tensors as the original ``apply_delta.py`` (rules in ``video_chatgpt.weights.delta``; fp16 output),
but streams tensor by tensor instead of loading both 7B models (~27 GB of RAM): peak memory is a few shards.
The target gets sharded safetensors (``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``),
the delta's ``config.json`` (its ``model_type`` and ``mm_*`` keys kept), ``generation_config.json`` and tokenizer
files. It is written into a hidden ``.<target>.partial-*`` folder next to the target and renamed when complete.

Raises / exits 1 with a one-line message naming file and tensor for: a base that already has a projector (a LLaVA
folder instead of LLaMA), base and delta the same folder, a base that is a file (e.g. ``video_chatgpt-7B.bin``),
missing shards, Git LFS pointer files, shapes that differ other than the vocabulary rows, non-float dtypes, delta
tensors the base lacks (other than the projector), a hub id that is neither cached nor downloadable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.errors import run_main
from video_chatgpt.weights.delta import DeltaResult, Log, combine_folders
from video_chatgpt.weights.hub import resolve_model_folder
from video_chatgpt.weights.writer import DEFAULT_MAX_SHARD_SIZE, parse_size


def apply_delta(
    base_model_path: str | Path,
    target_model_path: str | Path,
    delta_path: str | Path,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    local_files_only: bool | None = None,
    log: Log | None = None,
) -> DeltaResult:
    """Write ``target = base + delta`` (LLaVA rules, fp16) into ``target_model_path``. Raises ``WeightsError``."""
    base = resolve_model_folder(base_model_path, "--base-model-path", local_files_only=local_files_only)
    delta = resolve_model_folder(delta_path, "--delta-path", local_files_only=local_files_only)
    return combine_folders(
        delta,
        base,
        Path(target_model_path),
        subtract=False,
        roles=("delta", "base", "target"),
        flags=("--delta-path", "--base-model-path", "--target-model-path"),
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        log=log,
    )


def delta_parser(command: str, description: str, target: str, delta: str, example: str, output: str):
    """The flags of apply-delta / make-delta (the same flags; the help of the target, delta and output differs)."""
    p = command_parser(command, description)
    p.add_argument(
        "--base-model-path",
        "--base_model_path",
        type=str,
        required=True,
        help="Hugging Face-format LLaMA-7B folder (or hub id)",
    )
    p.add_argument("--target-model-path", "--target_model_path", type=str, required=True, help=target)
    p.add_argument("--delta-path", "--delta_path", type=str, required=True, help=delta)
    p.add_argument(
        "--max-shard-size",
        "--max_shard_size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest output file{example} (default {DEFAULT_MAX_SHARD_SIZE}; does not change memory use)",
    )
    p.add_argument("--overwrite", action="store_true", help=f"replace a non-empty {output} folder")
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    return p


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = delta_parser(
        "apply-delta",
        "base LLaMA + LLaVA delta -> LLaVA weights (bounded memory)",
        target="output folder",
        delta="delta folder or hub id, e.g. liuhaotian/LLaVA-Lightning-7B-delta-v1-1",
        example=", e.g. 2GB, 500MB",
        output="target",
    )
    p.prog = prog or p.prog
    return p


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cli(argv: list[str] | None, parser: argparse.ArgumentParser, func) -> int:
    """Shared shell of apply-delta / make-delta: parse, run, print progress and warnings. Returns the exit status.

    Errors (``WeightsError`` is a ``UserError``) go up to ``video_chatgpt.errors.run_main``, which prints one line.
    """
    args = parse_args_or_status(parser, argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    try:
        parse_size(args.max_shard_size)
    except ValueError as exc:  # a usage error: argparse's format and status 2
        parser.print_usage(sys.stderr)
        _stderr(f"{parser.prog}: error: --max-shard-size: {exc}")
        return 2
    log = (lambda m: _stderr(m) if m.startswith("warning") else None) if args.quiet else _stderr
    func(
        args.base_model_path,
        args.target_model_path,
        args.delta_path,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        log=log,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt apply-delta`` (raises ``UserError``; the console command and the script wrap it in
    ``run_main``)."""
    return run_cli(argv, build_parser(), apply_delta)


if __name__ == "__main__":
    sys.exit(run_main(main, None, "apply-delta"))
