"""Extract the spatio-temporal CLIP features of a folder of videos (the documented entry point).

Same as ``video-chatgpt extract-features``. Run from the repository root, installed or not::

    python scripts/save_spatio_temporal_clip_features.py --video_dir_path <videos> --clip_feat_path <out dir>
    torchrun --nproc_per_node=8 scripts/save_spatio_temporal_clip_features.py --video_dir_path ... --clip_feat_path ...

Flags: ``--infer_batch`` (32), ``--vision_tower`` (openai/clip-vit-large-patch14, from the HF cache, or a folder:
CLIP, SigLIP, or a LLaVA-1.5/NeXT folder's tower), ``--num_frames`` (100), ``--spatial_pool`` (1), ``--select_layer``,
``--overwrite``, ``--feature_format pkl|npy`` (pkl), ``--device``, ``--dtype``, ``--num_workers``. Bad input: one
line and exit status 1 (``--debug`` for the traceback). See ``video_chatgpt/features/extract.py`` for what a run does.
"""

import sys
from pathlib import Path

try:
    import video_chatgpt  # noqa: F401  (installed, or run from the repository root)
except ImportError:
    # Not installed: use the package next to this script.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video_chatgpt.features.extract import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
