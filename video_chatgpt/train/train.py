"""Train Video-ChatGPT: the recipe, top to bottom (parse -> checks -> tokenizer -> model -> data -> Trainer -> save).

The user's document's commands work as written (``train_mem.py`` is the same recipe):

    # one GPU (or CPU, with the tiny sample)
    python video_chatgpt/train/train_mem.py --model_name_or_path LLaVA-7B-Lightening-v1-1 --version v1 \\
        --data_path video_chatgpt_training.json --video_folder clip_features --tune_mm_mlp_adapter True \\
        --mm_use_vid_start_end --bf16 True --output_dir ./Video-ChatGPT_7B-1.1_Checkpoints --num_train_epochs 3 \\
        --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 \\
        --evaluation_strategy "no" --save_strategy "steps" --save_steps 3000 --save_total_limit 3 \\
        --learning_rate 2e-5 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type "cosine" \\
        --logging_steps 100 --tf32 True --model_max_length 2048 --gradient_checkpointing True --lazy_preprocess True
    # 8 GPUs: the same flags after
    torchrun --nproc_per_node=8 --master_port 29001 video_chatgpt/train/train_mem.py ...
    # several nodes: torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 ... ; DeepSpeed:
    #   add --deepspeed configs/zero2.json (or zero3.json); FSDP: --fsdp "full_shard auto_wrap"

Features:
* checks before anything heavy: the model folder (``check-weights``) and the data (every feature file present and
  of one shape; ``--skip_data_check`` turns the data check off); both stop with the list of problems;
* ``--tune_mm_mlp_adapter True``: only the projector and, with ``--mm_use_vid_start_end``, the two new token rows
  train; the frozen backbone is loaded directly in bf16/fp16 (``--bf16``/``--fp16``), trainables stay fp32;
  without it the whole model trains (loaded in fp32, mixed precision through autocast);
* the loss is computed only at supervised positions (no (B, L, V) logits);
* ``--lora_enable True`` (``train/lora.py``): peft LoRA on the LLM's linear layers, the projector and rows train too;
  ``--bits 4|8`` QLoRA (CUDA); ``video-chatgpt plan-memory`` plans the memory of a step for these flags;
* ``output_dir/mm_projector.bin`` (the original's keys, fp32) + config + tokenizer; ``checkpoint-N`` resume,
  automatically when ``output_dir`` holds checkpoints, or with ``--resume_from_checkpoint``;
* a training report (``training_report.md``, ``loss.png``) at the end;
* hardening: records whose ``video`` is absolute or climbs out of ``--video_folder`` are refused before anything is
  read; a feature file with NaN/inf stops the run naming the file, and a non-finite loss or gradient norm stops it
  before the optimizer step (nothing is saved as final); a checkpoint whose ``trainer_state.json`` or trainables are
  truncated is never resumed from (the one before it is); final files are written to a temporary and renamed, and
  a killed run's temporaries are removed at the next start; flags the original accepted but that do nothing here
  (``--is_multimodal``, ``--video_token_len``, ``--frame_aspect_ratio``, ``--force_fsdp``) log one line each, and
  these notes (and a bf16 -> fp32 fallback on CPU) go into ``run_info.json`` and the report.

Errors a user can fix are ``UserError`` (one line and exit status 1 from the command line, traceback with
``--debug``); ``SystemExit(1)`` when the data check fails.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

from video_chatgpt.data.conversation import TRAIN_TEMPLATE, training_template
from video_chatgpt.data.dataset import (
    SupervisedVideoDataset,
    VideoDataCollator,
    check_record_paths,
    first_feature_shape,
    load_records,
    load_training_tokenizer,
)
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.model.video_chatgpt import (
    VideoChatGPTForCausalLM,
    base_kind,
    load_config,
    load_projector_file,
    load_video_model,
)
from video_chatgpt.train.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    cpu_fsdp_note,
    ignored_flag_notes,
    parse_arguments,
    precision_fallback_note,
)
from video_chatgpt.train.atomic import remove_leftover_temporaries, write_text_atomically
from video_chatgpt.train.report import RUN_INFO_FILE
from video_chatgpt.train.trainer import TRAINABLE_FILE, VideoChatGPTTrainer

logger = logging.getLogger("video_chatgpt.train")


def _is_main(training_args: TrainingArguments) -> bool:
    return training_args.process_index == 0


def check_inputs(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Check the model folder and the data before loading anything big. Returns the data report."""
    from video_chatgpt.weights.check import check_weights

    if base_kind(model_args.model_name_or_path) == "llava_v1":  # check-weights knows the document's layout
        check_weights(model_args.model_name_or_path).raise_if_bad()
    settings = base_video_settings(model_args)
    if data_args.skip_data_check:
        return None
    from video_chatgpt.data.check import check_training_data

    # Token lengths (a SentencePiece pass over every record, ~30 CPU-s for 100K) only on the main process.
    report = check_training_data(
        data_args.data_path,
        data_args.video_folder,
        tokenizer_path=model_args.model_name_or_path if _is_main(training_args) else None,
        model_max_length=training_args.model_max_length,
        expected_width=settings["mm_hidden_size"],
        use_vid_start_end=model_args.mm_use_vid_start_end,
    )
    if _is_main(training_args):
        print(report.format(), flush=True)
    if report.fatal:
        raise SystemExit(
            f"data check failed for {data_args.data_path}; fix the data (see above) or convert it with "
            f"--clip_feature_path to drop records without features"
        )
    return report


