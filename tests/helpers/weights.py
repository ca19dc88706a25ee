"""Model folders for the weights tests: a tiny LLaMA-like base, and every tensor of a folder read directly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from video_chatgpt.sample.models import TinyLlavaSpec, tiny_llava_state_dict, write_sharded_state_dict


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, read with the libraries directly (not our reader)."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    for f in sorted(folder.glob("*.bin")):
        state.update(torch.load(f, weights_only=True))
    return state


def write_base(path: Path, fmt: str, dtype: torch.dtype = torch.float16, num_shards: int = 3) -> Path:
    """A LLaMA-like base: same names and shapes as the tiny LLaVA minus the projector, vocabulary 32000."""
    path.mkdir(parents=True, exist_ok=True)
    state, config = tiny_llava_state_dict(TinyLlavaSpec(seed=1), vocab_size=32000)
    state = {k: v.to(dtype) for k, v in state.items() if not k.startswith("model.mm_projector.")}
    write_sharded_state_dict(state, path, num_shards=num_shards, safetensors=fmt == "safetensors")
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}, indent=2))
    return path
