"""Shared pieces of the benchmarks in this folder (``train_step.py``, ``gpu.py``): random-weight models built in code,
the document's batch shapes, the two training steps side by side, and timers / memory readers.

The two ways of doing one training step of the document's recipe (``--tune_mm_mlp_adapter True
--mm_use_vid_start_end --bf16 True``):

* ``ours``: what ``video_chatgpt.train`` does: the frozen backbone in the compute dtype (bf16 on GPU), only the
  projector and the 2 ``<vid_start>``/``<vid_end>`` rows trainable (fp32, ``train_token_rows``), the model's own
  forward with ``labels``, so logits are computed only at the supervised positions; AdamW on those tensors only.
* ``straightforward``: what the original does: the backbone in fp32 (bf16 only through autocast), the whole
  ``embed_tokens`` (V x H) trainable in fp32 with AdamW state, gradient reaching only the 2 rows through the
  ``.detach()`` of every other position (the weight's gradient is still a dense V x H tensor), full (B, L, V)
  logits and the standard shifted cross-entropy.

Nothing here is copied from the original project; the straightforward step is written from the spec's description.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from video_chatgpt.constants import IGNORE_INDEX

if TYPE_CHECKING:  # imported where used: a parent process that only reports need not load transformers
    from video_chatgpt.model.video_chatgpt import VideoChatGPTConfig, VideoChatGPTForCausalLM

# The LLaVA-7B-Lightening-v1-1 tokenizer has 32003 tokens; Video-ChatGPT adds <vid_patch>, <vid_start>, <vid_end>.
VOCAB = 32006
PATCH_ID, START_ID, END_ID = 32003, 32004, 32005
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# LLaMA-architecture sizes (vocab 32006 for all).
LLAMA_SIZES = {
    # LLaMA-7B / Vicuna-7B / LLaVA-7B-Lightening: 6.74B parameters
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32),
    # ~93M parameters, half of them the two 32006-row embedding tables (6 layers keep the CPU run near 2 minutes)
    "100m": dict(hidden_size=768, num_hidden_layers=6, intermediate_size=2048, num_attention_heads=12),
    # 19.8M parameters, 3.2M of them in the decoder layers: bench/packing.py's CPU model
    "20m": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=688, num_attention_heads=4),
    # the tests' tiny model
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=172, num_attention_heads=4),
}

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    """``None`` -> bf16 on CUDA, fp32 on CPU (bf16 matmuls on CPU are slow and not what anyone trains with)."""
    if name is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise SystemExit(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# ------------------------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class Shapes:
    """One training batch of the document's recipe: per-device batch 4, 356 video tokens, ~100 text tokens.

    Per sample: ``<s>`` + prompt (system prompt, ``USER:``, question) + ``<vid_start>`` + N ``<vid_patch>`` +
    ``<vid_end>`` + ``ASSISTANT:`` + answer + ``</s>``, right-padded to the longest sample. Labels only on the
    answer and its ``</s>`` (the vicuna_v1_1 rule). Text lengths vary per sample, so there is real padding.
    """

    batch: int = 4
    num_frames: int = 100  # temporal tokens
    num_patches: int = 256  # spatial tokens (ViT-L/14 at 224 px: 16 x 16)
    mm_hidden: int = 1024  # feature width (ViT-L/14 hidden size)
    prompt_tokens: tuple[int, ...] = (52, 44, 60, 48)  # <s> + system prompt + question, per sample (cycled)
    role_tokens: int = 6  # "ASSISTANT:" and separators after the video
    answer_tokens: tuple[int, ...] = (40, 36, 48, 44)  # supervised answer tokens, per sample (cycled); + </s>

    @property
    def video_tokens(self) -> int:
        return self.num_frames + self.num_patches

    def sample_lengths(self) -> list[tuple[int, int]]:
        """(prompt, answer) token counts of each sample."""
        return [
            (self.prompt_tokens[i % len(self.prompt_tokens)], self.answer_tokens[i % len(self.answer_tokens)])
            for i in range(self.batch)
        ]

    def text_tokens(self) -> list[int]:
        """Text tokens per sample (everything but the video patches)."""
        return [p + 2 + self.role_tokens + a + 1 for p, a in self.sample_lengths()]


SMALL_SHAPES = Shapes(
    batch=2, num_frames=4, num_patches=16, mm_hidden=32, prompt_tokens=(10, 8), role_tokens=2, answer_tokens=(6, 5)
)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside the answers
    features: torch.Tensor  # (B, N, C) float16, as read from the feature files
    real_tokens: int = 0  # sum of the attention mask
    supervised: int = 0  # number of predicted tokens (labels[:, 1:] != IGNORE_INDEX)
    lengths: list[int] = field(default_factory=list)  # real length of each sample

    def to(self, device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.features.to(device),
            self.real_tokens,
            self.supervised,
            self.lengths,
        )


def make_batch(shapes: Shapes, seed: int = 0) -> Batch:
    """Random token ids in the document's layout and random fp16 features; see ``Shapes``."""
    g = torch.Generator().manual_seed(seed)
    n = shapes.video_tokens
    rows, labels = [], []
    for prompt, answer in shapes.sample_lengths():
        words = lambda k: torch.randint(3, 32000, (k,), generator=g)  # noqa: E731 - ordinary text ids
        ids = torch.cat(
            [
                torch.tensor([BOS_ID]),
                words(prompt - 1),
                torch.tensor([START_ID]),
                torch.full((n,), PATCH_ID),
                torch.tensor([END_ID]),
                words(shapes.role_tokens),
                words(answer),
                torch.tensor([EOS_ID]),
            ]
        )
        lab = torch.full_like(ids, IGNORE_INDEX)
        lab[-(answer + 1) :] = ids[-(answer + 1) :]  # the answer and its </s>
        rows.append(ids)
        labels.append(lab)
    length = max(len(r) for r in rows)
    input_ids = torch.full((shapes.batch, length), PAD_ID, dtype=torch.long)
    label_ids = torch.full((shapes.batch, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((shapes.batch, length), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(ids)] = ids
        label_ids[i, : len(ids)] = lab
        mask[i, : len(ids)] = 1
    features = torch.randn((shapes.batch, n, shapes.mm_hidden), generator=g).to(torch.float16)
    return Batch(
        input_ids,
        mask,
        label_ids,
        features,
        real_tokens=int(mask.sum()),
        supervised=int((label_ids[:, 1:] != IGNORE_INDEX).sum()),
        lengths=[len(r) for r in rows],
    )


# ------------------------------------------------------------------------------------------------------- models
def model_config(size: str, shapes: Shapes, attn: str = "sdpa") -> VideoChatGPTConfig:
    """A Video-ChatGPT config of one of ``LLAMA_SIZES`` with the video token ids set."""
    from video_chatgpt.model.video_chatgpt import VideoChatGPTConfig

    sizes = LLAMA_SIZES[size]
    config = VideoChatGPTConfig(
        vocab_size=VOCAB,
        num_key_value_heads=sizes["num_attention_heads"],
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        mm_hidden_size=shapes.mm_hidden,
        mm_use_vid_start_end=True,
        video_token_len=shapes.video_tokens,
        num_video_frames=shapes.num_frames,
        video_patch_token_id=PATCH_ID,
        video_start_token_id=START_ID,
        video_end_token_id=END_ID,
        **sizes,
    )
    config._attn_implementation = attn
    return config


def build_model(config: VideoChatGPTConfig, device: str, dtype: torch.dtype, seed: int = 0) -> VideoChatGPTForCausalLM:
    """Random weights in ``dtype``, allocated once, directly on ``device`` (no CPU copy of a 7B model).

    The model is laid out on the meta device and then materialised and initialised on ``device``:
    ``VideoChatGPTForCausalLM.__init__`` builds a ``LlamaModel`` and then replaces it with a ``VideoChatGPTModel``,
    so a direct build would briefly hold two backbones (27 GB at 7B in bf16, 54 GB in fp32).
    """
    from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = VideoChatGPTForCausalLM._from_config(
            config, dtype=dtype, attn_implementation=config._attn_implementation
        )
    model.to_empty(device=device)
    model.init_weights()  # skipped on meta; here it fills every weight and the rotary buffers on the device
    _check_rotary(model)
    return model.train()


def _check_rotary(model) -> None:
    """The rotary frequencies are buffers, not weights: make sure the initialisation above did set them."""
    rotary = model.model.rotary_emb
    cfg = model.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    expected = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    got = rotary.inv_freq.detach().float().cpu()
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4):
        raise RuntimeError("rotary inv_freq was not initialised after materialising the model from the meta device")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    return (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad))


