"""Real-size speed on one CUDA GPU: 7B Video-ChatGPT training steps and ViT-L/14 feature extraction, random weights.

    python bench/gpu.py                              # one CUDA GPU: under 8 minutes on an H200-class GPU
    python bench/gpu.py --out bench/results/gpu.json # (the default --out)
    python bench/gpu.py --small                      # tiny shapes on CPU: the same code paths in seconds (CI)
    bash bench/gpu_check.sh                          # the prepared command for a machine with a lent GPU

What it builds (in code, random weights: speed does not depend on the values, nothing is downloaded):

* a LLaMA-7B-architecture Video-ChatGPT (hidden 4096, 32 layers, intermediate 11008, 32 heads, vocab 32006) with
  the video projector (1024 -> 4096), created directly on the GPU in bf16 (the straightforward variant: in fp32);
* a CLIP ViT-L/14 vision tower (hidden 1024, 24 layers, 16 heads, intermediate 4096, 224 px, patch 14), fp16.

What it measures (each part within a time budget; a part that runs out of GPU memory reports ``OOM``):

1. training, the document's recipe shapes (per-device batch 4, 356 video tokens + ~90-120 text tokens, ~40
   supervised answer tokens per sample): ours (frozen bf16 backbone, projector + 2 token rows in fp32, logits only
   where supervised, bf16 autocast, fused AdamW) with gradient checkpointing off and on, for sdpa and, when
   ``flash_attn`` is importable, flash_attention_2: step time, steps/s, tokens/s (real tokens), peak GPU memory
   (``max_memory_allocated``), TFLOP/s and MFU against the GPU's dense bf16 peak (``FLOPS_FORMULA`` in
   ``common.py``: 4 x params x tokens for a frozen backbone, plus attention);
   then LoRA (``--lora_enable True`` defaults: r 64 on every linear layer of the LLM, fp32 adapters, projector and
   rows trained; gradient checkpointing on, sdpa), with ``plan-memory``'s planned peak beside each measured one;
   then padding (``--sections packing``, bench/packing.py's rows on the same 7B model, gradient checkpointing on,
   for each attention implementation): padded, ``--group_by_length``, ``--packing`` and per-sample forwards on a
   VideoInstruct-like length mix, tokens/s, padding and the loss of each packed batch against the padded one;
2. the straightforward step (fp32 backbone under bf16 autocast, full-vocabulary logits, the whole embedding
   trainable with AdamW state), gradient checkpointing on, sdpa: the same numbers and the ratio to ours;
3. extraction: frames/s of the tower alone at several batch sizes (fp16, ``inference_mode``); videos/s of
   ``VideoFeatureExtractor.features_from_video`` (decode included, one video at a time) and of the folder job
   ``video_chatgpt.features.extract.run`` (parallel decode workers) on generated 640x360 30 fps h264 clips of
   20-60 s (ActivityNet-like resolution; ActivityNet videos average about 2.5 minutes, so per-video times are
   also extrapolated to that length from a fit over the clip lengths);
4. projections: the document's full run (100K samples x 3 epochs = 300K samples, global batch 32) on this GPU
   and on 8 of them (linear scaling assumed: no communication cost, which for ours is small since only ~4M
   parameters are all-reduced), and the extraction of the 13,303 training videos.

Prints a table and writes JSON. ``--small``: tiny LLaMA (hidden 64) and CLIP (hidden 32), short clips, CPU, fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` beside this file, however it is started

import common  # noqa: E402
import numpy as np  # noqa: E402
import packing  # noqa: E402
import torch  # noqa: E402

FULL_RUN_SAMPLES = 100_000 * 3  # the document: ~100K instruction pairs, 3 epochs
GLOBAL_BATCH = 32
TRAIN_VIDEOS = 13_303  # ActivityNet videos of the training set (docs/train_video_ids.txt)
ACTIVITYNET_SECONDS = 150.0  # assumed mean length (ActivityNet v1.3: ~849 h over ~20K videos)
ACTIVITYNET_FPS = 30.0

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s. Matched on the device name,
# first hit wins (so the longer names come first).
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("4090", 165.0),
    ("3090", 71.0),
)

# The LoRA row (issue 14): peft adapters on every linear layer of the LLM, as --lora_enable True's defaults.
LORA_R, LORA_ALPHA, LORA_DROPOUT = 64, 16, 0.05

CLIP_SIZES = {
    "vit-l-14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--small", action="store_true", help="tiny shapes on CPU: the same code paths in seconds")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --small)")
    p.add_argument("--out", default="bench/results/gpu.json", help="JSON output (default bench/results/gpu.json)")
    p.add_argument(
        "--dtype",
        default=None,
        help="training compute dtype: bf16 (default on CUDA), fp16, fp32 (default on CPU); "
        "`--small --dtype bf16` runs the GPU's dtype layout on CPU",
    )
    p.add_argument(
        "--sections",
        default="train,packing,lora,straightforward,tower,extractor",
        help="comma-separated subset of train,packing,lora,straightforward,tower,extractor",
    )
    p.add_argument(
        "--attn",
        default="sdpa,flash_attention_2",
        help="attention implementations to measure (flash_attention_2 only when flash_attn is importable)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per configuration (default 2, small 1)")
    p.add_argument(
        "--packing-batches", type=int, default=None, help="batches of 4 per packing row (default 8, small 1)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per configuration at most (default 10, small 2)"
    )
    p.add_argument("--budget-s", type=float, default=None, help="seconds of timed steps per configuration (default 20)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --small, where tiny ops only lose to threading; else torch's)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--tower-batches", default=None, help="tower batch sizes (default 1,16,64,128,256; small 1,4)")
    p.add_argument("--clip-seconds", default=None, help="generated clip lengths in s (default 20,40,60; small 1,2)")
    p.add_argument("--job-videos", type=int, default=None, help="videos in the folder-job run (default 8, small 3)")
    args = p.parse_args(argv)
    small = args.small
    args.device = args.device or ("cpu" if small else "cuda")
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 2)
    args.steps = args.steps or (2 if small else 10)
    args.budget_s = args.budget_s or (5.0 if small else 20.0)
    args.tower_batches = [int(x) for x in (args.tower_batches or ("1,4" if small else "1,16,64,128,256")).split(",")]
    args.clip_seconds = [float(x) for x in (args.clip_seconds or ("1,2" if small else "20,40,60")).split(",")]
    args.job_videos = args.job_videos or (3 if small else 8)
    args.packing_batches = args.packing_batches or (1 if small else 8)
    args.sections = [s for s in args.sections.split(",") if s]
    return args


# ---------------------------------------------------------------------------------------------------------- env
def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "unknown (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"datasheet dense bf16 for '{key}'"
    return None, f"unknown ('{name}' is not in the table; pass --peak-tflops)"


def flash_attn_available() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from transformers.utils import is_flash_attn_2_available

        return bool(is_flash_attn_2_available())
    except ImportError:
        return True


def environment(args) -> dict:
    import transformers

    cuda = args.device.startswith("cuda")
    peak, source = peak_tflops(args.device, args.peak_tflops)
    env = {
        "device": (
            torch.cuda.get_device_name(args.device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
        ),
        "device_type": "cuda" if cuda else "cpu",
        "gpu_memory_gb": round(torch.cuda.get_device_properties(args.device).total_memory / 2**30, 1) if cuda else None,
        "peak_bf16_tflops": peak,
        "peak_source": source,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "flash_attn": _version("flash_attn"),
        "av": _version("av"),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "small": args.small,
    }
    return env


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - an installed but broken package: say why, do not stop the benchmark
        return f"broken: {type(exc).__name__}: {exc}"


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (tiny --small rates must not round to 0)."""
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------------------------------------------- guarding
def guarded(fn: Callable[[], dict], device: str) -> dict:
    """Run one measurement; a CUDA out-of-memory becomes ``{"status": "OOM"}`` and the memory is given back."""
    try:
        row = fn()
        row.setdefault("status", "ok")
    except torch.cuda.OutOfMemoryError as exc:
        row = {"status": "OOM", "error": str(exc).splitlines()[0][:200]}
    common.free_memory(device)
    return row


