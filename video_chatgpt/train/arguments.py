"""Training arguments: the user's document's flags, parsed as Hugging Face ``TrainingArguments`` + two dataclasses.

Defaults are the original's (``model_max_length`` 512, ``optim`` adamw_torch, ``remove_unused_columns`` False...);
the document's recipe sets the rest on the command line. Differences, each for a reason:

* ``--evaluation_strategy`` and ``--warmup_ratio`` (removed from current transformers) are accepted and mean
  ``--eval_strategy`` and a fractional ``--warmup_steps``; ``--gradient_checkpointing`` means
  ``--activation_checkpointing``.
* ``--tf32 True`` on a machine without CUDA is a warning, not a crash; with no CUDA at all, training runs on the CPU
  (``use_cpu``); ``--bf16`` runs as CPU bf16 autocast where the CPU has native bf16, else in fp32 (with a warning).
* ``--gradient_checkpointing`` uses the non-reentrant implementation (works with a frozen backbone).
* ``--is_multimodal``, ``--video_token_len``, ``--frame_aspect_ratio``, ``--force_fsdp`` are accepted and do nothing
  (``IGNORED_FLAGS`` says why); training logs one line for each one given, and puts it in the report.
* ``--group_by_length`` and ``--packing`` (docs/packing.md): batches of similar length, and padding-free packed rows.
* DDP neither searches for unused parameters nor broadcasts buffers each step (all trainables are used).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
import transformers
from transformers.hf_argparser import string_to_bool
from transformers.training_args import ParallelMode

from video_chatgpt.args import HelpFormatter, program
from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json
from video_chatgpt.train.lora import check_flags

logger = logging.getLogger(__name__)


def flag_field(default, help_: str, **metadata):
    """A dataclass field for a command-line flag: its default and its help (``aliases``: other spellings)."""
    return field(default=default, metadata={"help": help_, **metadata})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = flag_field(
        None, "the base: LLaVA-7B-Lightening-v1-1 folder, a LLaVA-1.5/NeXT folder, or any causal LM folder"
    )
    version: str = flag_field(
        "v0", "conversation version; as in the original, training always uses the vicuna_v1_1 template"
    )
    freeze_backbone: bool = flag_field(False, "freeze the LLaMA body (not lm_head)")
    tune_mm_mlp_adapter: bool = flag_field(
        False, "train only the video projector (and the <vid_start>/<vid_end> rows with start/end)"
    )
    pretrain_mm_mlp_adapter: str | None = flag_field(
        None, "an mm_projector.bin to start the projector (and start/end rows) from"
    )
    mm_use_vid_start_end: bool = flag_field(False, "bracket the video tokens with <vid_start> ... <vid_end>")
    attn_implementation: str = flag_field("sdpa", "sdpa | flash_attention_2 (needs flash-attn) | eager")
    # Other bases: any AutoModelForCausalLM + any CLIP/SigLIP tower, or a LLaVA-1.5/NeXT folder.
    vision_tower: str | None = flag_field(
        None,
        "the tower the features were made with (recorded as mm_vision_tower for chat/predict); "
        "default: the base config's mm_vision_tower (a LLaVA-1.5 folder: the folder itself)",
    )
    mm_projector_type: str | None = flag_field(
        None,
        "linear (the original) | mlp2x_gelu (LLaVA-1.5: Linear-GELU-Linear); default: the base's "
        "(linear for the document's LLaVA, mlp2x_gelu for a LLaVA-1.5 folder, linear otherwise)",
    )
    stage: str | None = flag_field(
        None,
        "pretrain: the projector alone on video-caption pairs with the plain '<video>caption' "
        "template (LLaVA's stage 1); finetune: the instruction data with the base's template, "
        "starting from --pretrain_mm_mlp_adapter <stage-1 mm_projector.bin>; default: the "
        "document's single stage",
    )


@dataclass
class DataArguments:
    data_path: str | None = flag_field(None, "training JSON (convert_instruction_json_...)")
    lazy_preprocess: bool = flag_field(False, "render samples when they are read (True) or all at start (False)")
    is_multimodal: bool = flag_field(False, "accepted and ignored: always multimodal")
    sep_video_conv_front: bool = flag_field(False, "not supported (rejected if True)")
    video_token_len: int = flag_field(0, "accepted and ignored: read from the features")
    video_folder: str | None = flag_field(
        None, "folder of <video_id>.pkl / .npy feature files", aliases=["--features_dir"]
    )
    frame_aspect_ratio: str = flag_field("square", "accepted and ignored: features are precomputed")
    skip_data_check: bool = flag_field(False, "do not run the data check before training (not recommended)")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = flag_field(False, "keep the projector frozen")
    force_fsdp: bool = flag_field(False, "accepted and ignored: --fsdp alone selects FSDP")
    model_max_length: int = flag_field(512, "maximum sequence length; longer samples are truncated on the right")
    evaluation_strategy: str | None = flag_field(
        None, "old name of --eval_strategy (kept so the document's command works)"
    )
    warmup_ratio: float | None = flag_field(
        None, "old name of a fractional --warmup_steps: warmup over this ratio of all steps"
    )
    group_by_length: bool = flag_field(
        False,
        "batches of samples of similar length (less padding; the order is still shuffled with --seed); "
        "same as --train_sampling_strategy group_by_length; see docs/packing.md",
    )
    packing: bool = flag_field(
        False,
        "padding-free: the samples of a batch concatenated into one row, attention kept within each "
        "sample; --per_device_train_batch_size still counts samples; see docs/packing.md",
    )
    ddp_find_unused_parameters: bool | None = field(default=False)
    ddp_broadcast_buffers: bool | None = field(default=False)
    # LoRA / QLoRA on the language model, in LLaVA's flag names; see video_chatgpt/train/lora.py.
    lora_enable: bool = flag_field(False, "train LoRA adapters on the LLM (and the projector)")
    lora_r: int = flag_field(64, "LoRA rank")
    lora_alpha: int = flag_field(16, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = flag_field(0.05, "dropout on the LoRA input")
    lora_target_modules: str | None = flag_field(
        None,
        "comma-separated linear layer names of the LLM (e.g. q_proj,v_proj); default: all of "
        "its linear layers (never lm_head, the projector or the vision side)",
    )
    lora_weight_path: str = flag_field("", "accepted as in LLaVA; unused")
    lora_bias: str = flag_field("none", "none (the only supported value)")
    mm_projector_lr: float | None = flag_field(None, "learning rate of the projector (default: --learning_rate)")
    bits: int = flag_field(16, "16 (no quantisation), 8 or 4 (QLoRA; bitsandbytes, CUDA only)")
    double_quant: bool = flag_field(
        True, "4-bit: also quantise the quantisation constants (True) or not (False, --no_double_quant)"
    )
    quant_type: str = flag_field("nf4", "4-bit: nf4 or fp4")

    def __post_init__(self):
        # --group_by_length (LLaVA's and older transformers' flag) is transformers 5's sampling strategy of that name;
        # the Trainer groups by the dataset's own lengths (trainer.VideoChatGPTTrainer._get_train_sampler).
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        self.group_by_length = self.train_sampling_strategy == "group_by_length"
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        # The document's --gradient_checkpointing is the deprecated alias of --activation_checkpointing; map it here so
        # both names behave the same, without the deprecation warning on the document's own command.
        if self.gradient_checkpointing is not None and self.activation_checkpointing is None:
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        if not torch.cuda.is_available():
            if self.tf32:
                logger.warning("--tf32 True needs a CUDA GPU; none is available, so TF32 is not enabled")
                self.tf32 = None
            if not self.use_cpu:
                logger.warning("no CUDA GPU available: training on the CPU (use_cpu=True)")
                self.use_cpu = True
            if (self.bf16 or self.fp16) and not cpu_has_fast_bf16():
                # Measured on the tiny sample: CPU bf16 autocast without native bf16 is ~20x slower than fp32.
                # (Said once, by training's precision_fallback_note; plan-memory plans for the accelerator.)
                self.bf16 = self.fp16 = False
        super().__post_init__()


# What a run trains; train.py (load dtype, trainable tensors) and plan-memory both read it from ``training_mode``.
TrainingMode = Literal["projector", "lora", "full"]
TRAINING_MODES: tuple[TrainingMode, ...] = get_args(TrainingMode)


def tunes_projector(model_args: ModelArguments) -> bool:
    """``--tune_mm_mlp_adapter True``, or ``--stage pretrain`` (stage 1 trains the projector alone, whatever the
    tuning flag says)."""
    return model_args.tune_mm_mlp_adapter or model_args.stage == "pretrain"


def training_mode(model_args: ModelArguments, training_args: TrainingArguments) -> TrainingMode:
    """What trains, from the flags:

    * ``lora`` (``--lora_enable True``): the LoRA adapters on the LLM, the projector and the start/end rows;
    * ``projector`` (``--tune_mm_mlp_adapter True`` or ``--stage pretrain``): the projector and the start/end rows;
    * ``full`` (neither): the whole model, less what ``--freeze_backbone`` / ``--freeze_mm_mlp_adapter`` freeze.
    """
    if training_args.lora_enable:
        return "lora"
    return "projector" if tunes_projector(model_args) else "full"


def backbone_frozen(model_args: ModelArguments, training_args: TrainingArguments) -> bool:
    """Whether the LLM's weights stay frozen: in the projector and lora modes, and with ``--freeze_backbone True``
    (the original's flag: the LLM body frozen inside the full mode)."""
    return training_mode(model_args, training_args) != "full" or model_args.freeze_backbone


# Flags of the original's commands that are accepted (so its commands run unchanged) and do nothing here, and why.
IGNORED_FLAGS = {
    "is_multimodal": "training is always multimodal (every record with a 'video' gets its features)",
    "video_token_len": "the number of video tokens is read from the feature files (and checked against them)",
    "frame_aspect_ratio": "features are precomputed; frames are resized when they are extracted, not in training",
    "force_fsdp": "FSDP is chosen with --fsdp alone (the original patched FSDP's __init__ under this flag)",
}


def _given_flags(argv: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def ignored_flag_notes(argv: list[str]) -> list[str]:
    """One sentence per accepted-but-ignored flag present on the command line."""
    given = _given_flags(argv)
    return [f"--{flag} has no effect: {why}" for flag, why in IGNORED_FLAGS.items() if flag in given]


def asked_precision(argv: list[str]) -> list[str]:
    """Which of ``--bf16`` / ``--fp16`` (``--bf16`` or ``--bf16 True``) the command line asks for, whatever
    ``TrainingArguments`` then made of them (it drops them on a CPU without native bf16)."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("bf16", "fp16"):
        parser.add_argument(f"--{flag}", type=string_to_bool, nargs="?", const=True, default=False)
    asked, _ = parser.parse_known_args(argv)
    return [flag for flag in ("bf16", "fp16") if getattr(asked, flag)]


def precision_fallback_note(argv: list[str], training_args: TrainingArguments) -> str | None:
    """The sentence for the report when ``--bf16``/``--fp16`` was asked for but the run computes in fp32 (CPU)."""
    wanted = asked_precision(argv)
    if not wanted or training_args.bf16 or training_args.fp16:
        return None
    return (
        f"--{wanted[0]} True: no CUDA GPU and no native bf16 on this CPU, so training ran in fp32 (emulated bf16 "
        f"autocast is about 20x slower here); the saved files are the same fp32 format"
    )


def cpu_fsdp_note(training_args: TrainingArguments) -> str | None:
    """The sentence for the log and the report when ``--fsdp`` is given on the CPU, where it does not shard.

    accelerate builds an FSDP run only for GPU-family devices; on the CPU (``use_cpu``) it silently wraps the model
    in plain DistributedDataParallel (seen under ``torchrun --nproc_per_node=2`` here), so each process holds it all.
    """
    if not training_args.fsdp or not training_args.use_cpu:
        return None
    return (
        "--fsdp has no effect on the CPU: accelerate shards with FSDP only on GPUs and runs plain "
        "DistributedDataParallel here (every process holds the whole model); use --deepspeed configs/zero3.json "
        "to partition the parameters on the CPU"
    )


def schedule_notes(num_samples: int, training_args: TrainingArguments, few: int = 3) -> list[str]:
    """Warnings for a schedule that can hardly work: an epoch of fewer than ``few`` optimizer steps, or
    ``--logging_steps`` beyond the run's steps (no loss would be logged)."""
    per_step = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    per_epoch = math.ceil(math.ceil(num_samples / per_step) / training_args.gradient_accumulation_steps)
    total = (
        training_args.max_steps
        if training_args.max_steps > 0
        else math.ceil(per_epoch * training_args.num_train_epochs)
    )
    notes = []
    if training_args.max_steps <= 0 and per_epoch < few:
        notes.append(
            f"an epoch is {per_epoch} optimizer step(s) ({num_samples} samples / batch {per_step} / accumulation "
            f"{training_args.gradient_accumulation_steps}): the warmup and schedule have little to work with; use a "
            f"smaller --per_device_train_batch_size or more data"
        )
    logging_steps = training_args.logging_steps
    if training_args.logging_strategy == "steps" and logging_steps >= 1 and logging_steps > total:
        notes.append(
            f"--logging_steps {logging_steps:g} is more than the run's {total} optimizer steps: no loss will be "
            f"logged; lower it"
        )
    return notes


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); otherwise bf16 autocast is emulated and slow."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


# ------------------------------------------------------------------------------------------------ --help
# What ``train --help`` shows, in groups, with short help for Hugging Face's flags; ``--help-all`` shows every flag.
REQUIRED_FLAGS = ("model_name_or_path", "data_path", "video_folder", "output_dir")
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "required": REQUIRED_FLAGS,
    "what trains": (
        "tune_mm_mlp_adapter", "mm_use_vid_start_end", "pretrain_mm_mlp_adapter", "stage", "freeze_backbone",
        "freeze_mm_mlp_adapter", "mm_projector_lr", "version", "vision_tower", "mm_projector_type",
    ),
    "data": ("lazy_preprocess", "model_max_length", "skip_data_check"),
    "the document's schedule (Hugging Face TrainingArguments)": (
        "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
        "weight_decay", "warmup_ratio", "lr_scheduler_type", "evaluation_strategy", "save_strategy", "save_steps",
        "save_total_limit", "logging_steps", "seed", "resume_from_checkpoint",
    ),
    "speed and memory": (
        "bf16", "tf32", "gradient_checkpointing", "attn_implementation", "packing", "group_by_length", "deepspeed",
        "fsdp", "dataloader_num_workers",
    ),
    "LoRA / QLoRA": (
        "lora_enable", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bits", "double_quant",
        "quant_type",
    ),
}  # fmt: skip
# Short help for --help (Hugging Face's is written for every trainer; these say what the flags do here).
SHORT_HELP = {
    "stage": "pretrain: the projector on video-caption pairs (LLaVA stage 1) | finetune; default: one stage",
    "vision_tower": "the tower the features were made with (default: the base's mm_vision_tower)",
    "mm_projector_type": "linear (the original) | mlp2x_gelu (LLaVA-1.5); default: the base's",
    "lora_target_modules": "comma-separated LLM linear layers (default: all but lm_head)",
    "version": "accepted; training uses the base's own template (vicuna_v1_1 for LLaVA-7B-Lightening)",
    "tune_mm_mlp_adapter": "train only the projector (and the <vid_start>/<vid_end> rows)",
    "pretrain_mm_mlp_adapter": "an mm_projector.bin to start the projector from",
    "lazy_preprocess": "render samples when read (True) or all at start",
    "skip_data_check": "skip the data check before training (not recommended)",
    "evaluation_strategy": "old name of --eval_strategy",
    "warmup_ratio": "warm up over this fraction of all steps",
    "bits": "16, 8 or 4 (QLoRA: bitsandbytes, CUDA only)",
    "double_quant": "4-bit: also quantise the quantisation constants",
    "model_max_length": "longer samples are truncated on the right",
    "output_dir": "the run folder: checkpoints, mm_projector.bin (or the adapter), the report",
    "num_train_epochs": "passes over the data",
    "per_device_train_batch_size": "samples per step per GPU",
    "gradient_accumulation_steps": "steps summed into one optimizer step",
    "learning_rate": "peak learning rate",
    "weight_decay": "AdamW weight decay",
    "lr_scheduler_type": "cosine, linear, constant, ...",
    "save_strategy": "no, steps or epoch",
    "save_steps": "a checkpoint every N optimizer steps",
    "save_total_limit": "keep only the newest N checkpoints",
    "logging_steps": "log the loss every N optimizer steps",
    "seed": "data order and initialisation",
    "resume_from_checkpoint": "a checkpoint-N folder (a rerun in the same --output_dir resumes by itself)",
    "bf16": "bf16 mixed precision (the model is loaded in bf16)",
    "tf32": "TF32 matmuls on Ampere+ GPUs",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30%% slower)",
    "deepspeed": "a DeepSpeed config (configs/zero2.json, configs/zero3.json)",
    "fsdp": "PyTorch FSDP, e.g. 'full_shard auto_wrap' (GPUs only)",
    "dataloader_num_workers": "processes reading feature files",
    "packing": "several samples per row, no padding (same loss; see docs/packing.md)",
    "group_by_length": "batches of samples of similar length (less padding)",
}


