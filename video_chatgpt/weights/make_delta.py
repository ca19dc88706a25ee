"""``video-chatgpt make-delta``: target - base -> a delta folder, the inverse of ``apply-delta``.

Run::

    video-chatgpt make-delta \\
        --base-model-path <LLaMA-7B in Hugging Face format> \\
        --target-model-path LLaVA-Lightning-7B-v1-1 \\
        --delta-path my-llava-delta

Same rules as the original ``make_delta.py`` (``target - base`` for shared tensors in fp16; for the vocabulary
tensors the base is subtracted from the first rows and the extra rows keep the target's values; the projector is
copied as stored), streamed like apply-delta. The delta gets the target's config.json and tokenizer files, so
``apply-delta`` with the same base gives the target back (up to fp16 rounding of the subtraction and addition).
Not kept from the original: ``--hub-repo-id`` (pushing to the hub); upload the folder with ``hf upload``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from video_chatgpt.errors import run_main
from video_chatgpt.weights.apply_delta import delta_parser, run_cli
from video_chatgpt.weights.delta import DeltaResult, Log, combine_folders
from video_chatgpt.weights.hub import resolve_model_folder
from video_chatgpt.weights.writer import DEFAULT_MAX_SHARD_SIZE


def make_delta(
    base_model_path: str | Path,
    target_model_path: str | Path,
    delta_path: str | Path,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    local_files_only: bool | None = None,
    log: Log | None = None,
) -> DeltaResult:
    """Write ``delta = target - base`` (LLaVA rules, fp16) into ``delta_path``. Raises ``WeightsError``."""
    base = resolve_model_folder(base_model_path, "--base-model-path", local_files_only=local_files_only)
    target = resolve_model_folder(target_model_path, "--target-model-path", local_files_only=local_files_only)
    return combine_folders(
        target,
        base,
        Path(delta_path),
        subtract=True,
        roles=("target", "base", "delta"),
        flags=("--target-model-path", "--base-model-path", "--delta-path"),
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        log=log,
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = delta_parser(
        "make-delta",
        "target - base -> a delta folder (inverse of apply-delta)",
        target="the LLaVA model folder (or hub id)",
        delta="output folder for the delta",
        example="",
        output="delta",
    )
    p.prog = prog or p.prog
    return p


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt make-delta`` (raises ``UserError``; the console command wraps it in ``run_main``)."""
    return run_cli(argv, build_parser(), make_delta)


if __name__ == "__main__":
    sys.exit(run_main(main, None, "make-delta"))
