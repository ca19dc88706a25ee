"""Plan the peak accelerator memory of one training step, by part, from ``config.json`` and the training flags.

    video-chatgpt plan-memory --model_name_or_path LLaVA-7B-Lightening-v1-1 --tune_mm_mlp_adapter True \\
        --mm_use_vid_start_end --bf16 True --per_device_train_batch_size 4 --gradient_checkpointing True
    video-chatgpt plan-memory --model_name_or_path LLaVA-7B-Lightening-v1-1 --lora_enable True --bits 4 \\
        --bf16 True --gradient_checkpointing True --gpu_memory 24          # QLoRA on one 24 GB card

No weights are read (only ``config.json``); the numbers are a model of what PyTorch keeps alive, validated against
measured peaks by ``bench/memory.py`` (CPU: RSS of real steps; CUDA: ``torch.cuda.max_memory_allocated``).

What a step holds at its peak (``plan_step``), for one process (no DDP bucket copy, no ZeRO sharding):

* weights: the frozen LLM in its load dtype (``--bf16`` with a frozen backbone or LoRA: bf16; full fine-tuning:
  fp32; ``--bits 4``: NF4 linears, 0.5 byte/param + block constants; ``--bits 8``: int8 + one fp32 scale per row);
* trainable tensors (projector, ``<vid_start>``/``<vid_end>`` rows, LoRA A/B; all of them in full fine-tuning):
  fp32 weight 4 + gradient 4 + AdamW's two moments 8 = 16 bytes per parameter;
* activations saved for the backward pass, per decoder layer and token (what autograd keeps, counted tensor by
  tensor in ``tests/train/test_memory.py`` with saved-tensor hooks): the two RMSNorm inputs in fp32, q/k/v and the
  attention output, the SwiGLU's three intermediate-wide tensors, the sdpa padding mask, and the inputs of every
  linear whose weight (or LoRA adapter) trains. With ``--gradient_checkpointing`` only each layer's input is kept,
  and one layer is recomputed at a time during the backward pass;
* the loss at the supervised positions only (the model computes logits for labels != -100, never (B, L, V));
* a backward working set (the gradients in flight through one layer) and, with ``--bits``, one dequantised weight;
* on CUDA, ``CUDA_CONTEXT_GIB`` outside the allocator and ``ALLOCATOR_RESERVE`` on top of what it hands out.

The optimizer step is a second candidate peak (activations gone, AdamW's temporary added); the larger one wins.
"""

from __future__ import annotations

import bisect
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from video_chatgpt.args import program
from video_chatgpt.bases import Base, base_kind_of, open_base
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.encoder import video_tokens
from video_chatgpt.features.towers import resolve_tower
from video_chatgpt.train.arguments import (
    TRAINING_MODES,
    TrainingMode,
    asked_precision,
    check_model_flags,
    flag_field,
    training_mode,
    training_parser,
)
from video_chatgpt.train.lora import LoraSettings

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4
# AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype (fp32 for our trainables).
ADAMW_STATE_BYTES = 2 * FP32
# Outside torch's allocator on CUDA: the context, kernels and cuBLAS workspaces (what nvidia-smi shows beyond
# max_memory_allocated for a bf16 LLaMA step: ~0.5-0.7 GiB with CUDA 12's lazy module loading).
CUDA_CONTEXT_GIB = 0.6
# The caching allocator reserves more than it hands out (block rounding, fragmentation between steps): ~5-10% of
# the peak allocated for a transformer training step.
ALLOCATOR_RESERVE = 0.08
# bitsandbytes 4-bit: one absmax per 64 weights (fp32; with double quantisation an 8-bit code plus one fp32 per
# 256 blocks), 8-bit: one fp32 scale per output row.
NF4_BLOCK = 64
DOUBLE_QUANT_BLOCK = 256
# The linear layers of a LLaMA-family decoder layer (Llama, Mistral, Qwen2 name them alike); LoRA's default targets.
LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
DEVICES = ("cuda", "cpu")
# Plan defaults for the token count of a sample when it is not given: the text around the video in the
# document's data (system prompt + question + answer, vicuna_v1_1 template) is ~90-160 tokens; ~40 are the answer.
DEFAULT_TEXT_TOKENS = 128
DEFAULT_SUPERVISED_TOKENS = 48


