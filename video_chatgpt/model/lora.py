"""A LoRA adapter on the video model's language model: peft's files, where the adapter sits, loading and merging.

What inference (``chat``, ``predict``, ``merge-lora``) and training share; the training-only parts (flags,
quantisation, adding a fresh adapter, saving it, optimizer groups) are in ``video_chatgpt/train/lora.py``.

    from video_chatgpt.model.lora import load_adapter, merge_adapter
    load_adapter(model, "Video-ChatGPT_7B-LoRA")  # adapter_model.safetensors + adapter_config.json (peft's files)
    merge_adapter(model)                          # W + alpha/r * B A in place; the LoRA layers are gone

* The adapter goes on the causal LM itself (``language_model``): ``VideoChatGPTForCausalLM`` (the document's base,
  a LLaMA causal LM) or ``VideoLanguageModel.language_model`` (any other base), so its tensor names are peft's
  ``base_model.model.<the causal LM's module path>`` and the files load onto the base with plain
  ``peft.PeftModel.from_pretrained`` too.
* peft is imported inside the functions: a model without an adapter never needs it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from video_chatgpt.constants import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from video_chatgpt.errors import UserError

ADAPTER_NAME = "default"  # peft's name for a model's single adapter
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained prefixes the causal LM's tensor names


def language_model(model: nn.Module) -> nn.Module:
    """The causal LM that carries the adapter: ``VideoLanguageModel.language_model``, or the model itself."""
    return getattr(model, "language_model", model)


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA layers (their parameters are named ``...lora_A...`` / ``...lora_B...``)."""
    return any(".lora_" in n for n, _ in model.named_parameters())


def load_adapter(model: nn.Module, folder: str | Path) -> None:
    """Add the adapter saved in ``folder`` (``save_adapter``'s or peft's files) to ``model``'s LLM, for inference."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, cfg = folder / ADAPTER_WEIGHTS_FILE, folder / ADAPTER_CONFIG_FILE
    if not weights.is_file() or not cfg.is_file():
        raise UserError(f"{folder}: no {ADAPTER_WEIGHTS_FILE} + {ADAPTER_CONFIG_FILE}; name a LoRA run folder")
    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True
    lm = language_model(model)
    inject_adapter_in_model(config, lm, adapter_name=ADAPTER_NAME)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(weights)).items()}
    result = set_peft_model_state_dict(lm, state, adapter_name=ADAPTER_NAME)
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if missing:
        raise UserError(f"{weights}: adapter tensors missing for {missing[:3]}; the adapter belongs to another base")
    lm.train(lm.training)  # the new adapter layers follow the model's mode (eval: no dropout)


def merge_adapter(model: nn.Module) -> None:
    """Fold the adapter into the base weights (W + scale * B A) and remove the LoRA layers, in place."""
    from peft.tuners.lora import LoraLayer

    lm = language_model(model)
    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, leaf = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            setattr(parent, leaf, module.get_base_layer())
    if hasattr(lm, "peft_config"):
        del lm.peft_config
    if getattr(lm, "_hf_peft_config_loaded", False):
        lm._hf_peft_config_loaded = False  # transformers' flag: the model carries no adapter any more
