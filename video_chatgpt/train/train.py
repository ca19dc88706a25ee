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

What ``train()`` does:
* checks before anything heavy: the model folder (``check-weights``) and the data (every feature file present and
  of one shape; ``--skip_data_check`` turns the data check off); both stop with the list of problems;
* the training mode (``arguments.training_mode``, which ``plan-memory`` reads too): ``projector``, ``lora``
  (``train/lora.py``; ``--bits 4|8``: QLoRA) or ``full``. A frozen backbone is loaded in bf16/fp16, trainables stay
  fp32; a full fine-tune loads in fp32 (mixed precision through autocast);
* the loss only at supervised positions (no (B, L, V) logits); ``--group_by_length`` and ``--packing``:
  ``docs/packing.md``;
* saving (``trainer.py``: ``mm_projector.bin`` with the original's keys, config, tokenizer), resuming from the newest
  whole ``checkpoint-N`` (``checkpoints.py``), ``run_info.json`` (``run_info.py``) and the report
  (``training_report.md``, ``loss.png``) at the end;
* hardening: record paths outside ``--video_folder`` are refused before anything is read; NaN/inf in a feature file,
  the loss or the gradient norm stops the run before the optimizer step; a damaged checkpoint is never resumed from;
  final files are written atomically; the original's no-op flags (``arguments.IGNORED_FLAGS``) and a bf16 -> fp32
  fallback on CPU log one line each and go into the report.

The base folder is resolved once (``bases.open_base``) and the model built by the one loader
(``model.loading.load_model``); DeepSpeed's set-up and the replica check are in ``distributed.py``. Errors a user can
fix are ``UserError`` (one line and exit status 1, traceback with ``--debug``); ``SystemExit(1)`` when the data check
fails.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch
import transformers

from video_chatgpt.bases import Base, open_base
from video_chatgpt.data.check import check_training_data
from video_chatgpt.data.conversation import training_template
from video_chatgpt.data.dataset import (
    PackedVideoDataCollator,
    SupervisedVideoDataset,
    VideoDataCollator,
    check_record_paths,
    first_feature_shape,
    load_records,
)
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds, load_video_tokenizer
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.store import check_features_match, read_manifest
from video_chatgpt.files import remove_leftover_temporaries
from video_chatgpt.model.loading import embedding_tables, gathered, load_model, load_projector, read_projector_file
from video_chatgpt.train.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    backbone_frozen,
    cpu_fsdp_note,
    ignored_flag_notes,
    parse_arguments,
    precision_fallback_note,
    schedule_notes,
    training_mode,
    tunes_projector,
)
from video_chatgpt.train.checkpoints import checkpoint_to_resume
from video_chatgpt.train.distributed import init_deepspeed_comm, replica_checksums
from video_chatgpt.train.lora import LoraSettings, add_lora, check_quantisation_available, quantisation_config
from video_chatgpt.train.report import write_report
from video_chatgpt.train.run_info import append_run, write_run_info
from video_chatgpt.train.trainer import VideoChatGPTTrainer
from video_chatgpt.weights.check import check_weights

logger = logging.getLogger("video_chatgpt.train")


