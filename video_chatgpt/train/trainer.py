"""``VideoChatGPTTrainer``: the Hugging Face Trainer with Video-ChatGPT's saving, resuming and throughput logs.

What a save writes (only the main process writes; ``--save_total_limit`` rotates ``checkpoint-N`` as usual):

* ``mm_projector.bin``: ``{model.mm_projector.weight, model.mm_projector.bias, model.embed_tokens.weight}`` in fp32,
  the format of the released ``video_chatgpt-7B.bin``, in the output folder and in every ``checkpoint-N``;
* ``config.json`` (``VideoChatGPTConfig``: video token ids, ``video_token_len``) and the tokenizer with the video
  tokens, so inference needs no guessing; ``video_chatgpt_base.json`` names the base model folder;
* with a frozen backbone: ``trainable.safetensors`` (only the trainable tensors, a few MB) instead of a full model,
  which is what ``checkpoint-N`` resumes from; with full fine-tuning the full model as ``save_pretrained`` writes it.

Saved frozen rows are the base's own: a frozen backbone is loaded in bf16 with ``--bf16``, so the model holds
bf16-rounded copies of the 32,003 frozen embedding rows; ``mm_projector.bin`` takes those rows from the base
checkpoint instead (bit for bit, as fp32 of the stored fp16 values), and only the trained rows from the model.

Each of these files is written to ``.<name>.tmp`` and renamed (``video_chatgpt/files.py``): a kill while saving leaves
the previous file. A step whose loss or gradient norm is not finite stops the run with a ``UserError`` before the
optimizer step, so a NaN never reaches the weights or a saved file.

Logged with each loss: tokens/s, samples/s and the padding (``log``); ``--group_by_length`` orders the samples with
``train/sampling.py`` over the dataset's own lengths (docs/packing.md).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from video_chatgpt.constants import BASE_POINTER_FILE, EMBED_TOKENS_KEY, PROJECTOR_FILE, PROJECTOR_PREFIX
from video_chatgpt.data.dataset import sample_lengths
from video_chatgpt.errors import UserError
from video_chatgpt.files import write_atomically, write_json_atomically
from video_chatgpt.model.loading import load_projector, projector_state_from_state_dict, read_projector_file
from video_chatgpt.model.lora import has_lora
from video_chatgpt.model.video_chatgpt import VideoLanguageModel
from video_chatgpt.train.lora import projector_parameter_groups, save_adapter
from video_chatgpt.train.sampling import LengthGroupedSampler
from video_chatgpt.weights.checkpoint import TensorReader, find_checkpoint, read_tensor_infos

TRAINABLE_FILE = "trainable.safetensors"


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent (what ``shutil.disk_usage`` can be asked about)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def disk_full_as_user_error(folder: str | Path) -> Iterator[None]:
    """Turn torch's write failure into one line naming ``folder``.

    ``torch.save`` reports a failed write (a full disk, a quota) as ``RuntimeError: [enforce fail at
    inline_container.cc:...] unexpected pos ...``, which names neither the file nor the cause. The partial file is
    already removed (``files.write_atomically``); what is free there now is said with it."""
    try:
        yield
    except RuntimeError as exc:
        if "inline_container" not in str(exc):
            raise
        free = shutil.disk_usage(_existing_folder(Path(folder))).free
        raise UserError(
            f"no space left on {folder} while saving a checkpoint (torch could not write the file; "
            f"{free / 2**30:.2f} GiB free there now): free some space or set --output_dir elsewhere"
        ) from exc


class VideoChatGPTTrainer(Trainer):
    def __init__(self, *args, base_model_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_model_path = base_model_path
        self._reset_counts()

    def _reset_counts(self) -> None:
        # Per process, since the last log: real tokens, samples, token positions computed (padding included) and
        # the positions the same batches would take padded to their longest sample (what --packing saves).
        self._tokens_since_log = self._samples_since_log = 0
        self._computed_since_log = self._padded_since_log = 0
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------------------------------------ sampling
    def _get_train_sampler(self, train_dataset=None):
        # --group_by_length: transformers' own sampler would tokenize-guess lengths from input_ids; ours reads the
        # dataset's (exact when rendered at start, estimated from the records otherwise) and groups per step.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(dataset.lengths(), self.args.train_batch_size, self.args.world_size, seed)
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------------------------------------- logging
    def _inner_training_loop(self, *args, **kwargs):
        # Throughput counts start when the loop starts (not at construction: setup and checkpoint loading excluded).
        self._reset_counts()
        return super()._inner_training_loop(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Count real (non-padding) tokens and samples for tokens/s and samples/s, on this process, and the padding.
        lengths = sample_lengths(inputs)
        self._tokens_since_log += sum(lengths)
        self._samples_since_log += len(lengths)
        self._computed_since_log += int(inputs["input_ids"].numel())
        self._padded_since_log += len(lengths) * max(lengths)
        loss = super().training_step(model, inputs, num_items_in_batch)  # detached, after backward
        if not bool(torch.isfinite(loss).all()):
            raise UserError(self._not_finite_message("loss", loss.item()))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Called after backward and before the optimizer step: a non-finite norm would poison every weight it touches.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # With fp16 loss scaling an inf norm is expected now and then: the scaler skips that step and lowers the scale.
        scaled = getattr(self.accelerator, "scaler", None) is not None
        if grad_norm is not None and not scaled and not math.isfinite(float(grad_norm)):
            raise UserError(self._not_finite_message("gradient norm", float(grad_norm)))
        return grad_norm

    def _not_finite_message(self, what: str, value: float) -> str:
        return (
            f"training stopped at step {self.state.global_step + 1}: the {what} is {value} (not finite), so nothing "
            f"was saved as final in {self.args.output_dir}; a feature file with NaN/inf values in "
            f"--video_folder (run `video-chatgpt data check`) or too high a --learning_rate are the usual causes"
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._samples_since_log:
            now = time.perf_counter()
            elapsed = max(now - self._last_log_time, 1e-9)
            world = self.args.world_size
            logs["tokens_per_second"] = round(self._tokens_since_log * world / elapsed, 1)
            logs["samples_per_second"] = round(self._samples_since_log * world / elapsed, 3)
            # padding_fraction: share of the computed token positions that were padding (0 with --packing);
            # padding_removed: share of the padded batches' positions that were not computed (--packing's saving).
            logs["padding_fraction"] = round(1 - self._tokens_since_log / self._computed_since_log, 4)
            logs["padding_removed"] = round(1 - self._computed_since_log / self._padded_since_log, 4)
            if torch.cuda.is_available():
                logs["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self._reset_counts()
            self._last_log_time = now
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        # --mm_projector_lr (LLaVA's flag): the projector and token rows get their own learning rate.
        if self.optimizer is None and getattr(self.args, "mm_projector_lr", None) is not None:
            opt_model = self.model if model is None else model
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = projector_parameter_groups(
                opt_model,
                self.args.learning_rate,
                self.args.mm_projector_lr,
                self.args.weight_decay,
                set(self.get_decay_parameter_names(opt_model)),
            )
            self.optimizer = cls(groups, **kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    # -------------------------------------------------------------------------------------------------- saving
    def _trainable_names(self) -> list[str]:
        model = self.accelerator.unwrap_model(self.model)
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def _frozen_backbone(self) -> bool:
        model = self.accelerator.unwrap_model(self.model)
        return any(not p.requires_grad for p in model.parameters())

    def _save_checkpoint(self, *args, **kwargs) -> None:
        # The weights, optimizer.pt, scheduler.pt and rng_state.pth of checkpoint-N are all torch.save calls.
        with disk_full_as_user_error(self.args.output_dir):
            super()._save_checkpoint(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        with disk_full_as_user_error(output_dir):
            self._save_files(output_dir, state_dict)

    def _save_files(self, output_dir: str, state_dict: dict | None) -> None:
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if self._frozen_backbone():
            # Under DeepSpeed the Trainer passes the gathered weights (the model's own are shards under ZeRO-3).
            params = {**dict(model.named_parameters()), **(state_dict or {})}
            trainable = {n: params[n].detach().float().cpu().contiguous() for n in self._trainable_names()}
            write_atomically(
                Path(output_dir, TRAINABLE_FILE), lambda tmp: save_file(trainable, str(tmp), metadata={"format": "pt"})
            )
            write_atomically(Path(output_dir, "config.json"), model.config.to_json_file)
            if has_lora(model):  # --lora_enable: peft's adapter_model.safetensors + adapter_config.json as well
                save_adapter(model, output_dir, state_dict)
        elif isinstance(model, VideoLanguageModel):
            # Full fine-tune of another base: its causal LM as a model folder (its own names, config with the mm_*
            # fields), the projector in mm_projector.bin below; the folder is then its own base for chat/predict.
            model.save_pretrained(output_dir, state_dict=state_dict)
        else:
            super()._save(output_dir, state_dict=state_dict)
        rows = getattr(model.model, "video_token_embed_ids", None)
        trained_rows = [] if rows is None else rows.tolist()
        if state_dict is not None and any(k.startswith(PROJECTOR_PREFIX) for k in state_dict):
            # DeepSpeed / FSDP gathered weights (the model's own tensors are shards under ZeRO-3)
            artefact = projector_state_from_state_dict(state_dict, trained_rows or None, model.input_embedding_key())
        else:
            artefact = model.projector_state_dict()
        if not model.get_input_embeddings().weight.requires_grad:
            artefact[EMBED_TOKENS_KEY] = self._with_base_rows(artefact[EMBED_TOKENS_KEY], trained_rows)
        write_atomically(Path(output_dir, PROJECTOR_FILE), lambda tmp: torch.save(artefact, tmp))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.base_model_path is not None and Path(self.base_model_path, "tokenizer.model").is_file():
            # The SentencePiece file gives the original's token ids (see data/tokenizer.py); keep it with the run.
            write_atomically(
                Path(output_dir, "tokenizer.model"),
                lambda tmp: shutil.copyfile(Path(self.base_model_path, "tokenizer.model"), tmp),
            )
        write_atomically(Path(output_dir, "training_args.bin"), lambda tmp: torch.save(self.args, tmp))
        if self.base_model_path is not None:
            # A fully trained model is its own base (as a merged LoRA run); a frozen one names the base it reads.
            full = not self._frozen_backbone()
            base = Path(output_dir if full else self.base_model_path).resolve()
            pointer = {"base_model": str(base), "projector": PROJECTOR_FILE}
            if full:
                pointer["trained_from"] = str(Path(self.base_model_path).resolve())
            write_json_atomically(Path(output_dir, BASE_POINTER_FILE), pointer)

    def _with_base_rows(self, embed: torch.Tensor, trained_rows: list[int]) -> torch.Tensor:
        """(V, H) fp32 embedding whose frozen rows are the base checkpoint's stored values, not the model's copies.

        A frozen backbone loaded in bf16 holds rounded rows; the base folder keeps the exact ones (fp16 in LLaVA).
        Rows the base does not have (the new video tokens) and the trained rows stay as the model has them.
        """
        if self.base_model_path is None:
            return embed
        with TensorReader(find_checkpoint(self.base_model_path)) as reader:
            # (V_base, H) in the stored dtype; a LLaVA-1.5 folder names it differently (the model says how)
            key = getattr(self.accelerator.unwrap_model(self.model), "base_embedding_key", EMBED_TOKENS_KEY)
            base = reader.get(key)
        if base.shape[0] > embed.shape[0] or base.shape[1] != embed.shape[1]:
            raise UserError(
                f"{self.base_model_path}: {EMBED_TOKENS_KEY} is {tuple(base.shape)}, but the trained model's "
                f"embedding is {tuple(embed.shape)}; was the base folder replaced during the run?"
            )
        exact = embed.clone()
        exact[: base.shape[0]] = base.float()
        if trained_rows:
            ids = torch.tensor(trained_rows, dtype=torch.long)
            exact[ids] = embed[ids]
        return exact

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint, TRAINABLE_FILE)
        if not path.is_file():
            unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
            if isinstance(unwrapped, VideoLanguageModel):
                return self._load_full_composed_checkpoint(unwrapped, Path(resume_from_checkpoint))
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        state = load_file(str(path))
        expected = set(self._trainable_names())
        if set(state) != expected:
            raise UserError(
                f"{path}: holds {sorted(state)}, but the trainable parameters now are {sorted(expected)}; "
                f"resume with the same tuning flags"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise UserError(
                        f"{path}: {name} has shape {tuple(tensor.shape)}, model has {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor.to(params[name].dtype))

    def _load_full_composed_checkpoint(self, model: VideoLanguageModel, folder: Path) -> None:
        """Resume a full fine-tune of another base: the causal LM from the checkpoint's model folder (only weights
        tied to another one, as Qwen2's ``lm_head``, may be absent), the projector from its ``mm_projector.bin``."""
        ckpt = find_checkpoint(folder, role="checkpoint")
        with TensorReader(ckpt) as reader:
            state = {name: reader.get(name) for name in read_tensor_infos(ckpt)}
        lm = model.language_model
        tied = {name for name, p in lm.named_parameters(remove_duplicate=False)} - set(dict(lm.named_parameters()))
        with torch.no_grad():
            missing, unexpected = lm.load_state_dict(state, strict=False)
        if unexpected or set(missing) - tied:
            raise UserError(
                f"{folder}: its weights do not fit {type(lm).__name__}: missing {sorted(set(missing) - tied)[:4]}, "
                f"unexpected {unexpected[:4]}; resume with the same base"
            )
        projector = folder / PROJECTOR_FILE  # the whole table too: a full fine-tune trains every row
        load_projector(model, read_projector_file(projector), str(projector), token_rows=[], whole_table=True)
