"""The documented training entry point (``video_chatgpt/train/train_mem.py``): the recipe of ``train.py``.

    python video_chatgpt/train/train_mem.py --model_name_or_path <LLaVA-7B-Lightening-v1-1> --version v1 ...
    torchrun --nproc_per_node=8 --master_port 29001 video_chatgpt/train/train_mem.py ...

The original patched LLaMA's attention with flash-attention v1 here. Current transformers has the fast kernels
built in: ``--attn_implementation sdpa`` (default) or ``flash_attention_2`` (with flash-attn installed); no patch.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (`python video_chatgpt/train/train_mem.py`): make the repository's package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from video_chatgpt.errors import run_main  # noqa: E402
from video_chatgpt.train.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, None, prog="train_mem.py"))