def check_feature_manifest(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Before step 1: refuse a feature folder whose manifest's width (or token count) differs from the model's; warn
    when its tower differs from the config's ``mm_vision_tower``. A folder without a manifest passes (shapes are
    checked per file)."""
    from video_chatgpt.features.store import check_features_match

    settings = base_video_settings(model_args)
    if settings["mm_hidden_size"] is None:  # a plain causal LM: the features decide the width
        return
    for warning in check_features_match(
        data_args.video_folder,
        tower_name=settings["mm_vision_tower"],
        width=settings["mm_hidden_size"],
        num_tokens=settings["video_token_len"] or None,  # a LLaVA base has none: the features decide
    ):
        if _is_main(training_args):
            logger.warning("%s", warning)


def feature_shape_of(data_args: DataArguments, records: list[dict], report) -> tuple[int, int]:
    """(N video tokens, width) from the data report, else from the first record's feature file."""
    if report is not None and report.feature_shape:
        return tuple(report.feature_shape)
    return first_feature_shape(records, data_args.video_folder)


def model_dtype(model_args: ModelArguments, training_args: TrainingArguments) -> torch.dtype:
    """Frozen backbone: load straight in bf16/fp16 (what makes one 24 GB GPU enough). Full fine-tune: fp32."""
    frozen = model_args.tune_mm_mlp_adapter or model_args.freeze_backbone or training_args.lora_enable
    if frozen and training_args.bf16:
        return torch.bfloat16
    if frozen and training_args.fp16:
        return torch.float16
    return torch.float32


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why ``checkpoint-N`` cannot be resumed from, or None when its save finished and its files are whole.

    The Trainer writes ``trainer_state.json`` last, so a kill while saving leaves it missing, empty or cut short; a
    kill (or a full disk) while the weights were written leaves ``trainable.safetensors`` / ``model*.safetensors``
    shorter than their header says.
    """
    from video_chatgpt.weights.checkpoint import (
        WeightsError,
        find_checkpoint,
        read_safetensors_header,
        read_tensor_infos,
    )

    ckpt = Path(ckpt)
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json: the run stopped while saving it"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"trainer_state.json is empty or cut short ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    try:
        if (ckpt / TRAINABLE_FILE).exists():
            read_safetensors_header(ckpt / TRAINABLE_FILE)
        else:
            read_tensor_infos(find_checkpoint(ckpt, role="checkpoint"))
    except (WeightsError, OSError) as exc:
        return f"its weights cannot be read ({exc})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` that ``checkpoint_problem`` finds whole, else None.

    A run killed while writing a checkpoint leaves the folder half-written; resuming from it would fail, so it is
    skipped with a warning naming what is wrong, and the one before it is used.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in candidates:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        logger.warning("%s cannot be resumed from (%s); skipping it", ckpt, problem)
    return None


def _gathered_embeddings(model, training_args: TrainingArguments):
    """Context: the full input/output embedding tables on every process (ZeRO-3), edits from rank 0 kept."""
    import contextlib

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (training_args.deepspeed and is_deepspeed_zero3_enabled()):
        return contextlib.nullcontext()
    import deepspeed

    tables = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return deepspeed.zero.GatheredParameters(tables, modifier_rank=0)


def fit_embedding_rows(
    model, training_args: TrainingArguments, vocabulary_size: int, new_rows_from: int | None
) -> None:
    """``model.fit_vocabulary`` for any base, also under ZeRO-3, where each process holds a shard of the tables (an
    empty local shape): ``resize_token_embeddings`` gathers by itself, and the mean rows are set on the gathered
    tables (rank 0's edits kept)."""
    weight = model.get_input_embeddings().weight
    if not hasattr(weight, "ds_shape"):
        model.fit_vocabulary(vocabulary_size, new_rows_from=new_rows_from)
        return
    if weight.ds_shape[0] < vocabulary_size:
        model.resize_token_embeddings(vocabulary_size, mean_resizing=False)
    with _gathered_embeddings(model, training_args):
        model.fit_vocabulary(vocabulary_size, new_rows_from=new_rows_from)


def _gathered_projector(model, training_args: TrainingArguments):
    """Context: the projector's full tensors on every process when ZeRO-3 partitioned them (the document's base
    builds it inside ``from_pretrained``'s ``zero.Init``), edits from rank 0 kept; else nothing to do."""
    import contextlib

    params = [p for p in model.model.mm_projector.parameters() if hasattr(p, "ds_shape")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def base_video_settings(model_args: ModelArguments) -> dict:
    """``kind``, ``mm_vision_tower``, ``mm_hidden_size`` (None: the features decide) and ``video_token_len`` of the
    base folder, for any kind of base (``base_kind``), with ``--vision_tower`` taking precedence."""
    folder = Path(model_args.model_name_or_path)
    kind = base_kind(folder)
    if kind == "llava_v1":
        config = load_config(folder)
        tower, width, tokens = config.mm_vision_tower, config.mm_hidden_size, config.video_token_len
    elif kind == "llava_hf":
        raw = json.loads((folder / "config.json").read_text())
        tower, width, tokens = str(folder.resolve()), raw["vision_config"].get("hidden_size"), None
    else:
        raw = json.loads((folder / "config.json").read_text())
        tower, width, tokens = raw.get("mm_vision_tower"), raw.get("mm_hidden_size"), raw.get("video_token_len")
    return {
        "kind": kind,
        "mm_vision_tower": model_args.vision_tower or tower,
        "mm_hidden_size": width,
        "video_token_len": tokens,
    }


def conversation_template(model_args: ModelArguments, tokenizer) -> str:
    """The training template (``data.conversation.training_template``: plain / the chat template / vicuna_v1_1)."""
    return training_template(model_args.model_name_or_path, tokenizer, model_args.stage)


def build_model(
    model_args,
    training_args,
    video_ids: VideoTokenIds,
    num_new_tokens: int,
    feature_shape,
    template: str = TRAIN_TEMPLATE,
):
    """Load the base, add the video token rows, set what is trainable. ``video_ids``: already in the tokenizer."""
    kind = base_kind(model_args.model_name_or_path)
    if kind != "llava_v1":
        return build_other_base(model_args, training_args, video_ids, num_new_tokens, feature_shape, template, kind)
    config = load_config(
        model_args.model_name_or_path,
        use_cache=False,
        mm_use_vid_start_end=model_args.mm_use_vid_start_end,
        video_token_len=feature_shape[0],
        **({"mm_projector_type": model_args.mm_projector_type} if model_args.mm_projector_type else {}),
    )
    if config.mm_hidden_size is None:
        config.mm_hidden_size = feature_shape[1]
    if config.mm_hidden_size != feature_shape[1]:
        raise UserError(
            f"{model_args.model_name_or_path}: config mm_hidden_size is {config.mm_hidden_size}, but the feature "
            f"files are {feature_shape[1]} wide; extract the features with the base's vision tower"
        )
    from video_chatgpt.train.lora import LoraSettings, quantisation_config

    quantisation = quantisation_config(
        LoraSettings.from_training_args(training_args), model_dtype(model_args, training_args)
    )  # --bits 4|8 (QLoRA), else None
    model = VideoChatGPTForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        dtype=model_dtype(model_args, training_args),
        cache_dir=training_args.cache_dir,
        attn_implementation=model_args.attn_implementation,
        **({"quantization_config": quantisation} if quantisation is not None else {}),
    )
    # <vid_start>/<vid_end> rows start at the mean of all earlier rows (input and output), as in the original.
    if num_new_tokens:
        weight = model.get_input_embeddings().weight
        rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3: the local shape is an empty shard
        fit_embedding_rows(
            model, training_args, rows + num_new_tokens, new_rows_from=video_ids.start if num_new_tokens >= 2 else None
        )
    model.config.video_patch_token_id = video_ids.patch
    model.config.video_start_token_id = video_ids.start
    model.config.video_end_token_id = video_ids.end
    if model_args.vision_tower:
        model.config.mm_vision_tower = model_args.vision_tower
    if template != TRAIN_TEMPLATE:
        model.config.conv_template = template
    return set_trainable(model, model_args, training_args, video_ids)


def build_other_base(model_args, training_args, video_ids, num_new_tokens, feature_shape, template, kind):
    """Any causal LM (random projector of ``--mm_projector_type``) or a LLaVA-1.5/NeXT folder (its projector)."""
    if kind == "causal_lm" and model_args.stage == "finetune" and not model_args.pretrain_mm_mlp_adapter:
        raise UserError(
            f"{model_args.model_name_or_path}: --stage finetune on a causal LM needs the stage-1 projector: "
            f"--pretrain_mm_mlp_adapter <stage-1 output_dir>/mm_projector.bin (run --stage pretrain first)"
        )
    fields = {
        "use_cache": False,
        "mm_use_vid_start_end": model_args.mm_use_vid_start_end,
        "video_token_len": feature_shape[0],
        "conv_template": template,
    }
    if model_args.vision_tower:
        fields["mm_vision_tower"] = model_args.vision_tower
    from video_chatgpt.train.lora import LoraSettings, quantisation_config

    quantisation = quantisation_config(
        LoraSettings.from_training_args(training_args), model_dtype(model_args, training_args)
    )  # --bits 4|8 (QLoRA), else None
    try:
        model, _ = load_video_model(
            model_args.model_name_or_path,
            dtype=model_dtype(model_args, training_args),
            projector_type=model_args.mm_projector_type,
            mm_hidden_size=feature_shape[1],
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantisation,
            **fields,
        )
    except ValueError as exc:
        raise UserError(f"{model_args.model_name_or_path}: {exc}") from exc
    # <vid_start>/<vid_end> rows start at the mean of the earlier rows; the table grows only if it is too small.
    vocabulary_size = max(x for x in (video_ids.patch, video_ids.start, video_ids.end) if x is not None) + 1
    fit_embedding_rows(
        model, training_args, vocabulary_size, new_rows_from=video_ids.start if num_new_tokens >= 2 else None
    )
    return set_trainable(model, model_args, training_args, video_ids)


def set_trainable(model, model_args, training_args, video_ids: VideoTokenIds):
    """Token ids into the config, then what trains: all, the projector (+ start/end rows), or what is not frozen."""
    model.config.video_patch_token_id = video_ids.patch
    model.config.video_start_token_id = video_ids.start
    model.config.video_end_token_id = video_ids.end
    model.config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    model.config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    row_ids = [video_ids.start, video_ids.end] if video_ids.use_start_end else []

    if model_args.freeze_backbone:
        model._decoder().requires_grad_(False)
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        model.model.mm_projector.requires_grad_(True)
        if row_ids:
            with _gathered_embeddings(model, training_args):
                model.train_token_rows(row_ids)
    if training_args.lora_enable:  # LoRA (train/lora.py): frozen backbone, projector + rows + adapters train
        from video_chatgpt.train.lora import LoraSettings, add_lora

        if not model_args.tune_mm_mlp_adapter:
            model.requires_grad_(False)
            model.model.mm_projector.requires_grad_(True)
            if row_ids:
                with _gathered_embeddings(model, training_args):
                    model.train_token_rows(row_ids)
        add_lora(model, LoraSettings.from_training_args(training_args))
    if training_args.freeze_mm_mlp_adapter:
        model.model.mm_projector.requires_grad_(False)
    if model_args.pretrain_mm_mlp_adapter:
        with _gathered_embeddings(model, training_args), _gathered_projector(model, training_args):
            load_pretrained_adapter(model, model_args.pretrain_mm_mlp_adapter, row_ids)
    # Trainable tensors are kept in fp32 whatever the backbone dtype (autocast does the bf16 compute).
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def load_pretrained_adapter(model: VideoChatGPTForCausalLM, path: str, row_ids: list[int]) -> None:
    """Start from an ``mm_projector.bin``: the projector, and the start/end rows if present (full table or 2 rows)."""
    state = load_projector_file(path)
    proj = model.model.mm_projector
    own = proj.state_dict()  # linear: weight, bias; mlp2x_gelu: 0.weight, 0.bias, 2.weight, 2.bias
    # Any prefix ending in "mm_projector." (ours and LLaVA's "model.mm_projector.", DeepSpeed's "module.model...").
    found = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    if set(found) != set(own):
        raise KeyError(
            f"{path}: projector tensors {sorted(found)} do not match this model's "
            f"{getattr(model.config, 'mm_projector_type', 'linear')!r} projector {sorted(own)} "
            f"(see --mm_projector_type); keys present: {sorted(state)[:8]}"
        )
    for name, tensor in own.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: projector {name} {tuple(found[name].shape)} != model {tuple(tensor.shape)}")
    with torch.no_grad():
        proj.load_state_dict({k: v.to(own[k].dtype) for k, v in found.items()})
        embed = state.get("model.embed_tokens.weight")
        if embed is not None and row_ids:
            vocab = model.get_input_embeddings().weight.shape[0]
            if embed.shape[0] == vocab:
                rows = embed[torch.tensor(row_ids)]
            elif embed.shape[0] == len(row_ids):
                rows = embed
            else:
                raise ValueError(f"{path}: embed_tokens has {embed.shape[0]} rows; expected {vocab} or {len(row_ids)}")
            model.get_input_embeddings().weight[torch.tensor(row_ids)] = rows.to(
                model.get_input_embeddings().weight.dtype
            )
            if getattr(model.model, "video_token_embeds", None) is not None:
                model.model.video_token_embeds.copy_(rows.float())


def trainable_summary(model) -> tuple[str, list[tuple[str, int]]]:
    """One line naming the trainable tensors and counts, and the (name, count) list."""
    named = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(c for _, c in named)
    shown = ", ".join(f"{n} ({c:,})" for n, c in named[:6]) + (
        f", ... ({len(named)} tensors)" if len(named) > 6 else ""
    )
    return f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%): {shown}", named


