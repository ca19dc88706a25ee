"""``video-chatgpt <command> [flags]``: one console command, a name -> function map over the pipeline stages.

Every command is ``module:main(argv) -> exit status``; modules are imported only when their command runs, so
``video-chatgpt --help`` is instant. ``video-chatgpt <command> --help`` shows each command's flags.
"""

from __future__ import annotations

import importlib
import sys

from video_chatgpt.errors import run_main

# name -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "apply-delta": (
        "video_chatgpt.weights.apply_delta:main",
        "base LLaMA + LLaVA delta -> LLaVA weights (bounded memory)",
    ),
    "make-delta": ("video_chatgpt.weights.make_delta:main", "target - base -> a delta folder (inverse of apply-delta)"),
    "check-weights": (
        "video_chatgpt.weights.check:main",
        "check that a folder is a usable LLaVA-7B-Lightening-v1-1 base",
    ),
    "convert": ("video_chatgpt.data.convert:main", "VideoInstruct JSON -> training JSON"),
    "data": (
        "video_chatgpt.data.cli:main",
        "data check | inspect | import | generate: check data; import LLaVA, ShareGPT, Qwen-VL; generate QA",
    ),
    "extract-features": ("video_chatgpt.features.extract:main", "videos -> spatio-temporal CLIP feature files"),
    "train": ("video_chatgpt.train.train:main", "train Video-ChatGPT (same flags as video_chatgpt/train/train_mem.py)"),
    "report": ("video_chatgpt.train.report:main", "write training_report.md and loss.png for a run folder"),
    "merge-lora": ("video_chatgpt.train.merge_lora:main", "fold a LoRA run's adapter into its base: one model folder"),
    "export-lm": (
        "video_chatgpt.model.export:main",
        "a run's language model as a plain causal-LM folder (LoRA merged) + projector, for vLLM",
    ),
    "plan-memory": (
        "video_chatgpt.train.memory:main",
        "peak GPU memory of a training step by part; largest batch that fits",
    ),
    "chat": ("video_chatgpt.inference.chat:main", "ask a trained model about a video"),
    "demo": ("video_chatgpt.inference.demo:main", "web demo: chat about an uploaded video in the browser (gradio)"),
    "predict": ("video_chatgpt.inference.predict:main", "batch prediction over a benchmark question file"),
    "serve": ("video_chatgpt.serve.app:main", "OpenAI-compatible API server (video chat completions, batched)"),
    "evaluate": ("video_chatgpt.eval.evaluate:main", "score predictions with an LLM judge (VCGBench, zero-shot QA)"),
    "benchmark": (
        "video_chatgpt.eval.benchmark:main",
        "predict + evaluate every benchmark file of a folder; one table",
    ),
    "sample": ("video_chatgpt.sample.cli:main", "sample models | sample world: the tiny offline sample"),
    "quickstart": ("video_chatgpt.quickstart:main", "the whole pipeline on the bundled sample"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: video-chatgpt <command> [flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"video-chatgpt: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    prog = f"video-chatgpt {name}"
    # The import is inside the error path too: a broken install should read as one line, not a traceback.
    return run_main(lambda args: getattr(importlib.import_module(module_name), func_name)(args), rest, prog)


if __name__ == "__main__":
    sys.exit(main())