def set_checkpointing(model, on: bool) -> None:
    """Gradient (activation) checkpointing, non-reentrant (what ``--gradient_checkpointing`` gives in training)."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5.2x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()


def setup_ours(model: VideoChatGPTForCausalLM) -> list[torch.nn.Parameter]:
    """As ``train.build_model`` with ``--tune_mm_mlp_adapter True --mm_use_vid_start_end``: projector + 2 rows, fp32."""
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    model.train_token_rows([START_ID, END_ID])
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return [p for p in model.parameters() if p.requires_grad]


def setup_straightforward(model: VideoChatGPTForCausalLM) -> list[torch.nn.Parameter]:
    """As the original: fp32 model, projector + the whole input embedding trainable (lm_head and layers frozen)."""
    model.float()
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    model.get_input_embeddings().weight.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def loss_ours(model: VideoChatGPTForCausalLM, batch: Batch) -> torch.Tensor:
    """The model's own forward with labels: logits only at the supervised positions."""
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        video_spatio_temporal_features=batch.features,
    ).loss


def loss_straightforward(model: VideoChatGPTForCausalLM, batch: Batch) -> torch.Tensor:
    """Full-vocabulary logits and the standard shifted cross-entropy, embedding rows kept live only at start/end."""
    ids = batch.input_ids
    embeds = model.get_input_embeddings()(ids)  # (B, L, H) fp32
    live = (ids == START_ID) | (ids == END_ID)  # the original's .detach() on every other position
    embeds = torch.where(live.unsqueeze(-1), embeds, embeds.detach())
    projector = model.model.mm_projector
    feats = projector(batch.features.to(projector.weight.dtype))  # (B, N, H)
    embeds = embeds.masked_scatter((ids == PATCH_ID).unsqueeze(-1), feats.to(embeds.dtype))
    hidden = model.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
    logits = model.lm_head(hidden)  # (B, L, V): every position, although most are video or prompt
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