# ------------------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelShape:
    """The sizes that memory depends on, read from a config.json (LLaMA-family decoder + video projector)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    mm_hidden: int | None = None  # video feature width (projector input); None: no projector counted
    projector_type: str = "linear"
    tied_embeddings: bool = False
    video_tokens: int | None = None  # config.video_token_len (a trained run folder has it)

    @classmethod
    def from_config(cls, raw: dict, source: str = "config.json") -> ModelShape:
        """A LLaVA-v1 / Video-ChatGPT config (flat LLaMA keys + ``mm_*``), a causal LM's, or a LLaVA-1.5 one
        (``text_config`` + ``vision_config``)."""
        return cls.from_base(Base(Path(source).parent, base_kind_of(raw), raw), source)

    @classmethod
    def from_base(cls, base: Base, source: str = "config.json") -> ModelShape:
        """The sizes of a base: its language model's config, and the video settings the base object reads."""
        raw = base.config
        text = raw.get("text_config") or raw

        def size(key: str, default: int | None = None) -> int:
            """A size of the config: a whole number >= 1 (a string, a float, zero or a negative is refused)."""
            if key not in text or (text[key] is None and default is not None):
                if default is None:
                    raise UserError(f"{source}: no {key!r}; plan-memory needs a LLaMA-family config.json")
                return default
            value = text[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{source}: {key} is {value!r}; expected a whole number >= 1")
            return value

        hidden, heads = size("hidden_size"), size("num_attention_heads")
        return cls(
            hidden=hidden,
            layers=size("num_hidden_layers"),
            heads=heads,
            kv_heads=size("num_key_value_heads", heads),
            head_dim=size("head_dim", max(hidden // heads, 1)),
            intermediate=size("intermediate_size"),
            vocab=size("vocab_size"),
            mm_hidden=base.feature_width,
            projector_type=base.projector_type or "linear",
            tied_embeddings=bool(text.get("tie_word_embeddings", False)),
            video_tokens=base.video_token_len,
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def embedding_params(self) -> int:
        """Input embedding + lm_head (one table when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    def llm_params(self) -> int:
        return self.layers * self.layer_linear_params() + self.embedding_params() + self.norm_params()

    def projector_params(self) -> int:
        if not self.mm_hidden:
            return 0
        first = self.mm_hidden * self.hidden + self.hidden
        return first + (self.hidden * self.hidden + self.hidden if self.projector_type == "mlp2x_gelu" else 0)


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class StepSettings:
    """What a training step does, in the training flags' terms (see ``settings_from_flags``)."""

    batch: int = 4  # --per_device_train_batch_size
    tokens: int = 484  # tokens per sample after padding, video tokens included
    supervised: int = DEFAULT_SUPERVISED_TOKENS  # supervised (label != -100) tokens per sample
    video_tokens: int = 356  # feature rows per sample (projector input)
    compute: str = "bf16"  # fp32 | bf16 | fp16 (--bf16 / --fp16)
    gradient_checkpointing: bool = False
    train: TrainingMode = "projector"  # arguments.training_mode: projector | lora | full
    token_rows: int = 2  # trainable embedding rows (<vid_start>/<vid_end> with --mm_use_vid_start_end)
    train_projector: bool = True  # False with --freeze_mm_mlp_adapter
    lora_r: int = 64
    lora_targets: tuple[str, ...] = LLM_LINEARS
    lora_dropout: float = 0.05
    bits: int = 16  # 16 (none), 8, 4
    double_quant: bool = True
    attn: str = "sdpa"
    device: str = "cuda"  # cuda: fused/foreach AdamW, bool dropout masks, context + allocator overhead

    def __post_init__(self):
        if self.compute not in DTYPE_BYTES:
            raise ValueError(f"compute dtype {self.compute!r}: expected one of {', '.join(DTYPE_BYTES)}")
        if self.train not in TRAINING_MODES:
            raise ValueError(f"train mode {self.train!r}: expected one of {', '.join(TRAINING_MODES)}")
        if self.bits not in (4, 8, 16):
            raise ValueError(f"--bits {self.bits}: expected 4, 8 or 16")
        if self.bits != 16 and self.train != "lora":
            raise ValueError(f"--bits {self.bits} needs --lora_enable True (a quantised base cannot be trained)")
        if self.attn not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"--attn_implementation {self.attn!r}: expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: expected cuda or cpu")
        unknown = [t for t in self.lora_targets if t not in LLM_LINEARS]
        if unknown:
            raise ValueError(
                f"--lora_target_modules {','.join(unknown)}: not linear layers of a LLaMA-family "
                f"decoder layer ({', '.join(LLM_LINEARS)})"
            )
        if min(self.batch, self.tokens) < 1 or not 0 <= self.supervised <= self.tokens:
            raise ValueError(
                f"batch {self.batch}, tokens {self.tokens}, supervised {self.supervised}: need batch >= "
                f"1, tokens >= 1 and 0 <= supervised <= tokens"
            )
        if self.video_tokens < 0 or self.video_tokens > self.tokens:
            raise ValueError(f"video tokens {self.video_tokens}: need 0 <= video tokens <= tokens ({self.tokens})")
        if self.train == "lora" and (self.lora_r < 1 or not 0 <= self.lora_dropout < 1):
            raise ValueError(
                f"--lora_r {self.lora_r} / --lora_dropout {self.lora_dropout}: need r >= 1, 0 <= dropout < 1"
            )

    @property
    def c(self) -> int:
        """Bytes of an activation in the compute dtype."""
        return DTYPE_BYTES[self.compute]

    @property
    def weight_dtype(self) -> str:
        """Load dtype of the frozen weights: the compute dtype when the backbone is frozen, fp32 when it trains
        (``train.model_dtype``)."""
        return "fp32" if self.train == "full" else self.compute


# ------------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Part:
    name: str
    bytes: float
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass
class MemoryPlan:
    shape: ModelShape
    settings: StepSettings
    parts: list[Part]  # what is alive at the forward/backward peak
    step_peak_bytes: float  # the optimizer step's peak (activations freed)
    trainable_params: int
    activation_bytes_no_checkpointing: float
    activation_bytes_checkpointing: float
    overhead: list[Part] = field(default_factory=list)  # CUDA only

    @property
    def backward_peak_bytes(self) -> float:
        return sum(p.bytes for p in self.parts)

    @property
    def allocated_bytes(self) -> float:
        """What torch's allocator hands out at the peak (compare with ``torch.cuda.max_memory_allocated``)."""
        return max(self.backward_peak_bytes, self.step_peak_bytes)

    @property
    def total_bytes(self) -> float:
        """What the device must hold: the allocated peak plus the CUDA overhead parts."""
        return self.allocated_bytes + sum(p.bytes for p in self.overhead)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB


def trainable_parameters(shape: ModelShape, s: StepSettings) -> tuple[int, int]:
    """(trainable parameters, the largest trainable tensor's size)."""
    if s.train == "full":
        largest = max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate)
        return shape.llm_params() + shape.projector_params(), largest
    tensors = []
    if s.train_projector and shape.mm_hidden:
        tensors += [shape.mm_hidden * shape.hidden, shape.hidden]
        if shape.projector_type == "mlp2x_gelu":
            tensors += [shape.hidden * shape.hidden, shape.hidden]
    if s.token_rows:
        tensors.append(s.token_rows * shape.hidden)
    if s.train == "lora":
        for name in s.lora_targets:
            fan_in, fan_out = shape.linear_shapes()[name]
            tensors += [s.lora_r * fan_in, s.lora_r * fan_out] * shape.layers
    return sum(tensors), max(tensors, default=0)


def frozen_weight_bytes(shape: ModelShape, s: StepSettings) -> list[Part]:
    """The frozen (or, in full fine-tuning, all) weights of the LLM by dtype; trainables are counted apart."""
    w = DTYPE_BYTES[s.weight_dtype]
    if s.train == "full":
        label = f"weights fp32 (all {shape.llm_params():,} LLM parameters train)"
        return [Part(label, 0.0, "counted with the trainable parameters")]
    linear = shape.layers * shape.layer_linear_params()
    other = shape.embedding_params() + shape.norm_params()
    if s.bits == 16:
        return [Part(f"weights {s.weight_dtype} (frozen LLM, {shape.llm_params():,} params)", (linear + other) * w)]
    if s.bits == 4:
        # packed 4-bit codes + absmax per block (8-bit codes + fp32 per 256 blocks when double-quantised)
        constants = (1 / NF4_BLOCK + FP32 / (NF4_BLOCK * DOUBLE_QUANT_BLOCK)) if s.double_quant else FP32 / NF4_BLOCK
        quantised = linear * (0.5 + constants)
        label = "nf4" + (" + double-quantised constants" if s.double_quant else " + fp32 absmax per 64")
    else:
        out_rows = shape.layers * sum(o for _, o in shape.linear_shapes().values())
        quantised = linear * 1 + out_rows * FP32
        label = "int8 + fp32 scale per row"
    return [
        Part(f"weights {label} ({linear:,} decoder linear params)", quantised),
        Part(f"weights {s.weight_dtype} (embeddings, lm_head, norms: {other:,} params)", other * w),
    ]


def _lora_input_bytes(shape: ModelShape, s: StepSettings) -> float:
    """Per layer and token: the inputs that LoRA's A matrices (and their dropout) keep for the backward pass."""
    if s.train != "lora" or not s.lora_targets:
        return 0.0
    c = s.c
    widths = {name: fan_in for name, (fan_in, _) in shape.linear_shapes().items()}
    # peft casts the input to the adapter's dtype (fp32) and autocast back to the compute dtype: one copy per
    # adapter. Without a cast (fp32 compute) and without dropout, adapters on one input share it: q/k/v read the
    # first norm's output, gate/up the second's, o_proj reads the attention output (already kept by sdpa).
    if s.lora_dropout > 0 or s.compute != "fp32":
        per = sum(c * widths[t] for t in s.lora_targets)
        if s.lora_dropout > 0:
            mask = 1 if s.device == "cuda" else FP32  # CUDA keeps a bool mask; CPU dropout keeps its fp32 noise
            per += sum(mask * widths[t] for t in s.lora_targets)
    else:
        groups = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("down_proj",)]
        per = sum(c * widths[g[0]] for g in groups if any(t in s.lora_targets for t in g))
    return per + len(s.lora_targets) * s.lora_r * c  # the (r)-wide A outputs, kept by B


def layer_activation_bytes(shape: ModelShape, s: StepSettings) -> float:
    """Bytes one decoder layer keeps for the backward pass, per token (no checkpointing)."""
    c, h, i = s.c, shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    norms = 2 * FP32 * h  # each RMSNorm keeps its input in fp32
    attention = c * (2 * q + 2 * kv) + FP32 * shape.heads  # q, k (after rotary), v, output; logsumexp per head
    if s.attn == "sdpa":
        attention += c * s.tokens  # its own (B, 1, L, L) additive mask from the padding mask, per layer
    elif s.attn == "eager":
        attention += (FP32 + c) * shape.heads * s.tokens  # fp32 softmax and its compute-dtype copy, (B, h, L, L)
    mlp = 3 * c * i  # gate output (SiLU input), SiLU output and up output (the product's inputs)
    linear_inputs = 0.0
    if s.train == "full":
        # every weight trains, so every linear keeps its input; norm weights train, so each norm keeps its
        # normalised input and output too. Autocast (fp32 weights, bf16 compute) casts the input once per linear.
        cast_per_linear = s.compute != "fp32"
        linear_inputs = c * (3 * h + 2 * h + i) if cast_per_linear else c * (2 * h + i)
        norms += 2 * 2 * c * h
    return norms + attention + mlp + linear_inputs + _lora_input_bytes(shape, s)


def activation_bytes(shape: ModelShape, s: StepSettings, checkpointing: bool) -> float:
    """What the forward pass leaves for the backward pass, for the whole batch."""
    t = s.batch * s.tokens
    per_layer = layer_activation_bytes(shape, s)
    kept = shape.layers * (s.c * shape.hidden if checkpointing else per_layer)  # checkpointing: the layer input
    final_norm = FP32 * shape.hidden
    lm_head_input = s.c * shape.hidden * s.supervised / s.tokens if s.train == "full" else 0.0
    return t * (kept + final_norm + lm_head_input)


def backward_working_bytes(shape: ModelShape, s: StepSettings, checkpointing: bool) -> float:
    """Gradients in flight through one layer during backward: two intermediate-wide and three hidden-wide tensors
    per token; with checkpointing, that layer's recomputed activations and the incoming hidden-wide gradient (the
    recomputed tensors are freed op by op as the backward walks the layer, which bench/memory.py measures as about
    the intermediate-wide gradients' worth less)."""
    t = s.batch * s.tokens
    if checkpointing:
        working = t * (layer_activation_bytes(shape, s) + s.c * shape.hidden)
    else:
        working = t * s.c * (2 * shape.intermediate + 3 * shape.hidden)
    if s.bits != 16:  # bitsandbytes dequantises one weight to the compute dtype for each matmul
        working += s.c * max(a * b for a, b in shape.linear_shapes().values())
    return working


def plan_step(shape: ModelShape, s: StepSettings) -> MemoryPlan:
    """The peak memory of one training step of ``shape`` under ``s``, by part."""
    trainable, largest = trainable_parameters(shape, s)
    t = s.batch * s.tokens
    m = s.batch * s.supervised
    video = s.batch * s.video_tokens
    act_off = activation_bytes(shape, s, checkpointing=False)
    act_on = activation_bytes(shape, s, checkpointing=True)
    kept = act_on if s.gradient_checkpointing else act_off
    proj_in = (shape.mm_hidden or 0) * video
    weight_parts = frozen_weight_bytes(shape, s)
    batch_part = Part(
        "batch: ids/labels/mask int64, fp16 features + their fp32 copy for the projector",
        3 * 8 * t + (2 + FP32) * proj_in,
    )
    parts = weight_parts + [
        Part(f"trainable weights fp32 ({trainable:,} params)", FP32 * trainable),
        Part("AdamW moments (2 x fp32 per trainable param)", ADAMW_STATE_BYTES * trainable),
        Part("gradients fp32 of the trainables", FP32 * trainable),
        Part(
            f"activations kept for backward ({'checkpointed' if s.gradient_checkpointing else 'all layers'}, "
            f"{t:,} tokens)",
            kept,
        ),
        Part(
            "backward working set (one layer" + (", recomputed" if s.gradient_checkpointing else "") + ")",
            backward_working_bytes(shape, s, s.gradient_checkpointing),
        ),
        # log-softmax output, its gradient and the logits' gradient, fp32, at the M supervised positions only
        Part(f"loss at {m:,} supervised positions (M x V fp32, x3)", 3 * FP32 * m * shape.vocab),
        batch_part,
    ]
    # The optimizer step: activations are gone; AdamW (foreach on CUDA) makes one fp32 temporary of all the
    # trainables at once (CPU: one tensor at a time).
    optimizer_temp = FP32 * (trainable if s.device == "cuda" else largest)
    weights = sum(p.bytes for p in weight_parts)
    step_peak = weights + (FP32 + ADAMW_STATE_BYTES + FP32) * trainable + optimizer_temp + batch_part.bytes
    overhead = []
    if s.device == "cuda":
        allocated = max(sum(p.bytes for p in parts), step_peak)
        reserve = f"CUDA allocator reserve ({ALLOCATOR_RESERVE:.0%} of the allocated peak)"
        overhead = [
            Part(reserve, ALLOCATOR_RESERVE * allocated),
            Part("CUDA context, kernels, cuBLAS workspace", CUDA_CONTEXT_GIB * GIB),
        ]
    return MemoryPlan(shape, s, parts, step_peak, trainable, act_off, act_on, overhead)


def max_batch_size(shape: ModelShape, s: StepSettings, gpu_gib: float, limit: int = 4096) -> int:
    """The largest per-device batch whose planned total fits ``gpu_gib`` GiB (0 when even 1 does not)."""
    # the total grows with the batch: bisect for the number of sizes in 1..limit that fit
    return bisect.bisect_right(
        range(1, limit + 1), gpu_gib, key=lambda b: plan_step(shape, replace(s, batch=b)).total_gib
    )


# ---------------------------------------------------------------------------------------------------- command
@dataclass
class PlanArguments:
    help_title = "plan-memory"  # the group's title in --help, and the description above it
    help_description = (
        "The peak GPU memory of one training step, by part, and the largest batch that fits: give the training "
        "flags of the run to plan."
    )
    help_flags = (  # the training flags the plan reads (all others are accepted and do not change it)
        "model_name_or_path", "tune_mm_mlp_adapter", "mm_use_vid_start_end", "stage", "freeze_backbone",
        "freeze_mm_mlp_adapter", "vision_tower", "mm_projector_type", "model_max_length", "per_device_train_batch_size",
        "bf16", "gradient_checkpointing", "attn_implementation", "lora_enable", "lora_r", "lora_dropout",
        "lora_target_modules", "bits", "double_quant",
    )  # fmt: skip
    gpu_memory: float = flag_field(24.0, "GiB of the accelerator to fit (default 24)")
    tokens_per_sample: int | None = flag_field(
        None,
        f"padded tokens per sample, video tokens included (default: video tokens + "
        f"{DEFAULT_TEXT_TOKENS} text tokens, at most --model_max_length)",
    )
    supervised_tokens: int = flag_field(DEFAULT_SUPERVISED_TOKENS, "supervised (answer) tokens per sample")
    video_tokens: int | None = flag_field(
        None,
        "video tokens per sample (default: the config's video_token_len, else the vision "
        "tower's count when its config can be read)",
    )
    device: str = flag_field("cuda", "cuda (default) or cpu: the device the plan is for")

    def __post_init__(self):
        if not math.isfinite(self.gpu_memory) or self.gpu_memory <= 0:
            raise ValueError(f"--gpu_memory {self.gpu_memory}: need a positive number of GiB")
        for name in ("tokens_per_sample", "video_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} {value}: need a positive number")
        if self.supervised_tokens < 0:
            raise ValueError(f"--supervised_tokens {self.supervised_tokens}: need 0 or more")


def _video_tokens(shape: ModelShape, base: Base, given: int | None, tower: str | None) -> int:
    """Video tokens per sample: ``--video_tokens``, the folder's ``video_token_len``, else the tower's count for the
    base's frames (the original's 100)."""
    if given is not None:
        return given
    if shape.video_tokens:
        return int(shape.video_tokens)
    name = tower or base.vision_tower
    if name:
        try:
            return video_tokens(resolve_tower(name), base.num_frames)
        except (UserError, OSError, ValueError, KeyError):
            pass
    raise UserError(
        f"{base.folder}: the number of video tokens is unknown (no video_token_len in config.json and "
        f"vision tower {name!r} not readable offline); pass --video_tokens N (356 for CLIP-L/14-224)"
    )


def settings_from_flags(argv: list[str]) -> tuple[ModelShape, StepSettings, PlanArguments]:
    """Parse the training flags (``train.arguments``' parser) plus ``PlanArguments``."""
    parser = training_parser(argv, program("plan-memory"), PlanArguments, required=("model_name_or_path",))
    # TrainingArguments warns about this machine (no CUDA: CPU training, bf16 -> fp32); the plan is for the device.
    quiet = logging.getLogger("video_chatgpt.train.arguments")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # (training_parser's parse_args already refused any flag no dataclass has: nothing remains)
            plan_args, model_args, data_args, targs = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # a TrainingArguments check (e.g. --warmup_ratio out of range)
        raise UserError(str(exc)) from exc
    finally:
        quiet.setLevel(level)
    check_model_flags(model_args, data_args)  # what train refuses, plan-memory refuses (before reading the base)
    base = open_base(model_args.model_name_or_path)
    shape = ModelShape.from_base(base, str(base.folder / "config.json"))
    if base.config.get("video_patch_token_id") is None:  # a base: training adds <vid_patch> (+ <vid_start>, <vid_end>)
        shape = replace(shape, vocab=shape.vocab + 1 + (2 if model_args.mm_use_vid_start_end else 0))
    if model_args.mm_projector_type:
        shape = replace(shape, projector_type=model_args.mm_projector_type)
    video = _video_tokens(shape, base, plan_args.video_tokens, model_args.vision_tower)
    tokens = plan_args.tokens_per_sample or min(targs.model_max_length, video + DEFAULT_TEXT_TOKENS)
    compute = next(iter(asked_precision(argv)), "fp32")  # the plan is for the accelerator, whatever this machine has
    train = training_mode(model_args, targs)
    if train == "full" and model_args.freeze_backbone:
        # --freeze_backbone alone (the LLM body frozen, lm_head still trains) is planned as the projector mode: the
        # frozen weights in the compute dtype (as train.model_dtype loads them); lm_head's training is not counted.
        train = "projector"
    targets = LoraSettings.from_training_args(targs).targets or LLM_LINEARS  # as training: none named, all of them
    rows = 2 if model_args.mm_use_vid_start_end and train != "full" else 0
    try:
        settings = StepSettings(
            batch=targs.per_device_train_batch_size,
            tokens=tokens,
            supervised=min(plan_args.supervised_tokens, tokens),
            video_tokens=video,
            compute=compute,
            gradient_checkpointing=bool(targs.activation_checkpointing),
            train=train,
            token_rows=rows,
            train_projector=not targs.freeze_mm_mlp_adapter,
            lora_r=targs.lora_r,
            lora_targets=targets,
            lora_dropout=targs.lora_dropout,
            bits=targs.bits,
            double_quant=targs.double_quant,
            attn=model_args.attn_implementation,
            device=plan_args.device,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return shape, settings, plan_args


def format_plan(plan: MemoryPlan, gpu_gib: float, best_batch: int, best_batch_other: int) -> str:
    s, shape = plan.settings, plan.shape
    width = 78
    lines = [
        f"model: hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads ({shape.kv_heads} kv), "
        f"intermediate {shape.intermediate}, vocab {shape.vocab}, projector {shape.projector_type} "
        f"{shape.mm_hidden} -> {shape.hidden}",
        f"step: batch {s.batch} x {s.tokens} tokens ({s.video_tokens} video, {s.supervised} supervised), "
        f"{s.compute} compute, train {s.train}"
        + (f" (r {s.lora_r}, {','.join(s.lora_targets)}, dropout {s.lora_dropout})" if s.train == "lora" else "")
        + (f", {s.bits}-bit base" if s.bits != 16 else "")
        + f", gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.attn}, {s.device}",
        "",
        f"{'part':<{width}} {'GiB':>8}",
        f"{'-' * width} {'-' * 8}",
    ]
    rows = [(part.name, part.bytes) for part in plan.parts]
    rows += [
        ("= forward/backward peak (allocated)", plan.backward_peak_bytes),
        ("  optimizer-step peak (allocated; activations freed, AdamW temporary)", plan.step_peak_bytes),
        *[("+ " + part.name, part.bytes) for part in plan.overhead],
        ("= planned peak of the device", plan.total_bytes),
    ]
    lines += [f"{name:<{width}} {size / GIB:>8.3f}" for name, size in rows]
    lines += [
        "",
        f"activations: {plan.activation_bytes_no_checkpointing / GIB:.3f} GiB without gradient checkpointing, "
        f"{plan.activation_bytes_checkpointing / GIB:.3f} GiB with it (this batch)",
        f"fits --gpu_memory {gpu_gib:g}: {'yes' if plan.total_gib <= gpu_gib else 'NO'}; largest "
        f"--per_device_train_batch_size that fits: {best_batch} (gradient checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}), {best_batch_other} (gradient checkpointing "
        f"{'off' if s.gradient_checkpointing else 'on'})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt plan-memory <training flags> [--gpu_memory 24] [--tokens_per_sample N] ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        shape, settings, plan_args = settings_from_flags(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad flags (2)
        return exc.code if isinstance(exc.code, int) else 2
    plan = plan_step(shape, settings)
    best = max_batch_size(shape, settings, plan_args.gpu_memory)
    other = max_batch_size(
        shape, replace(settings, gradient_checkpointing=not settings.gradient_checkpointing), plan_args.gpu_memory
    )
    print(format_plan(plan, plan_args.gpu_memory, best, other))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "plan-memory"))
