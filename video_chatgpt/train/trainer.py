"""``VideoChatGPTTrainer``: the Hugging Face Trainer with Video-ChatGPT's saving, resuming and throughput logs.

What a save writes (only the main process writes; ``--save_total_limit`` rotates ``checkpoint-N`` as usual):

* ``mm_projector.bin``: ``{model.mm_projector.weight, model.mm_projector.bias, model.embed_tokens.weight}`` in fp32,
  the format of the released ``video_chatgpt-7B.bin``, in the output folder and in every ``checkpoint-N``;
* ``config.json`` (``VideoChatGPTConfig``: video token ids, ``video_token_len``) and the tokenizer with the video
  tokens, so inference needs no guessing; ``video_chatgpt_base.json`` names the base model folder;
* with a frozen backbone: ``trainable.safetensors`` (only the trainable tensors, a few MB) instead of a full model,
  which is what ``checkpoint-N`` resumes from; with full fine-tuning the full model as ``save_pretrained`` writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from video_chatgpt.constants import BASE_POINTER_FILE, PROJECTOR_FILE, PROJECTOR_WEIGHT_KEY
from video_chatgpt.model.video_chatgpt import projector_state_from_state_dict

TRAINABLE_FILE = "trainable.safetensors"


class VideoChatGPTTrainer(Trainer):
    def __init__(self, *args, base_model_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_model_path = base_model_path
        self._tokens_since_log = 0
        self._samples_since_log = 0
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------------------------------------- logging
    def _inner_training_loop(self, *args, **kwargs):
        # Throughput counts start when the loop starts (not at construction: setup and checkpoint loading excluded).
        self._tokens_since_log = self._samples_since_log = 0
        self._last_log_time = time.perf_counter()
        return super()._inner_training_loop(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Count real (non-padding) tokens and samples for tokens/s and samples/s, on this process.
        self._tokens_since_log += int(inputs["attention_mask"].sum())
        self._samples_since_log += int(inputs["input_ids"].shape[0])
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._samples_since_log:
            now = time.perf_counter()
            elapsed = max(now - self._last_log_time, 1e-9)
            world = self.args.world_size
            logs["tokens_per_second"] = round(self._tokens_since_log * world / elapsed, 1)
            logs["samples_per_second"] = round(self._samples_since_log * world / elapsed, 3)
            if torch.cuda.is_available():
                logs["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self._tokens_since_log = self._samples_since_log = 0
            self._last_log_time = now
        super().log(logs, start_time)

    # -------------------------------------------------------------------------------------------------- saving
    def _trainable_names(self) -> list[str]:
        model = self.accelerator.unwrap_model(self.model)
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def _frozen_backbone(self) -> bool:
        model = self.accelerator.unwrap_model(self.model)
        return any(not p.requires_grad for p in model.parameters())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if self._frozen_backbone():
            params = dict(model.named_parameters())
            trainable = {n: params[n].detach().float().cpu().contiguous() for n in self._trainable_names()}
            save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE), metadata={"format": "pt"})
            model.config.save_pretrained(output_dir)
        else:
            super()._save(output_dir, state_dict=state_dict)
        if state_dict is not None and PROJECTOR_WEIGHT_KEY in state_dict:  # DeepSpeed / FSDP gathered weights
            rows = getattr(model.model, "video_token_embed_ids", None)
            artefact = projector_state_from_state_dict(state_dict, None if rows is None else rows.tolist())
        else:
            artefact = model.projector_state_dict()
        torch.save(artefact, os.path.join(output_dir, PROJECTOR_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.base_model_path is not None and Path(self.base_model_path, "tokenizer.model").is_file():
            # The SentencePiece file gives the original's token ids (see data/tokenizer.py); keep it with the run.
            shutil.copyfile(Path(self.base_model_path, "tokenizer.model"), Path(output_dir, "tokenizer.model"))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if self.base_model_path is not None:
            Path(output_dir, BASE_POINTER_FILE).write_text(
                json.dumps({"base_model": str(Path(self.base_model_path).resolve()), "projector": PROJECTOR_FILE})
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint, TRAINABLE_FILE)
        if not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        state = load_file(str(path))
        expected = set(self._trainable_names())
        if set(state) != expected:
            raise ValueError(
                f"{path}: holds {sorted(state)}, but the trainable parameters now are {sorted(expected)}; "
                f"resume with the same tuning flags"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, model has {tuple(params[name].shape)}")
                params[name].copy_(tensor.to(params[name].dtype))