def _help_parser(prog: str, *dataclass_types) -> argparse.ArgumentParser:
    """A parser used only to print ``--help``: the grouped flags of ``HELP_GROUPS`` (plus any extra dataclass's
    fields first), their defaults, and a pointer to ``--help-all``."""
    types = (*dataclass_types, ModelArguments, DataArguments, TrainingArguments)  # one parser: no name is in two
    fields_ = {f.name: f for t in types for f in dataclasses.fields(t)}
    shown = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s --model_name_or_path BASE --data_path JSON --features_dir FEATURES --output_dir RUN [flags]",
        formatter_class=lambda prog: HelpFormatter(prog, max_help_position=44, width=118),
        add_help=False,
        description="Train Video-ChatGPT: the projector (or LoRA, or the whole model) on video features.",
        epilog="accepted for the original's commands and ignored: "
        + ", ".join(f"--{name}" for name in (*IGNORED_FLAGS, "sep_video_conv_front", "lora_weight_path"))
        + "\nevery other Hugging Face TrainingArguments flag works too: --help-all lists them",
    )
    shown.add_argument("-h", "--help", action="store_true", help="this help; --help-all: every flag")
    groups = [(getattr(t, "help_title", t.__name__), [f.name for f in dataclasses.fields(t)]) for t in dataclass_types]
    groups += HELP_GROUPS.items()
    if dataclass_types:  # plan-memory: only the model is required
        shown.usage = "%(prog)s --model_name_or_path BASE [training flags] [--gpu_memory GIB]"
        keep = getattr(dataclass_types[0], "help_flags", None)
        groups = [(t, [n for n in names if keep is None or n in keep]) for t, names in groups]
        groups = [(t if t != "required" else "the model", n) for t, n in groups if n]
        shown.description = getattr(dataclass_types[0], "help_description", None)
    for title, names in groups:
        group = shown.add_argument_group(title)
        for name in names:
            f = fields_[name]
            default = f.default if f.default is not dataclasses.MISSING else None
            aliases = f.metadata.get("aliases", [])
            options = [f"--{name}", *aliases] if name != "video_folder" else [*aliases, f"--{name}"]
            is_bool = f.type in (bool, "bool") or str(f.type) in ("bool", "bool | None")
            text = SHORT_HELP.get(name) or f.metadata.get("help", "")
            group.add_argument(*options, help=text, default=default, metavar="True|False" if is_bool else _metavar(f))
    return shown