def train(argv: list[str] | None = None) -> Path:
    """Run the recipe; returns the output folder. ``argv`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args = parse_arguments(argv)
    is_main = _is_main(training_args)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING
    )
    check_quantisation_available(training_args.bits)  # --bits 4|8: CUDA + bitsandbytes, said before anything
    base = open_base(model_args.model_name_or_path)
    if model_args.version not in ("v1", "vicuna_v1_1") and base.is_llava_v1:
        logger.warning(
            "--version %s: training always uses the vicuna_v1_1 template (as the original)", model_args.version
        )
    notes = ignored_flag_notes(argv) + [
        n for n in [precision_fallback_note(argv, training_args), cpu_fsdp_note(training_args)] if n
    ]
    if is_main:
        for note in notes:
            logger.warning("%s", note)
        output = Path(training_args.output_dir)  # a killed run's temporaries, in the run and its checkpoints
        for place in (output, *output.glob("checkpoint-*")):
            remove_leftover_temporaries(place)

    # Data checks. Record paths first: the data check and everything after it read the files the records name.
    records = load_records(data_args.data_path)
    check_record_paths(records, data_args.video_folder, data_args.data_path)
    data_report = check_inputs(base, model_args, data_args, training_args)
    feature_shape = feature_shape_of(data_args, records, data_report)  # (video tokens, feature width)
    check_feature_manifest(base, model_args, data_args, training_args)

    # The checkpoint to resume from, checked whole before anything big is loaded.
    resume = checkpoint_to_resume(training_args.resume_from_checkpoint, training_args.output_dir)

    # Tokenizer and model.
    tokenizer, video_ids, num_new = load_video_tokenizer(
        base.folder, model_args.mm_use_vid_start_end, training_args.model_max_length
    )
    # Seed before building: the new <vid_patch> row gets a random init, the same on every process and every rerun.
    transformers.set_seed(training_args.seed)
    init_deepspeed_comm(training_args)
    template = training_template(base, tokenizer, model_args.stage)  # plain / the chat template / vicuna_v1_1
    model = build_model(base, model_args, training_args, video_ids, num_new, feature_shape, template, data_args)
    summary, named = trainable_summary(model)
    if is_main:
        print(summary, flush=True)

    # Dataset and Trainer.
    dataset = SupervisedVideoDataset(
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
        data_collator=collator(tokenizer, model_args, training_args),
        processing_class=tokenizer,
        base_model_path=str(base.folder),
    )
    if is_main:
        for note in schedule_notes(len(dataset), training_args):
            logger.warning("%s", note)
            notes.append(note)
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_run_info(training_args, argv, named, data_report, {"feature_shape": list(feature_shape), "notes": notes})

    # Train.
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

    # Save (the Trainer's _save: mm_projector.bin, config, tokenizer, ...), then the run segment and the report.
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if is_main:
        append_run(training_args, resume, wall, trainer.state.global_step, result, checksums)
        paths = write_report(training_args.output_dir)
        logger.info("training report: %s", ", ".join(str(p) for p in paths))
    return Path(training_args.output_dir)


def main(argv: list[str] | None = None) -> int:
    try:
        train(argv)
    except SystemExit as exc:  # --help printed: exit 0 (a failed data check exits with its message)
        if exc.code != 0:
            raise
    return 0


# ------------------------------------------------------------------------------------------------ the steps
def _is_main(training_args: TrainingArguments) -> bool:
    return training_args.process_index == 0


def check_inputs(base: Base, model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Check the model folder and the data before loading anything big. Returns the data report."""
    if base.is_llava_v1:  # check-weights knows the document's layout
        check_weights(base.folder).raise_if_bad()
    if data_args.skip_data_check:
        return None
    # Token lengths (a SentencePiece pass over every record, ~30 CPU-s for 100K) only on the main process.
    report = check_training_data(
        data_args.data_path,
        data_args.video_folder,
        base=base if _is_main(training_args) else None,
        model_max_length=training_args.model_max_length,
        expected_width=base.feature_width,
        use_vid_start_end=model_args.mm_use_vid_start_end,
        stage=model_args.stage,
    )
    if _is_main(training_args):
        print(report.format(), flush=True)
    if report.fatal:
        raise SystemExit(
            f"data check failed for {data_args.data_path}; fix the data (see above) or convert it with "
            f"--clip_feature_path to drop records without features"
        )
    return report