def write_run_info(training_args, argv, named, data_report, extra: dict) -> None:
    """``output_dir/run_info.json``: the exact command, versions, trainables and data summary (for the report)."""

    info = {
        "command": shlex.join(sys.argv if sys.argv[1:] == argv else ["video-chatgpt", "train", *argv]),
        "argv": argv,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "world_size": training_args.world_size,
        "trainable_parameters": [{"name": n, "count": c} for n, c in named],
        "data": data_report.summary() if data_report is not None and hasattr(data_report, "summary") else None,
        **extra,
    }
    path = Path(training_args.output_dir, RUN_INFO_FILE)
    old = _read_run_info(path)
    if old.get("runs"):
        info["runs"] = old["runs"]
    write_text_atomically(path, json.dumps(info, indent=2))


def _read_run_info(path: Path) -> dict:
    """The run info so far ({} when there is none, or when a pre-atomic run left it cut short: it is rewritten)."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s is not valid JSON (a run stopped while writing it); starting it again", path)
        return {}
    return info if isinstance(info, dict) else {}


def append_run(training_args, record: dict) -> None:
    path = Path(training_args.output_dir, RUN_INFO_FILE)
    info = _read_run_info(path)
    info.setdefault("runs", []).append(record)
    write_text_atomically(path, json.dumps(info, indent=2))


def replica_checksums(model, training_args: TrainingArguments) -> list[str] | None:
    """One sha256 of the trainable tensors per process (all equal when the replicas stayed in sync), or None.

    None with one process, and where parameters are partitioned across processes (ZeRO-3, FSDP), so that each
    process holds only a shard. Every process must call this (it gathers).
    """
    import hashlib

    import torch.distributed as dist

    if training_args.world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return None
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if training_args.fsdp or any(hasattr(p, "ds_id") for _, p in params):
        return None
    digest = hashlib.sha256()
    for name, p in params:
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest())
    return gathered


def init_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Set up ``deepspeed.comm`` on the process group that is already there, before the model is built.

    ZeRO-3's ``deepspeed.zero.Init`` (run inside ``from_pretrained``) reads the world size from ``deepspeed.comm``.
    accelerate sets that up itself only on GPUs; on the CPU (``use_cpu``) it is still unset at that point, so
    zero.Init counted 1 process and rejected the batch sizes ("train_batch_size ... 4 != 2 * 1 * 1").
    """
    import torch.distributed as dist

    if not training_args.deepspeed or not dist.is_available() or not dist.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend())