def _metavar(f: dataclasses.Field) -> str:
    """A short placeholder for --help: N (whole number), X (number), else VALUE."""
    kind = str(f.type)
    return "N" if kind.startswith("int") else "X" if kind.startswith("float") else "VALUE"


def missing_required(argv: list[str], required: tuple[str, ...] = REQUIRED_FLAGS) -> list[str]:
    """The required flags (any spelling) absent from ``argv``."""
    given, alias = _given_flags(argv), {"video_folder": "features_dir"}  # the spelling the message names
    return [f"--{alias.get(n, n)}" for n in required if not {n, alias.get(n, n)} & given]


def training_parser(
    argv: list[str], prog: str, *extra_dataclasses, required: tuple[str, ...] = REQUIRED_FLAGS
) -> transformers.HfArgumentParser:
    """The training flags' parser (plus ``extra_dataclasses``, e.g. plan-memory's own flags), once ``argv`` passed
    the checks that come first: the ``--deepspeed`` file (TrainingArguments reads it unbounded), ``--help`` (the
    project's flags, grouped) or ``--help-all`` (every flag) printed with ``SystemExit(0)``, unknown flags and bad
    values (argparse's usage error, exit 2), then one ``UserError`` naming every missing ``required`` flag."""
    check_deepspeed_file(argv)
    parser = transformers.HfArgumentParser((*extra_dataclasses, ModelArguments, DataArguments, TrainingArguments))
    parser.prog = prog
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        _help_parser(prog, *extra_dataclasses).print_help()
        raise SystemExit(0)
    parser.parse_args(argv)
    missing = missing_required(argv, required)
    if missing:
        raise UserError(f"missing {', '.join(missing)} (see {prog} --help)")
    return parser


