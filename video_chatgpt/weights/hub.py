"""A model argument that is a local folder or a Hugging Face hub id (``liuhaotian/LLaVA-Lightning-7B-delta-v1-1``).

``resolve_model_folder`` returns a local folder: the path itself when it exists; else, for a hub id, the snapshot
in the local Hugging Face cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); else, when downloads are
allowed and the hub can be reached, it downloads into that cache as ``from_pretrained`` would. When none of these
works, the ``WeightsError`` says what to download, with which command, and where to put it.
"""

from __future__ import annotations

import re
from pathlib import Path

from video_chatgpt.weights.checkpoint import WeightsError

# owner/name, as the hub allows (letters, digits, '-', '_', '.'); a path that does not exist can look the same,
# so the message covers both readings.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*")

# What a model folder needs from a hub repo (weights, config, tokenizer); leaves out TF/Flax/ONNX copies.
DOWNLOAD_PATTERNS = ["*.json", "*.model", "*.safetensors", "*.bin", "*.txt", "*.py"]


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face cache folder used for look-ups (``HF_HUB_CACHE`` / ``HF_HOME``, read by huggingface_hub)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: no network look-up is even tried."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def not_found_message(text: str, flag: str, cache: Path, reason: str) -> str:
    repo_dir = "models--" + text.replace("/", "--")
    return (
        f"{flag} {text!r} is not a local folder, and the hub model {text!r} is not in the local Hugging Face "
        f"cache ({cache}){reason}.\n"
        f"Download it on a machine with network access, then either\n"
        f"  * put it in the cache: `hf download {text}` fills ~/.cache/huggingface/hub/{repo_dir}; copy that folder "
        f"to {cache}/{repo_dir} here (or set HF_HUB_CACHE to the cache folder that holds it), and run this again; or\n"
        f"  * make a plain folder: `hf download {text} --local-dir <folder>` (or `git lfs clone "
        f"https://huggingface.co/{text} <folder>`) and pass {flag} <folder>."
    )


def resolve_model_folder(
    text: str | Path,
    flag: str = "--model-path",
    *,
    local_files_only: bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Local folder for ``text`` (a path or a hub id). ``flag`` names the argument in messages.

    ``local_files_only=None`` means: only the cache when ``HF_HUB_OFFLINE`` is set, else try the hub too.
    Raises ``WeightsError`` when it cannot be found.
    """
    path = Path(text).expanduser()
    if path.exists():
        return path
    text = str(text)
    if not looks_like_hub_id(text):
        raise WeightsError(f"{flag} {text}: no such file or folder")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache_dir(cache_dir)
    try:
        return Path(snapshot_download(text, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    offline = hub_offline() if local_files_only is None else local_files_only
    if offline:
        raise WeightsError(not_found_message(text, flag, cache, " (downloads are off: HF_HUB_OFFLINE or local only)"))
    try:
        return Path(snapshot_download(text, cache_dir=cache_dir, allow_patterns=DOWNLOAD_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        # No network (connection errors surface as LocalEntryNotFoundError/OSError), a gated or unknown repo (HTTP).
        detail = str(exc).splitlines()[0] if str(exc) else ""
        reason = f", and it cannot be downloaded now ({type(exc).__name__}: {detail})"
        raise WeightsError(not_found_message(text, flag, cache, reason)) from exc
