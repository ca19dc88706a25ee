"""Build the video model from a resolved base (``video_chatgpt.bases.Base``): the one loader, for training and
inference alike, and the one reader of projector files.

    base = open_base(folder)
    tokenizer, video_ids, num_new = load_video_tokenizer(base.folder, use_start_end=True)
    model = load_model(base, video_ids, num_new, dtype=torch.bfloat16, mm_hidden_size=1024, video_token_len=356)
    load_projector(model, read_projector_file(base.projector_file), source=..., token_rows=[start, end])

``load_model`` returns the model with its vocabulary fitted to the video tokens (``fit_vocabulary``: the table grows
to hold them, ``<vid_start>``/``<vid_end>`` start at the mean of the earlier rows as in the original) and their ids on
the config. Under DeepSpeed ZeRO-3 (the tables are shards) the rows are set on the gathered tables.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from video_chatgpt.bases import Base
from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_PREFIX
from video_chatgpt.data.tokenizer import VideoTokenIds, load_video_tokenizer
from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json
from video_chatgpt.model.lora import load_adapter
from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM, VideoLanguageModel, video_config
from video_chatgpt.weights.torchzip import TORCH_LOAD_ERRORS, load_reason

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ vocabulary
def gathered(params: list[nn.Parameter]):
    """Context: the full tensors of ``params`` on every process when DeepSpeed ZeRO-3 partitioned them (rank 0's
    edits kept); nothing to do otherwise."""
    sharded = [p for p in params if hasattr(p, "ds_shape")]
    if not sharded:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=0)


def embedding_tables(model: nn.Module) -> list[nn.Parameter]:
    return [model.get_input_embeddings().weight, model.get_output_embeddings().weight]


def fit_vocabulary(model: nn.Module, vocabulary_size: int, new_rows_from: int | None) -> None:
    """Make the embedding tables hold at least ``vocabulary_size`` rows (grown only when too small: a Qwen2 table is
    padded beyond its tokenizer); rows from ``new_rows_from`` on (``<vid_start>``, ``<vid_end>``) are set to the mean
    of all earlier rows, input and output, as the original did. ``<vid_patch>`` keeps the resize init: it is always
    replaced by video features. ZeRO-3: ``resize_token_embeddings`` gathers by itself, the mean on gathered tables."""
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3: the local shape is an empty shard
    if rows < vocabulary_size:
        model.resize_token_embeddings(vocabulary_size, mean_resizing=False)
    if new_rows_from is not None:
        with gathered(embedding_tables(model)), torch.no_grad():
            for w in embedding_tables(model):
                w[new_rows_from:] = w[:new_rows_from].float().mean(dim=0, keepdim=True).to(w.dtype)
    weight = model.get_input_embeddings().weight
    model.config.vocab_size = getattr(weight, "ds_shape", weight.shape)[0]


# ----------------------------------------------------------------------------------------------------- model
def load_model(
    base: Base,
    video_ids: VideoTokenIds,
    num_new_tokens: int,
    *,
    dtype: torch.dtype = torch.float32,
    mm_hidden_size: int | None = None,
    projector_type: str | None = None,
    attn_implementation: str | None = None,
    quantization_config=None,
    cache_dir: str | None = None,
    **config_fields,
) -> nn.Module:
    """The video model of ``base`` with its vocabulary fitted to ``video_ids`` and their ids on the config.

    * the document's base: ``VideoChatGPTForCausalLM`` (projector ``linear`` from LLaVA's image projector unless
      ``projector_type`` says otherwise);
    * a LLaVA-1.5/NeXT folder: a ``VideoLanguageModel`` over its LM, projector ``mlp2x_gelu`` from LLaVA's;
    * a causal LM: a ``VideoLanguageModel`` with a fresh projector (``projector_type``, default ``linear``) that
      maps ``mm_hidden_size`` (the features' width: needed) to the LM's width.

    ``num_new_tokens``: how many of the video tokens the tokenizer did not have (``load_video_tokenizer``); with two
    or more new, ``<vid_start>``/``<vid_end>`` start at the mean row. ``config_fields`` (``video_token_len``,
    ``mm_use_vid_start_end``, ``use_cache``, ``conv_template``, ``mm_vision_tower``, ...) go onto the config.
    ``quantization_config`` (``--bits 4|8``) quantises the LM as it loads (refused for a LLaVA-1.5 folder).
    Raises ``UserError`` naming the folder when the settings do not fit it (widths, projector types).
    """
    try:
        model = _load_body(
            base, dtype, mm_hidden_size, projector_type, attn_implementation, quantization_config, cache_dir,
            config_fields,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(f"{base.folder}: {exc}") from exc
    top = max(i for i in (video_ids.patch, video_ids.start, video_ids.end) if i is not None)
    fit_vocabulary(model, top + 1, new_rows_from=video_ids.start if num_new_tokens >= 2 else None)
    # Set after the resize: transformers checks token ids against the vocabulary size.
    model.config.video_patch_token_id = video_ids.patch
    model.config.video_start_token_id = video_ids.start
    model.config.video_end_token_id = video_ids.end
    return model


def _load_body(
    base, dtype, mm_hidden_size, projector_type, attn_implementation, quantization_config, cache_dir, fields
):
    """The model before its vocabulary is fitted; ``ValueError`` when the settings do not fit the folder."""
    load_kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "cache_dir": cache_dir}
    load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
    if quantization_config is not None:
        if base.is_llava_hf:
            raise ValueError(
                "--bits 4|8 is not supported for a LLaVA-1.5/NeXT folder (its language model is split out of the "
                "full model); train it with --bits 16 (LoRA or the projector alone)"
            )
        load_kwargs["quantization_config"] = quantization_config
    if base.is_llava_v1:
        if projector_type is not None:
            fields["mm_projector_type"] = projector_type
        config = video_config(base.config, **fields)
        if config.mm_hidden_size is None:
            config.mm_hidden_size = mm_hidden_size
        if mm_hidden_size is not None and config.mm_hidden_size != mm_hidden_size:
            raise ValueError(
                f"config mm_hidden_size is {config.mm_hidden_size}, but the video features are {mm_hidden_size} wide; "
                f"extract the features with the base's vision tower"
            )
        return VideoChatGPTForCausalLM.from_pretrained(str(base.folder), config=config, **load_kwargs)
    if base.is_llava_hf:
        parts = load_llava_hf_parts(base.folder, dtype)
        if projector_type not in (None, "mlp2x_gelu"):
            raise ValueError(f"a LLaVA-1.5/NeXT projector is mlp2x_gelu, not --mm_projector_type {projector_type}")
        if mm_hidden_size is not None and mm_hidden_size != parts.mm_hidden_size:
            raise ValueError(
                f"the video features are {mm_hidden_size} wide but its projector takes {parts.mm_hidden_size}"
            )
        fields.setdefault("mm_vision_tower", str(Path(base.folder).resolve()))
        model = VideoLanguageModel(
            parts.language_model, "mlp2x_gelu", parts.mm_hidden_size, video_chatgpt_base_kind=base.kind, **fields
        )
        with torch.no_grad():
            model.model.mm_projector.load_state_dict(parts.projector_state)
        model.base_embedding_key = _checkpoint_key(base.folder, "embed_tokens.weight")
        return model
    from transformers import AutoModelForCausalLM

    if mm_hidden_size is None:
        raise ValueError("a plain causal LM has no projector yet; the feature width (mm_hidden_size) is needed")
    lm = AutoModelForCausalLM.from_pretrained(str(base.folder), **load_kwargs)
    if "use_cache" in fields:
        lm.config.use_cache = fields.pop("use_cache")
    model = VideoLanguageModel(
        lm, projector_type or "linear", mm_hidden_size, video_chatgpt_base_kind=base.kind, **fields
    )
    model.model.to(dtype)
    return model


def load_trained_model(base: Base, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, VideoTokenIds]:
    """A trained model as its run built it (inference, merge-lora): ``(model, tokenizer, video token ids)``.

    The run's config says the projector type and width, the token count, the template and the tower; the
    projector file is loaded whole (as the original's loader did); a LoRA adapter (the run's own or
    ``--lora_path``) is added. On CPU, in ``dtype``, in training mode: the caller moves it and calls ``eval``.
    """
    if not base.has_projector and base.feature_width is None:
        raise UserError(
            f"{base.folder}: a causal LM without a video projector; pass a training output folder as --model_name_or_path "
            f"(its mm_projector.bin and config.json say how the projector looks)"
        )
    tokenizer, video_ids, num_new = load_video_tokenizer(base.folder, use_start_end=base.use_start_end)
    fields = {"use_cache": True, "mm_use_vid_start_end": base.use_start_end, "video_token_len": base.video_token_len}
    for key in ("conv_template", "mm_vision_tower", "num_video_frames"):
        if base.run_config.get(key) is not None:
            fields[key] = base.run_config[key]
    model = load_model(
        base, video_ids, num_new, dtype=dtype, projector_type=base.run_config.get("mm_projector_type"),
        mm_hidden_size=base.run_config.get("mm_hidden_size"), **fields,
    )  # fmt: skip
    if base.projector_file is not None:
        rows = [video_ids.start, video_ids.end] if video_ids.use_start_end else []
        state = read_projector_file(base.projector_file)
        load_projector(model, state, str(base.projector_file), rows, whole_table=True)
    else:
        logger.warning("no --projection_path: the video projector is the base model's (untrained for video)")
    if base.adapter is not None:
        load_adapter(model, base.adapter)
    return model, tokenizer, video_ids


@dataclass
class LlavaHfParts:
    """What a LLaVA-1.5/NeXT folder gives the video model: the LM, the projector weights and the tower settings."""

    language_model: nn.Module
    projector_state: dict[str, torch.Tensor]  # mlp2x_gelu layout: "0.weight", "0.bias", "2.weight", "2.bias"
    mm_hidden_size: int
    vision_feature_layer: int | list[int]


def load_llava_hf_parts(folder: str | Path, dtype: torch.dtype = torch.float32) -> LlavaHfParts:
    """Split a ``LlavaForConditionalGeneration``/``LlavaNextForConditionalGeneration`` folder into a plain causal LM
    (``AutoModelForCausalLM`` of its ``text_config``, sharing the loaded tensors) and its GELU projector."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(folder))
    act = getattr(config, "projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"projector_hidden_act is {act!r}; only LLaVA's 'gelu' projector is supported")
    full = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
    projector = full.model.multi_modal_projector
    if getattr(projector, "linear_1", None) is None or getattr(projector, "linear_2", None) is None:
        raise ValueError("its multi_modal_projector has no linear_1/linear_2 (not LLaVA-1.5/NeXT's)")
    state = {
        "0.weight": projector.linear_1.weight.detach(),
        "0.bias": projector.linear_1.bias.detach(),
        "2.weight": projector.linear_2.weight.detach(),
        "2.bias": projector.linear_2.bias.detach(),
    }
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config.text_config, dtype=dtype)
    lm_state = {f"model.{k}": v for k, v in full.model.language_model.state_dict().items()}
    lm_state["lm_head.weight"] = full.lm_head.weight
    missing, unexpected = lm.load_state_dict(lm_state, strict=False, assign=True)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(
            f"its language model does not fit {type(lm).__name__}: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    if getattr(config.text_config, "tie_word_embeddings", False):
        lm.tie_weights()
    take_meta_buffers(lm, full.model.language_model, "its language model were not loaded", part="model")
    lm.generation_config.eos_token_id = getattr(config.text_config, "eos_token_id", None)
    return LlavaHfParts(lm, state, projector.linear_1.in_features, config.vision_feature_layer)


def take_meta_buffers(model: nn.Module, source: nn.Module, what: str, part: str = "") -> None:
    """``model`` was built on the meta device and filled by assignment: the buffers no state dict holds (rotary
    ``inv_freq``) are still on meta, so its submodule ``part`` (``""``: all of it) takes ``source``'s of the same
    name. ``ValueError`` ("... of ``what``") when any tensor of ``model`` is still on meta after that."""
    target = model.get_submodule(part)
    for name, buffer in source.named_buffers():
        module_name, _, attr = name.rpartition(".")
        try:
            module = target.get_submodule(module_name)
        except AttributeError:  # source's own parts (the projector, the trainable rows)
            continue
        if getattr(module, attr, None) is not None and getattr(module, attr).device.type == "meta":
            setattr(module, attr, buffer)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ValueError(f"{left[:4]} of {what}")


def _checkpoint_key(folder: str | Path, suffix: str) -> str:
    """The one tensor name ending in ``suffix`` in a safetensors folder (LLaVA-1.5 folders: the LM's embedding is
    ``model.language_model.embed_tokens.weight`` or, saved by older transformers, ``language_model.model...``)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = next(folder.glob("*.safetensors.index.json"), None)
    if index is not None:
        names = list(read_json(index, expect=dict)["weight_map"])
    else:
        names = []
        for shard in sorted(folder.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                names += list(f.keys())
    found = [n for n in names if n.endswith(suffix) and "vision" not in n]
    if len(found) != 1:
        raise ValueError(f"expected one tensor named *{suffix} in its checkpoint, found {found[:4]}")
    return found[0]


# -------------------------------------------------------------------------------------------- projector files
def read_projector_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an ``mm_projector.bin`` safely (``weights_only``: tensors only, no code). A file that is not one is a
    ``UserError`` naming it and the cause (never torch's advice to load it with ``weights_only=False``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        raise UserError(
            f"{path}: cannot be read as a PyTorch projector file ({load_reason(exc)}); download or copy it again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a projector's tensors (model.mm_projector.*)")
    return state


def load_projector(
    model: nn.Module, state: dict, source: str, token_rows: list[int], whole_table: bool = False
) -> None:
    """Load a projector file's tensors into ``model``: the one reader, for inference and ``--pretrain_mm_mlp_adapter``.

    Accepted: the projector's tensors under any prefix ending in ``mm_projector.`` (ours and LLaVA's
    ``model.mm_projector.``, DeepSpeed's ``module.model.mm_projector.``), exactly the model's projector type's set,
    each of the model's shape; optionally ``model.embed_tokens.weight``, either the whole table (our files and the
    released ``video_chatgpt-7B.bin``) or only the ``len(token_rows)`` trained rows (``<vid_start>``, ``<vid_end>``).
    From a whole table, ``whole_table`` (inference, as the original's loader) copies all of it; otherwise only the
    ``token_rows`` are taken and the rest stays the base's (``--pretrain_mm_mlp_adapter``, as the original's
    training). Both accept and refuse the same files: anything else is a ``UserError`` naming ``source``; extra
    keys are ignored.
    """
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{source}: not a projector file (expected a dict of tensors named model.mm_projector.*)")
    proj = model.model.mm_projector
    own = proj.state_dict()  # linear: weight, bias; mlp2x_gelu: 0.weight, 0.bias, 2.weight, 2.bias
    found = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    kind = getattr(model.config, "mm_projector_type", None) or "linear"
    if set(found) != set(own):
        raise UserError(
            f"{source}: projector tensors {sorted(found)} do not match this model's {kind!r} projector "
            f"{sorted(own)} (a projector of another --mm_projector_type?); keys present: {sorted(state)[:8]}"
        )
    for name, tensor in own.items():
        if not torch.is_tensor(found[name]) or tuple(found[name].shape) != tuple(tensor.shape):
            got = tuple(found[name].shape) if torch.is_tensor(found[name]) else type(found[name]).__name__
            raise UserError(f"{source}: {PROJECTOR_PREFIX}{name} has shape {got}, the model has {tuple(tensor.shape)}")
    embed = state.get(EMBED_TOKENS_KEY)
    rows = table = None
    if embed is not None and (token_rows or whole_table):
        vocab = model.get_input_embeddings().weight.shape[0]
        if not torch.is_tensor(embed) or embed.ndim != 2:
            raise UserError(f"{source}: {EMBED_TOKENS_KEY} is not a (rows, width) tensor")
        if embed.shape[0] == vocab:
            rows = embed[torch.tensor(token_rows, dtype=torch.long)]
            table = embed if whole_table else None
        elif token_rows and embed.shape[0] == len(token_rows):
            rows = embed
        else:
            raise UserError(
                f"{source}: {EMBED_TOKENS_KEY} has {embed.shape[0]} rows; expected the model's {vocab} (did the "
                f"tokenizer get the video tokens?) or the {len(token_rows)} trained rows"
            )
        width = model.get_input_embeddings().weight.shape[1]
        if embed.shape[1] != width:
            raise UserError(f"{source}: {EMBED_TOKENS_KEY} is {embed.shape[1]} wide, the model's embedding {width}")
    with torch.no_grad():
        proj.load_state_dict({k: v.to(own[k].dtype) for k, v in found.items()})
        weight = model.get_input_embeddings().weight
        if table is not None:
            weight.copy_(table.to(weight.device, weight.dtype))
        if rows is not None and token_rows:
            weight[torch.tensor(token_rows)] = rows.to(weight.device, weight.dtype)
            trainable = getattr(model.model, "video_token_embeds", None)
            if trainable is not None:
                ids = model.model.video_token_embed_ids.cpu().tolist()
                trainable.copy_(rows[[token_rows.index(i) for i in ids]].float())


def projector_state_from_state_dict(
    state: dict[str, torch.Tensor], trainable_row_ids: list[int] | None, embedding_key: str = EMBED_TOKENS_KEY
) -> dict:
    """The ``mm_projector.bin`` artefact from a (gathered) model state dict, e.g. DeepSpeed ZeRO-3's consolidated one:
    every ``model.mm_projector.*`` tensor and the full input embedding, saved as ``model.embed_tokens.weight``
    whatever its name in ``state`` (``embedding_key``; ``language_model.model.embed_tokens.weight`` for a composed
    model). ``trainable_row_ids``: the ids whose rows live in ``model.video_token_embeds`` and are folded in."""
    embed = state[embedding_key].detach().float().cpu().clone()
    rows = state.get("model.video_token_embeds")
    if rows is not None and trainable_row_ids:
        embed[torch.tensor(sorted(set(trainable_row_ids)))] = rows.detach().float().cpu()
    projector = {k: v.detach().float().cpu().clone() for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    if not projector:
        raise KeyError(f"no {PROJECTOR_PREFIX}* tensors in the state dict (keys: {sorted(state)[:8]})")
    return {**projector, EMBED_TOKENS_KEY: embed}
