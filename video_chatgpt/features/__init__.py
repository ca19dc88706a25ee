"""Features stage: videos -> spatio-temporal CLIP tokens ``(num_frames + num_patches, width)`` float16 per video.

Modules: ``sampling`` (which frames), ``decode`` (PyAV: sampled frames reached from their keyframes, or straight
through), ``pooling`` (temporal ; spatial means, optional k x k spatial pooling), ``towers`` (CLIP, SigLIP or a LLaVA
folder's tower: geometry from the config), ``encoder`` (the tower, normalisation, ``VideoFeatureExtractor``),
``store`` (safe, bounded feature files and the folder's manifest), ``extract`` (the job behind
``scripts/save_spatio_temporal_clip_features.py`` / ``video-chatgpt extract-features``).

The public names below are imported lazily, so ``import video_chatgpt.features.store`` stays light.

    >>> from video_chatgpt.features import VideoFeatureExtractor, video_tokens
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "VideoFeatureExtractor": "video_chatgpt.features.encoder",
    "VideoDecodeError": "video_chatgpt.features.decode",
    "frame_indices": "video_chatgpt.features.sampling",
    "pool_video_features": "video_chatgpt.features.pooling",
    "load_features": "video_chatgpt.features.store",
    "save_features": "video_chatgpt.features.store",
    "FeatureFileError": "video_chatgpt.features.store",
    "read_feature_header": "video_chatgpt.features.store",
    "read_manifest": "video_chatgpt.features.store",
    "check_features_match": "video_chatgpt.features.store",
    "resolve_tower": "video_chatgpt.features.towers",
    "video_tokens": "video_chatgpt.features.encoder",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