# ----------------------------------------------------------------------------------------------------- training
def train_row(args, model, loss_fn, batch, optimizer, autocast, flops: float, peak: float | None) -> dict:
    """Time one configuration (model already set up) and derive its rates."""
    meter = common.MemoryMeter(args.device)
    meter.start()
    timing = common.time_steps(
        lambda: common.train_step(model, loss_fn, batch, optimizer, autocast),
        args.device,
        args.warmup,
        args.steps,
        args.budget_s,
    )
    step_s = timing.median_s
    achieved = flops / step_s / 1e12
    return {
        "step_ms": round(1000 * step_s, 2),
        "timed_steps": len(timing.wall_s),
        "steps_per_s": round(1 / step_s, 3),
        "samples_per_s": sig(batch.input_ids.shape[0] / step_s),
        "tokens_per_s": round(batch.real_tokens / step_s, 1),
        "peak_memory_gb": round(meter.peak_mib() / 1024, 3),
        "tflops_per_s": sig(achieved),
        "mfu": sig(achieved / peak) if peak else None,
    }


def planned_gb(config, batch, compute: torch.dtype, gc_on: bool, train: str, device: str) -> float:
    """``video-chatgpt plan-memory``'s allocated peak for this configuration (compare with ``peak_memory_gb``,
    which on CUDA is ``max_memory_allocated``; on CPU the process's RSS, a different quantity)."""
    from video_chatgpt.train.memory import ModelShape, StepSettings, plan_step

    shape = ModelShape(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
        mm_hidden=config.mm_hidden_size,
    )
    b = batch.input_ids.shape[0]
    settings = StepSettings(
        batch=b,
        tokens=batch.input_ids.shape[1],
        supervised=batch.supervised / b,
        video_tokens=batch.features.shape[1],
        compute=common.dtype_name(compute),
        gradient_checkpointing=gc_on,
        train=train,
        token_rows=2,
        lora_r=LORA_R,
        lora_dropout=LORA_DROPOUT,
        device="cuda" if device.startswith("cuda") else "cpu",
    )
    return round(plan_step(shape, settings).allocated_bytes / 2**30, 3)