def parse_arguments(
    argv: list[str] | None = None, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse the document's command line (``argv`` without the program name). ``--help`` prints the project's
    flags and exits 0 (``SystemExit``); a missing required flag is one ``UserError`` naming all that are missing."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = training_parser(argv, prog or program("train"))
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # TrainingArguments' own checks of a value (one line, not a traceback)
        raise UserError(str(exc).strip().splitlines()[0]) from None
    check_model_flags(model_args, data_args)
    check_flags(training_args)  # --lora_* / --bits
    check_fsdp(training_args)
    check_numbers(training_args)
    return model_args, data_args, training_args


def check_model_flags(model_args: ModelArguments, data_args: DataArguments) -> None:
    """The values train and plan-memory refuse alike (one ``UserError`` line): --stage, --mm_projector_type,
    --sep_video_conv_front."""
    if data_args.sep_video_conv_front:
        raise UserError("--sep_video_conv_front True is not supported (the original never used it)")
    if model_args.stage not in (None, "pretrain", "finetune"):
        raise UserError(f"--stage {model_args.stage!r}: expected pretrain or finetune")
    if model_args.mm_projector_type not in (None, "linear", "mlp2x_gelu"):
        raise UserError(f"--mm_projector_type {model_args.mm_projector_type!r}: expected linear or mlp2x_gelu")


def check_deepspeed_file(argv: list[str]) -> None:
    """``--deepspeed <file>``: an existing JSON object, read by the bounded reader (``UserError`` naming it)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--deepspeed=")]
    values += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--deepspeed"]
    for value in values:
        if value.lstrip().startswith("{"):  # an inline JSON config, which TrainingArguments also takes
            continue
        if not Path(value).is_file():
            raise UserError(
                f"--deepspeed {value}: no such file; name a DeepSpeed JSON config (e.g. configs/zero2.json)"
            )
        try:
            read_json(value, expect=dict)
        except UserError as exc:
            raise UserError(f"--deepspeed {exc}") from None


def check_numbers(training_args: TrainingArguments) -> None:
    """The optimiser's and the loader's numbers: finite and in range, said before anything is loaded (otherwise
    torch refuses them at the first step, after run_info.json was written)."""
    a = training_args
    for flag, value in (("learning_rate", a.learning_rate), ("weight_decay", a.weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--{flag} {value}: need a finite number >= 0")
    for flag in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(a, flag) < 1:
            raise UserError(f"--{flag} {getattr(a, flag)}: need a whole number >= 1")
    if not math.isfinite(a.num_train_epochs) or a.num_train_epochs <= 0:
        raise UserError(f"--num_train_epochs {a.num_train_epochs}: need a finite number > 0")


def check_fsdp(training_args: TrainingArguments) -> None:
    """``--fsdp`` needs a distributed launch (the Trainer refuses it otherwise, after the model is loaded) and no
    ``--deepspeed``: said in one line before anything is loaded."""
    if not training_args.fsdp:
        return
    if training_args.deepspeed:
        raise UserError("--fsdp and --deepspeed both shard the model: give one of them")
    xla = isinstance(training_args.fsdp_config, dict) and training_args.fsdp_config.get("xla", False)
    if not xla and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise UserError(
            "--fsdp shards the model over several processes: launch with torchrun --nproc_per_node=<GPUs> "
            "video_chatgpt/train/train_mem.py ... (one process has nothing to shard with)"
        )