def check_feature_manifest(
    base: Base, model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
):
    """Before step 1: refuse a feature folder whose manifest's width (or token count) differs from the model's; warn
    when its tower differs from the model's (``--vision_tower`` or the base's). A folder without a manifest passes
    (shapes are checked per file)."""
    if base.feature_width is None:  # a plain causal LM: the features decide the width
        return
    for warning in check_features_match(
        data_args.video_folder,
        tower_name=model_args.vision_tower or base.vision_tower,
        width=base.feature_width,
        num_tokens=base.video_token_len,  # a LLaVA base has none: the features decide
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
    if backbone_frozen(model_args, training_args) and (training_args.bf16 or training_args.fp16):
        return torch.bfloat16 if training_args.bf16 else torch.float16
    return torch.float32


def build_model(
    base: Base,
    model_args: ModelArguments,
    training_args: TrainingArguments,
    video_ids: VideoTokenIds,
    num_new_tokens: int,
    feature_shape: tuple[int, int],
    template: str,
    data_args: DataArguments | None = None,
):
    """Load the base with its video tokens fitted (``model.loading.load_model``) for features of ``feature_shape``
    (N tokens, width), record what it trains with (template, tower, frames), then set what is trainable."""
    if base.is_causal_lm and model_args.stage == "finetune" and not model_args.pretrain_mm_mlp_adapter:
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
    manifest = read_manifest(data_args.video_folder) if data_args is not None else None
    if manifest and isinstance(manifest.get("num_frames"), int):
        fields["num_video_frames"] = manifest["num_frames"]  # chat/predict sample as many frames
    dtype = model_dtype(model_args, training_args)
    model = load_model(
        base,
        video_ids,
        num_new_tokens,
        dtype=dtype,
        mm_hidden_size=feature_shape[1],
        projector_type=model_args.mm_projector_type,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantisation_config(LoraSettings.from_training_args(training_args), dtype),  # --bits
        cache_dir=training_args.cache_dir,
        **fields,
    )
    return set_trainable(model, model_args, training_args, video_ids)


def collator(tokenizer, model_args: ModelArguments, training_args: TrainingArguments):
    """The batch collator: padded (the original's), or ``--packing``'s one packed row per batch (with flash-attn's
    boundaries given explicitly under ``--attn_implementation flash_attention_2``)."""
    if training_args.packing:
        return PackedVideoDataCollator(flash_attn_kwargs=model_args.attn_implementation.startswith("flash_attention"))
    return VideoDataCollator(pad_id=tokenizer.pad_token_id)


def set_trainable(model, model_args, training_args, video_ids: VideoTokenIds):
    """What trains, by the training mode (``arguments.training_mode``): all of it
    (``full``, less what ``--freeze_backbone`` freezes), the projector and start/end rows (``projector``), or those
    and the LoRA adapters (``lora``); ``--freeze_mm_mlp_adapter`` then freezes the projector."""
    mode = training_mode(model_args, training_args)
    model.config.tune_mm_mlp_adapter = tunes_projector(model_args)
    model.config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    row_ids = [video_ids.start, video_ids.end] if video_ids.use_start_end else []

    if model_args.freeze_backbone:  # the original's flag: the LLM body (not lm_head)
        model._decoder().requires_grad_(False)
    if mode in ("projector", "lora"):  # frozen backbone: the projector and the <vid_start>/<vid_end> rows train
        model.requires_grad_(False)
        model.model.mm_projector.requires_grad_(True)
        if row_ids:
            with gathered(embedding_tables(model)):
                model.train_token_rows(row_ids)
    if mode == "lora":  # train/lora.py: peft adapters on the LLM's linear layers
        add_lora(model, LoraSettings.from_training_args(training_args))
    if training_args.freeze_mm_mlp_adapter:
        model.model.mm_projector.requires_grad_(False)
    if model_args.pretrain_mm_mlp_adapter:  # the stage-1 projector (and its start/end rows)
        path = model_args.pretrain_mm_mlp_adapter
        with gathered(embedding_tables(model)), gathered(list(model.model.mm_projector.parameters())):
            load_projector(model, read_projector_file(path), f"--pretrain_mm_mlp_adapter {path}", row_ids)
    # Trainable tensors are kept in fp32 whatever the backbone dtype (autocast does the bf16 compute).
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def trainable_summary(model) -> tuple[str, list[tuple[str, int]]]:
    """One line naming the trainable tensors and counts, and the (name, count) list."""
    named = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(c for _, c in named)
    shown = ", ".join(f"{n} ({c:,})" for n, c in named[:6]) + (
        f", ... ({len(named)} tensors)" if len(named) > 6 else ""
    )
    return f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%): {shown}", named


if __name__ == "__main__":
    sys.exit(run_main(main, None, prog="train.py"))