def bench_training(args, env: dict) -> dict:
    """Ours for each attention x checkpointing, then the straightforward step; one model build per variant."""
    device = args.device
    cuda = device.startswith("cuda")
    shapes = common.SMALL_SHAPES if args.small else common.Shapes()
    size = "tiny" if args.small else "7b"
    compute = common.parse_dtype(args.dtype, device)
    autocast = compute if compute != torch.float32 else None
    batch = common.make_batch(shapes).to(device)
    config = common.model_config(size, shapes, attn="sdpa")
    flops = common.step_flops(config, batch)
    peak = env["peak_bf16_tflops"]
    out: dict = {
        "model": {
            "size": size,
            **common.LLAMA_SIZES[size],
            "vocab_size": common.VOCAB,
            "mm_hidden_size": shapes.mm_hidden,
        },
        "batch": {
            "batch": shapes.batch,
            "padded_length": batch.input_ids.shape[1],
            "video_tokens": shapes.video_tokens,
            "text_tokens": shapes.text_tokens(),
            "real_tokens": batch.real_tokens,
            "supervised_tokens": batch.supervised,
        },
        "compute_dtype": common.dtype_name(compute),
        "flops_per_step": flops,
        "flops_formula": common.FLOPS_FORMULA,
        "rows": [],
    }
    rows = out["rows"]
    attns = [a for a in args.attn.split(",") if a]

    if {"train", "packing"} & set(args.sections):
        state: dict = {}

        def build_ours() -> dict:
            t0 = time.perf_counter()
            model = common.build_model(config, device, compute)
            params = common.setup_ours(model)
            state.update(model=model, optimizer=common.make_optimizer(params, device))
            total, trainable = common.count_parameters(model)
            return {"parameters": total, "trainable": trainable, "build_s": round(time.perf_counter() - t0, 2)}

        built = guarded(build_ours, device)
        out["ours_model"] = built
        for attn in attns if "train" in args.sections else []:
            for gc_on in (False, True):
                row = {"variant": "ours", "attn": attn, "gradient_checkpointing": gc_on}
                if built["status"] != "ok":
                    rows.append({**row, "status": built["status"]})
                    continue
                if attn == "flash_attention_2" and not flash_attn_available():
                    rows.append({**row, "status": "skipped: flash_attn is not importable"})
                    continue
                if attn == "flash_attention_2" and not cuda:
                    rows.append({**row, "status": "skipped: flash_attention_2 needs CUDA"})
                    continue
                try:
                    if state["model"].config._attn_implementation != attn:
                        state["model"].set_attn_implementation(attn)
                except (ValueError, ImportError) as exc:
                    rows.append({**row, "status": f"skipped: {exc}"[:300]})
                    continue
                common.set_checkpointing(state["model"], gc_on)
                rows.append(
                    {
                        **row,
                        **guarded(
                            lambda: train_row(
                                args, state["model"], common.loss_ours, batch, state["optimizer"], autocast, flops, peak
                            ),
                            device,
                        ),
                        "plan_gb": planned_gb(config, batch, compute, gc_on, "projector", device),
                    }
                )
        if "packing" in args.sections:  # padded / grouped / packed / per-sample on the same model (bench/packing.py)
            out["packing"] = [
                {
                    "attn": attn,
                    **guarded(lambda a=attn: packing_rows(args, state["model"], a, shapes, autocast), device),
                }
                if built["status"] == "ok" and runnable(attn, cuda) is None
                else {"attn": attn, "status": built["status"] if built["status"] != "ok" else runnable(attn, cuda)}
                for attn in attns
            ]
        state.clear()  # the only references to the 7B model and its optimizer: freed before the fp32 build
        common.free_memory(device)

    if "lora" in args.sections:
        row = {"variant": "lora", "attn": "sdpa", "gradient_checkpointing": True}

        def run_lora() -> dict:
            from video_chatgpt.train.lora import LoraSettings, add_lora

            t0 = time.perf_counter()
            model = common.build_model(config, device, compute)  # frozen backbone in the compute dtype
            common.setup_ours(model)
            add_lora(model, LoraSettings(r=LORA_R, alpha=LORA_ALPHA, dropout=LORA_DROPOUT))  # fp32 adapters
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = common.make_optimizer(params, device)
            common.set_checkpointing(model, True)
            total, trainable = common.count_parameters(model)
            build_s = round(time.perf_counter() - t0, 2)
            try:
                # FLOPs: the frozen-backbone count (the adapters' own matmuls are r/H of it, not counted)
                return {
                    "parameters": total,
                    "trainable": trainable,
                    "build_s": build_s,
                    "lora_r": LORA_R,
                    **train_row(args, model, common.loss_ours, batch, optimizer, autocast, flops, peak),
                }
            finally:
                del model, optimizer, params

        rows.append(
            {**row, **guarded(run_lora, device), "plan_gb": planned_gb(config, batch, compute, True, "lora", device)}
        )
        common.free_memory(device)

    if "straightforward" in args.sections:
        row = {"variant": "straightforward", "attn": "sdpa", "gradient_checkpointing": True}

        def run_straightforward() -> dict:
            t0 = time.perf_counter()
            model = common.build_model(config, device, torch.float32)  # the original keeps the whole model in fp32
            params = common.setup_straightforward(model)
            optimizer = common.make_optimizer(params, device)
            common.set_checkpointing(model, True)
            total, trainable = common.count_parameters(model)
            build_s = round(time.perf_counter() - t0, 2)
            try:
                return {
                    "parameters": total,
                    "trainable": trainable,
                    "build_s": build_s,
                    **train_row(args, model, common.loss_straightforward, batch, optimizer, autocast, flops, peak),
                }
            finally:
                del model, optimizer, params

        rows.append({**row, **guarded(run_straightforward, device)})
        common.free_memory(device)

    ok = {(r["variant"], r["attn"], r["gradient_checkpointing"]): r for r in rows if r.get("status") == "ok"}
    ours_ref = ok.get(("ours", "sdpa", True))
    straight = ok.get(("straightforward", "sdpa", True))
    if ours_ref and straight:
        out["ratio_straightforward_over_ours"] = {
            "compared": "both sdpa, gradient checkpointing on",
            "step_time": round(straight["step_ms"] / ours_ref["step_ms"], 3),
            "peak_memory": round(straight["peak_memory_gb"] / ours_ref["peak_memory_gb"], 3),
        }
    elif any(r["variant"] == "straightforward" and r.get("status") == "OOM" for r in rows):
        out["ratio_straightforward_over_ours"] = {"compared": "both sdpa, gradient checkpointing on", "status": "OOM"}
    return out


