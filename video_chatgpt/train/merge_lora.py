"""``video-chatgpt merge-lora <run> <out>``: fold a LoRA run's adapter into its base, as one complete model folder.

    video-chatgpt merge-lora ./Video-ChatGPT_7B-LoRA ./Video-ChatGPT_7B-LoRA-merged            # fp16 shards
    video-chatgpt merge-lora ./run ./merged --dtype bf16 --max_shard_size 5GB
    video-chatgpt chat --model_name_or_path ./Video-ChatGPT_7B-LoRA-merged --video_path video.mp4 --question "..."

``<run>`` is a training output folder of ``--lora_enable True`` (``adapter_model.safetensors`` +
``adapter_config.json`` + ``mm_projector.bin``, and ``video_chatgpt_base.json`` naming the base). The model is
built exactly as ``chat`` builds it from the run (base + video tokens + projector + adapter, fp32 on the CPU),
each LoRA layer is merged (W + alpha/r * B A) and the folder is written:

* the merged weights as sharded safetensors (``--dtype``, default fp16 as LLaVA's base), ``config.json``;
* the tokenizer with the video tokens (and ``tokenizer.model`` when the run has it);
* ``mm_projector.bin`` (the run's, unchanged), and ``video_chatgpt_base.json`` naming the folder itself as its base,
  so ``chat``/``predict`` load it like a training output folder, with no adapter and no other folder needed.

``<out>`` may not be, hold or sit inside the run or its base; it is written beside its place and renamed in at the
end (``files.staged_folder``, as apply-delta does); an existing ``<out>`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from video_chatgpt.args import command_parser
from video_chatgpt.bases import open_base
from video_chatgpt.constants import BASE_POINTER_FILE, PROJECTOR_FILE
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.files import check_output_folder, folder_lock, recover_killed_folder, staged_folder
from video_chatgpt.model.export import DTYPES
from video_chatgpt.model.loading import load_trained_model
from video_chatgpt.model.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, merge_adapter
from video_chatgpt.weights.writer import parse_size

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("merge-lora", __doc__.split("\n\n")[0])
    p.add_argument("run", help="LoRA training output folder (adapter_model.safetensors + mm_projector.bin)")
    p.add_argument("out", help="merged model folder to write")
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="dtype of the merged weights (default fp16)")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>")
    args = p.parse_args(argv)
    try:
        parse_size(args.max_shard_size)
    except ValueError as exc:  # a usage error: argparse's format and status 2
        p.error(f"--max_shard_size: {exc}")
    return args


def merge_run(
    run: str | Path, out: str | Path, dtype: str = "fp16", max_shard_size: str = "5GB", overwrite: bool = False
) -> Path:
    run, out = Path(run), Path(out)
    for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, PROJECTOR_FILE, BASE_POINTER_FILE):
        if not (run / name).is_file():
            raise UserError(f"{run}: no {name}; merge-lora needs the output folder of a --lora_enable True run")
    base = open_base(run)  # the pointer's base must exist (one line naming it)
    with folder_lock(out, logger.info):
        # A killed merge's leftovers are undone first (a half-written folder deleted, a replaced <out> put back), so
        # <out> is checked as it was before that run; everything is checked before the model is loaded.
        for action in recover_killed_folder(out):
            logger.info(action)
        check_output_folder(out, {"<run>": run, "the run's base": base.folder}, "<out>", overwrite)

        model, tokenizer, _ = load_trained_model(base, torch.float32)  # base + tokens + projector + adapter
        merge_adapter(model)
        model.to(DTYPES[dtype])
        with staged_folder(out) as tmp:
            # VideoChatGPTForCausalLM saves itself; any other base saves its causal LM (whose config has the mm_*
            # fields).
            saver = model if hasattr(model, "save_pretrained") else model.language_model
            saver.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if (run / "tokenizer.model").is_file():
                shutil.copyfile(run / "tokenizer.model", tmp / "tokenizer.model")
            shutil.copyfile(run / PROJECTOR_FILE, tmp / PROJECTOR_FILE)
            pointer = {"base_model": str(out.resolve()), "projector": PROJECTOR_FILE, "merged_from": str(run.resolve())}
            (tmp / BASE_POINTER_FILE).write_text(json.dumps(pointer))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = merge_run(args.run, args.out, args.dtype, args.max_shard_size, args.overwrite)
    print(f"merged {args.run} -> {out} ({args.dtype}); chat with: video-chatgpt chat --model_name_or_path {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "merge-lora"))