VARIANTS: dict[str, tuple[Callable, Callable]] = {
    "ours": (setup_ours, loss_ours),
    "straightforward": (setup_straightforward, loss_straightforward),
}


def make_optimizer(params: list[torch.nn.Parameter], device: str) -> torch.optim.Optimizer:
    """AdamW as the Trainer's default (fused on CUDA), the document's lr and weight decay."""
    kwargs = {"fused": True} if device.startswith("cuda") else {"foreach": True}
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, **kwargs)


def train_step(model, loss_fn: Callable, batch: Batch, optimizer, autocast_dtype: torch.dtype | None) -> float:
    """One forward + backward + optimizer step; bf16/fp16 compute through autocast as the Trainer's ``--bf16``."""
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ------------------------------------------------------------------------------------------------ measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_mib(key: str) -> float | None:
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1024 if match else None


class MemoryMeter:
    """Peak memory of a region: CUDA ``max_memory_allocated``, or on CPU the process's peak RSS (VmHWM).

    On CPU the high-water mark is reset at ``start()`` through ``/proc/self/clear_refs`` (Linux >= 4.0), so the
    peak is that of the region; where the reset is refused, the process's lifetime peak is reported instead and
    ``reset_ok`` says so.
    """

    def __init__(self, device: str):
        self.device = device
        self.reset_ok = True
        self.start_mib = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start_mib = torch.cuda.memory_allocated() / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.reset_ok = False
        self.start_mib = _status_mib("VmRSS") or 0.0

    def peak_mib(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        peak = _status_mib("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak

    @property
    def kind(self) -> str:
        if self.device.startswith("cuda"):
            return "torch.cuda.max_memory_allocated (weights + optimizer + activations)"
        return "peak RSS of the process (VmHWM" + (", reset before the steps)" if self.reset_ok else ", lifetime)")


@dataclass
class Timing:
    wall_s: list[float]  # per timed step
    cpu_s: list[float]  # per timed step: CPU seconds of this process, all threads (a work measure on a busy machine)

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_s)


def time_steps(
    step: Callable[[], object], device: str, warmup: int, steps: int, budget_s: float | None = None
) -> Timing:
    """Run ``warmup`` untimed then up to ``steps`` timed calls (fewer once ``budget_s`` of timed calls is spent,
    at least 1)."""
    for _ in range(warmup):
        step()
    sync(device)
    timing = Timing([], [])
    begin = time.perf_counter()
    while len(timing.wall_s) < steps:
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        timing.wall_s.append(time.perf_counter() - t0)
        timing.cpu_s.append(time.process_time() - c0)
        if budget_s is not None and time.perf_counter() - begin > budget_s:
            break
    return timing


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------- FLOPs
FLOPS_FORMULA = (
    "useful FLOPs per step = 4*N_body*T + 4*V*H*M + 4*C*H*N_video + 12*n_layers*H*sum_i(L_i^2); "
    "T = real (non-padding) tokens, M = supervised tokens, N_body = parameters of the decoder layers, "
    "V*H = lm_head, C*H = projector, L_i = real length of sample i. "
    "Frozen backbone: a matmul costs 2 FLOPs/param/token forward and 2 backward (gradient of its input only, no "
    "weight gradient), hence 4 instead of the 6 of full training; the projector's input needs no gradient (its "
    "weight gradient is the 2). Attention scores and values: 4*L^2*H per layer forward (full square, not halved for "
    "the causal mask), x3 with the backward. The same count is used for both variants (what the objective needs), "
    "so MFU ratios equal speed ratios; the straightforward step's full-vocabulary logits and the recompute of "
    "gradient checkpointing are not counted as useful."
)


def step_flops(config: VideoChatGPTConfig, batch: Batch) -> float:
    """Useful model FLOPs of one training step with a frozen backbone (see ``FLOPS_FORMULA``)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = h // heads
    per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + 3 * h * inter  # q, o, k, v, gate/up/down
    n_body = layers * per_layer
    n_video = batch.features.shape[0] * batch.features.shape[1]
    linear = 4 * n_body * batch.real_tokens
    head = 4 * config.vocab_size * h * batch.supervised
    projector = 4 * config.mm_hidden_size * h * n_video
    attention = 12 * layers * h * sum(length**2 for length in batch.lengths)
    return float(linear + head + projector + attention)