def train(argv: list[str] | None = None) -> Path:
    """Run the recipe; returns the output folder. ``argv`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if _is_main(training_args) else logging.WARNING,
    )
    if model_args.version not in ("v1", "vicuna_v1_1") and base_kind(model_args.model_name_or_path) == "llava_v1":
        logger.warning(
            "--version %s: training always uses the vicuna_v1_1 template (as the original)", model_args.version
        )
    notes = ignored_flag_notes(argv) + [
        n for n in [precision_fallback_note(argv, training_args), cpu_fsdp_note(training_args)] if n
    ]
    if _is_main(training_args):
        for note in notes:
            logger.warning("%s", note)
        remove_leftover_temporaries(training_args.output_dir)

    # Record paths first: the data check and everything after it read the files the records name.
    records = load_records(data_args.data_path)
    check_record_paths(records, data_args.video_folder, data_args.data_path)
    data_report = check_inputs(model_args, data_args, training_args)
    feature_shape = feature_shape_of(data_args, records, data_report)
    check_feature_manifest(model_args, data_args, training_args)

    tokenizer, video_ids, num_new = load_training_tokenizer(
        model_args.model_name_or_path, training_args.model_max_length, model_args.mm_use_vid_start_end
    )
    from video_chatgpt.train.lora import check_quantisation_available

    check_quantisation_available(training_args.bits)  # --bits 4|8: CUDA + bitsandbytes, said before loading
    # Seed before building: the new <vid_patch> row gets a random init, the same on every process and every rerun.
    transformers.set_seed(training_args.seed)
    init_deepspeed_comm(training_args)
    template = conversation_template(model_args, tokenizer)
    model = build_model(model_args, training_args, video_ids, num_new, feature_shape, template)
    summary, named = trainable_summary(model)
    if _is_main(training_args):
        print(summary, flush=True)

    dataset = SupervisedVideoDataset(  # training_dataset(...), with the base's template
        records,
        data_args.video_folder,
        SegmentEncoder(tokenizer),
        video_ids,
        feature_shape=feature_shape,
        max_length=training_args.model_max_length,
        lazy=data_args.lazy_preprocess,
        template=template,
    )
    trainer = VideoChatGPTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=VideoDataCollator(pad_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        base_model_path=model_args.model_name_or_path,
    )
    resume = training_args.resume_from_checkpoint
    if resume is not None and checkpoint_problem(resume) is not None:
        raise UserError(f"--resume_from_checkpoint {resume}: {checkpoint_problem(resume)}; resume from another one")
    if resume is None:
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume is not None:
            logger.info("resuming from %s", resume)
    if _is_main(training_args):
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_run_info(training_args, argv, named, data_report, {"feature_shape": list(feature_shape), "notes": notes})
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - start
    checksums = replica_checksums(trainer.accelerator.unwrap_model(trainer.model), training_args)
    if checksums is not None and len(set(checksums)) > 1:
        logger.warning(
            "the processes ended with different trainable weights (sha256 %s); only rank 0's are saved", checksums
        )
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if _is_main(training_args):
        append_run(
            training_args,
            {
                "resumed_from": str(resume) if resume else None,
                "wall_time_s": round(wall, 2),
                "global_step": trainer.state.global_step,
                "train_loss": result.training_loss,
                "metrics": result.metrics,
                "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)
                if torch.cuda.is_available()
                else None,
                "peak_rss_gb": _peak_rss_gb(),
                "replica_checksums": checksums,
            },
        )
        _write_report(training_args.output_dir)
    return Path(training_args.output_dir)


def _peak_rss_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _write_report(output_dir: str) -> None:
    from video_chatgpt.train.report import write_report

    paths = write_report(output_dir)
    logger.info("training report: %s", ", ".join(str(p) for p in paths))


def main(argv: list[str] | None = None) -> int:
    train(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, prog="train.py"))
