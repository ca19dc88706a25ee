"""LoRA / QLoRA on the language model of the video model, with peft (no LoRA layer is written here).

    python video_chatgpt/train/train_mem.py --model_name_or_path LLaVA-7B-Lightening-v1-1 ... --bf16 True \\
        --lora_enable True --lora_r 64 --lora_alpha 16 --lora_dropout 0.05 --mm_projector_lr 2e-5 \\
        --gradient_checkpointing True                                  # LoRA on every linear layer of the LLM
    ... --lora_enable True --bits 4 --double_quant True --quant_type nf4    # QLoRA (bitsandbytes, CUDA only)

* Targets (``--lora_target_modules``, LLaVA's flag): by default every ``nn.Linear`` of the language model
  (q/k/v/o and gate/up/down for LLaMA, Mistral, Qwen2), never ``lm_head``, the video projector or the vision side;
  the adapter goes on the causal LM itself (``video_chatgpt/model/lora.py``).
* What trains: the LoRA A/B matrices, the projector and, with ``--mm_use_vid_start_end``, the two token rows
  (``--freeze_mm_mlp_adapter`` keeps the projector frozen); the base weights stay bit-identical.
  ``--mm_projector_lr`` gives the projector its own learning rate (``projector_parameter_groups``).
* Saved beside ``mm_projector.bin``: ``adapter_model.safetensors`` + ``adapter_config.json`` (peft's format and
  names). ``checkpoint-N`` also keeps ``trainable.safetensors`` (adapter + projector + rows) and the optimizer, from
  which a run resumes.
* DeepSpeed ZeRO-2 and ZeRO-3 (``--deepspeed configs/zero2.json|zero3.json``): the adapter is saved from the weights
  the Trainer gathers (under ZeRO-3 the model's own are empty shards), so it needs the config's
  ``stage3_gather_16bit_weights_on_model_save: true``; a run resumes from DeepSpeed's ``global_stepN`` state.
* ``--bits 4|8``: the base's decoder linears are quantised by bitsandbytes at load time; on a machine without
  CUDA or without bitsandbytes the run stops with one line before anything is loaded.

Where the adapter sits, its file names, loading and merging are shared with inference: ``video_chatgpt/model/lora.py``.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BitsAndBytesConfig

from video_chatgpt.errors import UserError
from video_chatgpt.files import write_atomically, write_json_atomically
from video_chatgpt.model.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_NAME,
    ADAPTER_WEIGHTS_FILE,
    PEFT_PREFIX,
    language_model,
)

# Modules LoRA never wraps: the output layer and the video projector (the vision tower is not in the model).
EXCLUDED = ("lm_head", "mm_projector")
BITS = (4, 8, 16)
QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] | None = None  # leaf names (q_proj, ...); None: every linear layer of the LLM
    bits: int = 16
    double_quant: bool = True
    quant_type: str = "nf4"

    @classmethod
    def from_training_args(cls, args) -> LoraSettings:
        targets = tuple(t.strip() for t in (args.lora_target_modules or "").split(",") if t.strip()) or None
        return cls(
            args.lora_r, args.lora_alpha, args.lora_dropout, targets, args.bits, args.double_quant, args.quant_type
        )


def check_flags(args) -> None:
    """The LoRA / bits flags of ``TrainingArguments``, checked before anything is loaded (``UserError``)."""
    if args.bits not in BITS:
        raise UserError(f"--bits {args.bits}: expected 4, 8 or 16")
    if args.bits != 16 and not args.lora_enable:
        raise UserError(f"--bits {args.bits} quantises the base, which then cannot train: add --lora_enable True")
    if args.quant_type not in QUANT_TYPES:
        raise UserError(f"--quant_type {args.quant_type!r}: expected nf4 or fp4")
    if args.lora_bias != "none":
        raise UserError(f"--lora_bias {args.lora_bias!r}: only 'none' is supported")
    if args.lora_enable and (args.lora_r < 1 or not 0 <= args.lora_dropout < 1):
        raise UserError(f"--lora_r {args.lora_r} / --lora_dropout {args.lora_dropout}: need r >= 1, 0 <= dropout < 1")
    if args.lora_enable and importlib.util.find_spec("peft") is None:
        raise UserError(
            "--lora_enable needs the PyPI package 'peft': pip install -e '.[lora]' in the repository (or pip install peft)"
        )


def check_quantisation_available(bits: int) -> None:
    """``--bits 4|8`` needs a CUDA GPU and bitsandbytes: say so in one line, before the base is loaded."""
    if bits == 16:
        return
    if not torch.cuda.is_available():
        raise UserError(
            f"--bits {bits} (QLoRA) quantises the base with bitsandbytes, which needs a CUDA GPU; none "
            f"is available here: train with --bits 16 (plain LoRA) or on a GPU machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"--bits {bits} needs the PyPI package 'bitsandbytes': pip install -e '.[qlora]' in the repository (or pip install bitsandbytes; CUDA only)"
        )


def quantisation_config(settings: LoraSettings, compute_dtype: torch.dtype):
    """The ``BitsAndBytesConfig`` for ``from_pretrained(quantization_config=...)`` (None for 16 bits). The
    projector and ``lm_head`` stay unquantised."""
    if settings.bits == 16:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=settings.bits == 4,
        load_in_8bit=settings.bits == 8,
        llm_int8_skip_modules=list(EXCLUDED),
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_quant_type=settings.quant_type,
    )


def linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the LLM's linear layers that LoRA may wrap (``lm_head`` and the projector excluded)."""
    from peft.tuners.lora import LoraLayer

    lm = language_model(model)
    names = []
    for name, module in lm.named_modules():
        if any(part in EXCLUDED for part in name.split(".")) or not name:
            continue
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and not isinstance(module, LoraLayer) and ".lora_" not in name:
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def target_pattern(leaves: list[str]) -> str:
    """A full-name regex (peft ``fullmatch``) for those leaves anywhere in the LLM, never under an excluded module."""
    excluded = "|".join(re.escape(e) for e in EXCLUDED)
    return rf"^(?!(?:.*\.)?(?:{excluded})(?:\.|$))(?:.*\.)?(?:{'|'.join(re.escape(x) for x in leaves)})$"


