"""Validate ``video-chatgpt plan-memory`` against measured peaks of real training steps, several model sizes.

    .venv/bin/python bench/memory.py                         # CPU: h128, h256, h512 x 3 modes, ~3-6 min on 2 cores
    .venv/bin/python bench/memory.py --sizes h64,h128 --modes projector,lora-gc      # quicker
    python bench/memory.py --device cuda                     # on a GPU: torch.cuda.max_memory_allocated

Each configuration runs in its own child process (a fresh allocator, nothing left from the one before):

1. imports, the batch (the document's layout: 356 video tokens of width 1024 + ~100-120 text tokens, ~40
   supervised per sample) and the baseline: RSS (``/proc/self/status`` VmRSS) on CPU, ``memory_allocated`` on CUDA;
2. the model built with random weights in code (LLaMA layout, vocabulary 32006), set up as training does it
   (``projector``: frozen backbone, projector + 2 token rows; ``lora``: + peft LoRA on every linear layer via
   ``video_chatgpt.train.lora.add_lora``), AdamW; one step (AdamW's moments are created in it);
3. the high-water mark reset (``/proc/self/clear_refs``; CUDA: ``reset_peak_memory_stats``), then 2 more steps,
   and the peak read (VmHWM; CUDA: ``max_memory_allocated``). Measured = peak - baseline.

The plan is ``plan_step`` for the same shapes (device cpu/cuda, compute fp32 on CPU, bf16 on CUDA), its allocated
peak (the CUDA context and allocator reserve are not in either number). The children run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensors to the OS at once (its default threshold grows
to 32 MB, keeping freed blocks resident and making RSS an upper bound of live memory) and one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, when not installed

import common  # noqa: E402

# Sizes: LLaMA layout, intermediate ~2.7 x hidden as LLaMA's 11008 / 4096.
SIZES = {
    "h64": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=172, num_attention_heads=4),
    "h128": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=344, num_attention_heads=4),
    "h256": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=688, num_attention_heads=4),
    "h512": dict(hidden_size=512, num_hidden_layers=4, intermediate_size=1376, num_attention_heads=8),
}
# mode -> (what trains, gradient checkpointing)
MODES = {
    "projector": ("projector", False),
    "projector-gc": ("projector", True),
    "lora": ("lora", False),
    "lora-gc": ("lora", True),
}
LORA_R = 16
LORA_DROPOUT = 0.05
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="h128,h256,h512", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--modes", default="projector,projector-gc,lora", help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--batch", type=int, default=4, help="per-device batch (default 4, the document's)")
    p.add_argument("--device", default="cpu", help="cpu (RSS) or cuda (max_memory_allocated)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.sizes.split(","):
        if name not in SIZES:
            p.error(f"--sizes: unknown size {name!r}; choose from {', '.join(SIZES)}")
    for name in args.modes.split(","):
        if name not in MODES:
            p.error(f"--modes: unknown mode {name!r}; choose from {', '.join(MODES)}")
    return args


def shapes(batch: int) -> common.Shapes:
    return replace(common.Shapes(), batch=batch)


def plan_for(size: str, mode: str, batch: int, device: str):
    """The plan of this configuration, from the same numbers the child uses."""
    from video_chatgpt.train.memory import ModelShape, StepSettings, plan_step

    sizes, sh = SIZES[size], shapes(batch)
    b = common.make_batch(sh)
    shape = ModelShape(
        hidden=sizes["hidden_size"],
        layers=sizes["num_hidden_layers"],
        heads=sizes["num_attention_heads"],
        kv_heads=sizes["num_attention_heads"],
        head_dim=sizes["hidden_size"] // sizes["num_attention_heads"],
        intermediate=sizes["intermediate_size"],
        vocab=common.VOCAB,
        mm_hidden=sh.mm_hidden,
    )
    train, gc_on = MODES[mode]
    settings = StepSettings(
        batch=batch,
        tokens=b.input_ids.shape[1],
        supervised=b.supervised / batch,
        video_tokens=sh.video_tokens,
        compute="bf16" if device == "cuda" else "fp32",
        gradient_checkpointing=gc_on,
        train=train,
        token_rows=2,
        lora_r=LORA_R,
        lora_dropout=LORA_DROPOUT,
        device="cuda" if device == "cuda" else "cpu",
    )
    return plan_step(shape, settings)


# ------------------------------------------------------------------------------------------------------- child
def _rss_mib(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def run_child(spec: dict) -> dict:
    import gc

    import torch

    from video_chatgpt.train.lora import LoraSettings, add_lora

    torch.set_num_threads(1)
    device, size, mode, batch = spec["device"], spec["size"], spec["mode"], spec["batch"]
    cuda = device == "cuda"
    common.LLAMA_SIZES[size] = SIZES[size]
    sh = shapes(batch)
    data = common.make_batch(sh).to(device)
    compute = torch.bfloat16 if cuda else torch.float32
    config = common.model_config(size, sh)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib("VmRSS")
    model = common.build_model(config, device, compute)
    common.setup_ours(model)
    train, gc_on = MODES[mode]
    if train == "lora":
        add_lora(model, LoraSettings(r=LORA_R, alpha=2 * LORA_R, dropout=LORA_DROPOUT))
    common.set_checkpointing(model, gc_on)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = common.make_optimizer(params, device)
    autocast = torch.bfloat16 if cuda else None
    t0 = time.perf_counter()
    common.train_step(model, common.loss_ours, data, optimizer, autocast)  # creates AdamW's moments
    meter = common.MemoryMeter(device)
    meter.start()
    for _ in range(2):
        common.train_step(model, common.loss_ours, data, optimizer, autocast)
    peak = meter.peak_mib()
    return {
        "size": size,
        "mode": mode,
        "batch": batch,
        "device": device,
        "baseline_mib": round(base, 1),
        "peak_mib": round(peak, 1),
        "measured_mib": round(peak - base, 1),
        "reset_ok": meter.reset_ok,
        "trainable": sum(p.numel() for p in params),
        "step_s": round((time.perf_counter() - t0) / 3, 2),
        "padded_length": int(data.input_ids.shape[1]),
        "meter": meter.kind,
    }


def spawn(size: str, mode: str, batch: int, device: str) -> dict:
    spec = json.dumps({"size": size, "mode": mode, "batch": batch, "device": device})
    env = {**os.environ, **MALLOC_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench/memory.py: the {size} {mode} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(sizes: list[str], modes: list[str], batch: int, device: str) -> list[dict]:
    """Plan vs measured for every size x mode: rows with ``plan_mib``, ``measured_mib`` and ``error_pct``."""
    rows = []
    for size in sizes:
        for mode in modes:
            row = spawn(size, mode, batch, device)
            plan = plan_for(size, mode, batch, device)
            row["plan_mib"] = round(plan.allocated_bytes / 2**20, 1)
            row["plan_parts_mib"] = {p.name: round(p.bytes / 2**20, 1) for p in plan.parts}
            row["error_pct"] = round(100 * (row["plan_mib"] - row["measured_mib"]) / row["measured_mib"], 1)
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        f"{'size':<6} {'mode':<14} {'batch':>5} {'tokens':>6} {'trainable':>10} {'plan MiB':>9} "
        f"{'measured MiB':>12} {'error':>7}",
        "-" * 76,
    ]
    for r in rows:
        lines.append(
            f"{r['size']:<6} {r['mode']:<14} {r['batch']:>5} {r['padded_length']:>6} {r['trainable']:>10,} "
            f"{r['plan_mib']:>9.1f} {r['measured_mib']:>12.1f} {r['error_pct']:>+6.1f}%"
        )
    worst = max(abs(r["error_pct"]) for r in rows)
    lines.append(
        f"largest |error|: {worst:.1f}%  (measured: {rows[0]['meter']}, minus the baseline before the model was built)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    rows = measure(args.sizes.split(","), args.modes.split(","), args.batch, args.device)
    print(render(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
