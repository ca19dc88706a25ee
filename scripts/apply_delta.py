"""Apply the LLaVA delta to LLaMA-7B (the documented entry point; same as ``video-chatgpt apply-delta``).

Run from the repository root, installed or not::

    python scripts/apply_delta.py \\
        --base-model-path <LLaMA-7B in Hugging Face format> \\
        --target-model-path LLaVA-Lightning-7B-v1-1 \\
        --delta-path liuhaotian/LLaVA-Lightning-7B-delta-v1-1

See ``video_chatgpt/weights/apply_delta.py`` for what it does and the optional flags.
"""

import sys
from pathlib import Path

try:
    import video_chatgpt  # noqa: F401  (installed, or run from the repository root)
except ImportError:
    # Not installed: use the package next to this script.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video_chatgpt.errors import run_main  # noqa: E402
from video_chatgpt.weights.apply_delta import apply_delta, build_parser, run_cli  # noqa: E402

PROG = "scripts/apply_delta.py"


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, build_parser(prog=PROG), apply_delta)


if __name__ == "__main__":
    # The same one-line errors and exit statuses as `video-chatgpt apply-delta` (traceback with --debug).
    sys.exit(run_main(main, None, PROG))