def add_lora(model: nn.Module, settings: LoraSettings):
    """Wrap the LLM's linear layers with peft LoRA adapters (fp32, trainable); keep what already trained trainable.

    Returns the ``LoraConfig``. The base weights are not changed (peft's B starts at zero).
    """
    from peft import LoraConfig, inject_adapter_in_model

    available = linear_names(model)
    targets = list(settings.targets or available)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise UserError(
            f"--lora_target_modules {','.join(unknown)}: not linear layers of this language model; "
            f"its linear layers are {','.join(available)}"
        )
    trainable_before = [p for p in model.parameters() if p.requires_grad]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_pattern(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    lm = language_model(model)
    inject_adapter_in_model(config, lm, adapter_name=ADAPTER_NAME)
    if getattr(lm, "is_quantized", False):
        # The Trainer refuses a quantised model unless it is marked as carrying an adapter; transformers'
        # add_adapter (inject_adapter_in_model + this mark) needs peft >= 0.22, so the mark is set here.
        lm._hf_peft_config_loaded = True
    for p in trainable_before:  # peft marks only the adapters trainable: the projector and rows train too
        p.requires_grad_(True)
    for name, p in lm.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
            if p.dtype != torch.float32:
                p.data = p.data.float()
    config.base_model_name_or_path = getattr(lm.config, "_name_or_path", None) or None
    return config


def adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """peft's adapter tensors, named as ``PeftModel.save_pretrained`` names them (``base_model.model.<path>``).

    ``state_dict``: the whole model's state dict as the Trainer gathers it for a save under DeepSpeed (keys as
    ``model.state_dict()``'s), taken instead of the model's own tensors, which under ZeRO-3 are empty shards.
    """
    from peft import get_peft_model_state_dict

    lm = language_model(model)
    if state_dict is not None and lm is not model:  # VideoLanguageModel: the causal LM's keys under its child name
        prefix = next(name for name, child in model.named_children() if child is lm) + "."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    # save_embedding_layers=False: peft would add the whole (resized) embedding and lm_head; the trained token
    # rows are in mm_projector.bin, the frozen ones in the base.
    state = get_peft_model_state_dict(lm, state_dict=state_dict, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    # Each LoRA matrix is (r, in) or (out, r); a ZeRO-3 shard is (0,) and a save without gathered weights has none.
    expected = sum(".lora_" in n for n, _ in lm.named_parameters())
    if len(state) != expected or any(v.dim() != 2 or v.numel() == 0 for v in state.values()):
        raise UserError(
            f"the LoRA adapter to save has {len(state)} of its {expected} tensors whole (the others are "
            f'ZeRO-3 shards): set "stage3_gather_16bit_weights_on_model_save": true in the --deepspeed '
            f"config (configs/zero3.json has it)"
        )
    return {f"{PEFT_PREFIX}{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_adapter(model: nn.Module, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` into ``folder`` (each written atomically);
    ``state_dict``: DeepSpeed's gathered weights, as for ``adapter_state_dict``."""
    lm = language_model(model)
    config = lm.peft_config[ADAPTER_NAME]
    state = adapter_state_dict(model, state_dict)
    write_atomically(
        Path(folder, ADAPTER_WEIGHTS_FILE), lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )
    write_json_atomically(Path(folder, ADAPTER_CONFIG_FILE), config.to_dict(), indent=2, default=str)


def projector_parameter_groups(
    model: nn.Module, lr: float, projector_lr: float, weight_decay: float, decay_names: set[str]
) -> list[dict]:
    """Optimizer groups (``--mm_projector_lr``, LLaVA's): the projector and the token rows at ``projector_lr``,
    every other trainable (the LoRA adapters) at ``lr``; weight decay only on ``decay_names`` (the Trainer's)."""
    groups: dict[tuple[str, bool], list] = {(kind, decay): [] for kind in ("proj", "rest") for decay in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "proj" if ("mm_projector" in name or "video_token_embeds" in name) else "rest"
        groups[(kind, name in decay_names)].append(p)
    return [
        {"params": params, "lr": projector_lr if kind == "proj" else lr, "weight_decay": weight_decay if decay else 0.0}
        for (kind, decay), params in groups.items()
        if params
    ]