def runnable(attn: str, cuda: bool) -> str | None:
    """Why ``attn`` cannot run here (a row's status), or None."""
    if attn == "flash_attention_2" and not flash_attn_available():
        return "skipped: flash_attn is not importable"
    if attn == "flash_attention_2" and not cuda:
        return "skipped: flash_attention_2 needs CUDA"
    return None


def packing_rows(args, model, attn: str, shapes, autocast) -> dict:
    """bench/packing.py's rows (the VideoInstruct-like length mix, batch 4) on the 7B model, gradient checkpointing
    on as the document's recipe; ``--packing-batches`` batches per row."""
    if model.config._attn_implementation != attn:
        model.set_attn_implementation(attn)
    common.set_checkpointing(model, True)
    warmup = 0 if args.small else 1
    options = argparse.Namespace(batch=shapes.batch, batches=args.packing_batches, warmup=warmup, seed=0, attn=attn)
    result = packing.bench_packing(model, options, args.device, autocast, shapes.video_tokens, shapes.mm_hidden)
    return {"status": "ok", **result}


def project_training(train: dict) -> dict:
    rows = []
    for r in train["rows"]:
        if r.get("status") != "ok":
            continue
        hours = FULL_RUN_SAMPLES / r["samples_per_s"] / 3600
        rows.append(
            {
                "variant": r["variant"],
                "attn": r["attn"],
                "gradient_checkpointing": r["gradient_checkpointing"],
                "one_gpu_hours": sig(hours),
                "eight_gpus_hours": sig(hours / 8),
            }
        )
    return {
        "samples": FULL_RUN_SAMPLES,
        "global_batch": GLOBAL_BATCH,
        "optimizer_steps": FULL_RUN_SAMPLES // GLOBAL_BATCH,
        "assumptions": "time = samples / measured samples/s at per-device batch 4 (one GPU: 8 accumulation steps "
        "per global batch of 32, the same work; the timed step includes an optimizer step per "
        "micro-batch, slightly pessimistic); 8 GPUs = one GPU / 8 (linear scaling, no "
        "communication or data-loading cost); the real data's text lengths vary more than here",
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------------- extraction
def clip_config(size: str):
    from transformers import CLIPVisionConfig

    sizes = CLIP_SIZES[size]
    return CLIPVisionConfig(image_size=224, patch_size=14, projection_dim=sizes["hidden_size"], **sizes)


def build_tower(size: str, device: str, dtype: torch.dtype):
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    with torch.device(device):
        tower = CLIPVisionModel._from_config(clip_config(size), dtype=dtype)
    return tower.eval().requires_grad_(False)


def bench_tower(args, tower, dtype: torch.dtype) -> list[dict]:
    """Frames/s of the whole tower (all layers, as the original runs it) on random pixels, per batch size."""
    rows = []
    for bs in args.tower_batches:

        def run(bs=bs) -> dict:
            x = torch.randn(bs, 3, 224, 224, device=args.device, dtype=dtype)
            with torch.inference_mode():
                timing = common.time_steps(
                    lambda: tower(pixel_values=x),
                    args.device,
                    args.warmup,
                    max(args.steps, 5),
                    budget_s=min(args.budget_s, 5.0),
                )
            return {
                "frames_per_s": sig(bs / timing.median_s),
                "ms_per_batch": round(1000 * timing.median_s, 2),
                "timed": len(timing.wall_s),
            }

        rows.append({"batch": bs, **guarded(run, args.device)})
    return rows


def write_clip(path: Path, seconds: float, width: int, height: int, fps: int, seed: int) -> dict:
    """A generated clip: a textured background panning at varying speed plus a moving block, h264 (else mpeg4).

    Frames are views into one pre-rendered texture, so generating costs little beside the encoder.
    """
    import av

    rng = np.random.default_rng(seed)
    # Low-frequency noise texture, upsampled, twice the frame in each direction: panning gives real motion vectors.
    small = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[: 2 * height, : 2 * width]
    texture = np.ascontiguousarray(
        np.pad(
            texture,
            ((0, max(0, 2 * height - texture.shape[0])), (0, max(0, 2 * width - texture.shape[1])), (0, 0)),
            mode="wrap",
        )
    )
    n = int(round(seconds * fps))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            stream.bit_rate = 2_000_000
        for i in range(n):
            dx = int((width / 2) * (1 + math.sin(i / (3.0 * fps))))  # slow pan, changing direction
            dy = int((height / 2) * (1 + math.cos(i / (5.0 * fps))))
            frame = texture[dy : dy + height, dx : dx + width].copy()
            bx, by = (i * 4) % max(1, width - 40), (i * 2) % max(1, height - 40)
            frame[by : by + 40, bx : bx + 40] = (255, 200, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {
        "file": path.name,
        "seconds": seconds,
        "frames": n,
        "width": width,
        "height": height,
        "fps": fps,
        "codec": codec,
        "mb": round(path.stat().st_size / 2**20, 2),
    }


def _extractor_class():
    """``VideoFeatureExtractor`` from ``video_chatgpt.features.extract`` if it exports it, else from ``encoder``."""
    try:
        from video_chatgpt.features.extract import VideoFeatureExtractor

        return VideoFeatureExtractor, "video_chatgpt.features.extract"
    except ImportError:
        from video_chatgpt.features.encoder import VideoFeatureExtractor

        return VideoFeatureExtractor, "video_chatgpt.features.encoder"


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x (a = 0, b = mean ratio with one point)."""
    if len(xs) < 2:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return float(a), float(b)


def bench_extraction(args, env: dict) -> dict:
    device = args.device
    cuda = device.startswith("cuda")
    size = "tiny" if args.small else "vit-l-14"
    dtype = torch.float16 if cuda else torch.float32
    num_frames = 8 if args.small else 100
    out: dict = {
        "tower": {
            "size": size,
            **CLIP_SIZES[size],
            "image_size": 224,
            "patch_size": 14,
            "dtype": common.dtype_name(dtype),
        }
    }
    tmp = tempfile.TemporaryDirectory(prefix="gpu_bench_")
    root = Path(tmp.name)
    try:
        tower = build_tower(size, device, dtype)
        if "tower" in args.sections:
            out["tower_alone"] = bench_tower(args, tower, dtype)
        if "extractor" not in args.sections:
            return out
        # The extractor loads a tower folder, as it would a real one: save the random tower with the real
        # ViT-L/14 preprocessor config.
        from video_chatgpt.sample.models import CLIP_PREPROCESSOR_CONFIG

        tower_dir = root / "clip"
        tower.save_pretrained(tower_dir)
        (tower_dir / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR_CONFIG))
        del tower
        common.free_memory(device)
        if importlib.util.find_spec("av") is None:
            out["extractor"] = {"status": "skipped: PyAV (av) is not importable; see bench/README.md"}
            return out
        out["extractor"] = guarded(lambda: bench_videos(args, root, tower_dir, num_frames, dtype), device)
    finally:
        tmp.cleanup()
    return out


def bench_videos(args, root: Path, tower_dir: Path, num_frames: int, dtype: torch.dtype) -> dict:
    """Videos/s of the one-video API and of the folder job on generated clips; decode included."""
    from video_chatgpt.features import extract as extract_job
    from video_chatgpt.features.decode import decode_sampled

    width, height, fps = (320, 180, 15) if args.small else (640, 360, 30)
    clip_dir = root / "clips"
    clip_dir.mkdir()
    t0 = time.perf_counter()
    clips = [
        write_clip(clip_dir / f"v_clip{i}.mp4", s, width, height, fps, seed=i) for i, s in enumerate(args.clip_seconds)
    ]
    generate_s = time.perf_counter() - t0

    cls, module = _extractor_class()
    t0 = time.perf_counter()
    extractor = cls(str(tower_dir), num_frames=num_frames, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    extractor.features_from_video(clip_dir / clips[0]["file"])  # warm-up (kernels, allocator), untimed
    common.sync(args.device)
    for clip in clips:
        path = clip_dir / clip["file"]
        t0 = time.perf_counter()
        decode_sampled(path, num_frames, extractor.image_size)
        clip["decode_only_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        features = extractor.features_from_video(path)
        common.sync(args.device)
        clip["extract_s"] = round(time.perf_counter() - t0, 3)
        clip["feature_shape"] = list(features.shape)
    del extractor
    common.free_memory(args.device)
    total_s = sum(c["extract_s"] for c in clips)
    a, b = linear_fit([c["frames"] for c in clips], [c["extract_s"] for c in clips])
    anet_frames = ACTIVITYNET_SECONDS * ACTIVITYNET_FPS
    if b <= 0:  # timing noise on very short clips: fall back to time proportional to frames
        a, b = 0.0, total_s / sum(c["frames"] for c in clips)
    per_anet_video = a + b * anet_frames

    # The folder job (parallel decode workers, encoder batches across videos) on job_videos files: hard links
    # to the clips under distinct video ids, so decoding costs the same as distinct files.
    job_dir = root / "job_videos"
    job_dir.mkdir()
    job_frames = 0
    for i in range(args.job_videos):
        clip = clips[i % len(clips)]
        os.link(clip_dir / clip["file"], job_dir / f"v_job{i:03d}.mp4")
        job_frames += clip["frames"]
    job_args = extract_job.ExtractArgs(
        video_dir_path=job_dir,
        clip_feat_path=root / "features",
        vision_tower=str(tower_dir),
        num_frames=num_frames,
        device=args.device,
        dtype=common.dtype_name(dtype),
        progress=False,
    )
    t0 = time.perf_counter()
    report = extract_job.run(job_args)
    job_wall = time.perf_counter() - t0
    done = len(report.extracted)
    job = {
        "videos": args.job_videos,
        "extracted": done,
        "failed": len(report.failed),
        "wall_s": round(job_wall, 3),
        "videos_per_s": sig(done / job_wall),
        "decoded_frames_per_s": sig(job_frames / job_wall),
        "encode_s": round(report.encode_s, 3),
        "decode_s_summed_over_workers": round(report.decode_s, 3),
        "wait_for_decode_s": round(report.wait_for_decode_s, 3),
        "note": "wall time includes loading the tower folder (see load_s)",
    }
    # Decode-bound extrapolation: the job's decoded-frames rate at ActivityNet-length videos.
    job_anet_videos_per_s = job_frames / job_wall / anet_frames
    return {
        "api": f"{module}.VideoFeatureExtractor.features_from_video and video_chatgpt.features.extract.run",
        "num_frames": num_frames,
        "clips": clips,
        "generate_s": round(generate_s, 2),
        "load_s": round(load_s, 2),
        "videos_per_s": sig(len(clips) / total_s),
        "fit_seconds_per_video": {"a_s": round(a, 4), "b_ms_per_frame": round(1000 * b, 4)},
        "folder_job": job,
        "projection": {
            "assumed_video": f"{ACTIVITYNET_SECONDS:.0f} s at {ACTIVITYNET_FPS:.0f} fps ({anet_frames:.0f} frames), "
            f"{width}x{height}",
            "one_video_api_s_per_video": round(per_anet_video, 3),
            "one_video_api_videos_per_s": sig(1 / per_anet_video),
            "folder_job_videos_per_s": sig(job_anet_videos_per_s),
            "train_videos": TRAIN_VIDEOS,
            "train_videos_one_gpu_hours_one_video_api": sig(TRAIN_VIDEOS * per_anet_video / 3600),
            "train_videos_one_gpu_hours_folder_job": sig(TRAIN_VIDEOS / job_anet_videos_per_s / 3600),
            "train_videos_eight_gpus_hours_folder_job": sig(TRAIN_VIDEOS / job_anet_videos_per_s / 3600 / 8),
            "assumptions": "per-video time of the one-video API = a + b x frames (fit over the clips); the folder "
            "job is taken as decode-bound (its decoded frames/s over the clips); generated clips "
            "decode faster than camera footage of the same size; 8 GPUs = linear scaling, which "
            "needs the CPU cores to scale too (decoding runs on the CPU)",
        },
    }


# -------------------------------------------------------------------------------------------------------- report
def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render(results: dict) -> str:
    env = results["env"]
    lines = [
        f"bench/gpu.py on {env['device']} ({env['gpu_memory_gb'] or '-'} GB); torch {env['torch']} "
        f"(CUDA {env['cuda']}), transformers {env['transformers']}, flash_attn {env['flash_attn'] or 'not installed'}, "
        f"av {env['av'] or 'not installed'}",
        f"peak bf16: {_fmt(env['peak_bf16_tflops'], '.0f', 'unknown')} TFLOP/s ({env['peak_source']})"
        + ("; --small: tiny shapes on CPU, fp32: the numbers only show that the code runs" if env["small"] else ""),
    ]
    train = results.get("training")
    if train and "rows" not in train:
        lines += ["", f"training: {train.get('status')}"]
    elif train:
        m, b = train["model"], train["batch"]
        lines += [
            "",
            f"training: LLaMA hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, vocab {m['vocab_size']}; "
            f"batch {b['batch']} x {b['padded_length']} ({b['video_tokens']} video + {min(b['text_tokens'])}-"
            f"{max(b['text_tokens'])} text tokens; {b['real_tokens']} real, {b['supervised_tokens']} supervised); "
            f"compute {train['compute_dtype']}; {train['flops_per_step'] / 1e12:.2f} useful TFLOP per step",
        ]
        header = (
            f"{'variant':<16} {'attn':<18} {'ckpt':<5} {'step ms':>9} {'steps/s':>8} {'tokens/s':>10} "
            f"{'peak GB':>8} {'TFLOP/s':>8} {'MFU':>6}  1 GPU h  8 GPU h"
        )
        lines += [header, "-" * len(header)]
        proj = {
            (p["variant"], p["attn"], p["gradient_checkpointing"]): p for p in results["projection"]["training"]["rows"]
        }
        for r in train["rows"]:
            key = (r["variant"], r["attn"], r["gradient_checkpointing"])
            head = f"{r['variant']:<16} {r['attn']:<18} {'on' if r['gradient_checkpointing'] else 'off':<5} "
            if r.get("status") != "ok":
                lines.append(head + str(r.get("status")))
                continue
            p = proj.get(key, {})
            lines.append(
                head + f"{r['step_ms']:>9.1f} {r['steps_per_s']:>8.2f} {r['tokens_per_s']:>10.0f} "
                f"{r['peak_memory_gb']:>8.2f} {r['tflops_per_s']:>8.1f} "
                f"{_fmt(r['mfu'] and 100 * r['mfu'], '5.1f', '  n/a')}{'%' if r['mfu'] else ' '} "
                f"{_fmt(p.get('one_gpu_hours'), '8.1f')} {_fmt(p.get('eight_gpus_hours'), '8.2f')}"
            )
        ratio = train.get("ratio_straightforward_over_ours")
        if ratio:
            if ratio.get("status"):
                lines.append(f"straightforward / ours ({ratio['compared']}): {ratio['status']}")
            else:
                lines.append(
                    f"straightforward / ours ({ratio['compared']}): step time x{ratio['step_time']:.2f}, "
                    f"peak memory x{ratio['peak_memory']:.2f}"
                )
        planned = [r for r in train["rows"] if r.get("status") == "ok" and r.get("plan_gb")]
        if planned:
            lines.append(
                "plan-memory (allocated peak) vs measured peak GB: "
                + "; ".join(
                    f"{r['variant']} ckpt {'on' if r['gradient_checkpointing'] else 'off'} {r['plan_gb']:.2f} vs "
                    f"{r['peak_memory_gb']:.2f} ({100 * (r['plan_gb'] - r['peak_memory_gb']) / r['peak_memory_gb']:+.0f}%)"
                    for r in planned
                    if r["attn"] == "sdpa"
                )
                + ("" if env["device_type"] == "cuda" else " (CPU: measured is the process RSS, not comparable)")
            )
        for packed in train.get("packing", []):
            if packed.get("status") != "ok":
                lines.append(f"packing ({packed['attn']}): {packed.get('status')}")
                continue
            title = f"packing: padded / grouped / packed / per-sample, gradient checkpointing on, {packed['attn']}"
            lines += ["", packing.render(packed, title)]
        lines.append(
            f"projection: {results['projection']['training']['samples']:,} samples (100K x 3 epochs, global "
            f"batch {GLOBAL_BATCH}); 8 GPUs assumes linear scaling"
        )
        lines.append("FLOPs: " + train["flops_formula"])
    ext = results.get("extraction")
    if ext and "tower" not in ext:
        lines += ["", f"extraction: {ext.get('status')}"]
    elif ext:
        t = ext["tower"]
        lines += [
            "",
            f"extraction: CLIP tower hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, {t['dtype']}",
        ]
        if ext.get("tower_alone"):
            lines.append(
                "tower alone (random pixels, inference_mode): "
                + ", ".join(
                    f"batch {r['batch']}: {r['frames_per_s']:.0f} frames/s"
                    if r.get("status") == "ok"
                    else f"batch {r['batch']}: {r.get('status')}"
                    for r in ext["tower_alone"]
                )
            )
        x = ext.get("extractor")
        if x and x.get("status") == "ok":
            for c in x["clips"]:
                lines.append(
                    f"  clip {c['seconds']:.0f} s {c['width']}x{c['height']} {c['fps']} fps {c['codec']} "
                    f"({c['frames']} frames, {c['mb']} MB): extract {c['extract_s']:.2f} s "
                    f"(decode alone {c['decode_only_s']:.2f} s)"
                )
            j, pr = x["folder_job"], x["projection"]
            lines.append(
                f"one-video API: {x['videos_per_s']:.3f} videos/s over the clips; folder job: "
                f"{j['videos_per_s']:.3f} videos/s ({j['extracted']} videos, {j['decoded_frames_per_s']:.0f} "
                f"decoded frames/s, tower load included)"
            )
            lines.append(
                f"projected at {pr['assumed_video']}: one-video API {pr['one_video_api_s_per_video']:.2f} "
                f"s/video, folder job {pr['folder_job_videos_per_s']:.3f} videos/s; "
                f"the {pr['train_videos']:,} "
                f"training videos: {pr['train_videos_one_gpu_hours_folder_job']:.2f} h on 1 GPU, "
                f"{pr['train_videos_eight_gpus_hours_folder_job']:.2f} h on 8 (folder job, linear)"
            )
        elif x:
            lines.append(f"extractor: {x.get('status')}")
    lines.append(f"\ntotal {results['wall_s']:.0f} s; JSON: {results['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (torch sees none); use --small to run the CPU mode")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the document's --tf32 True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads or args.small:
        torch.set_num_threads(args.threads or 1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars of the extractor's tower loads
    started = time.perf_counter()
    results: dict = {"env": environment(args), "args": {k: v for k, v in vars(args).items()}}
    failed: list[str] = []

    def section(name: str, fn: Callable[[], dict]) -> dict:
        """A part that breaks (not by running out of memory: that is measured) must not lose the others."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - printed with its traceback and turned into a non-zero exit
            traceback.print_exc()
            failed.append(name)
            return {"status": f"error: {type(exc).__name__}: {exc}"[:500]}

    if {"train", "packing", "lora", "straightforward"} & set(args.sections):
        results["training"] = section("training", lambda: bench_training(args, results["env"]))
        if "rows" in results["training"]:
            results["projection"] = {"training": project_training(results["training"])}
    if {"tower", "extractor"} & set(args.sections):
        results["extraction"] = section("extraction", lambda: bench_extraction(args, results["env"]))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["out"] = args.out
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(render(results), flush=True)
    if failed:
        print(f"failed sections: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
