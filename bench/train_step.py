"""One Video-ChatGPT training step, ours against the straightforward way, on a ~100M-parameter LLaMA-architecture model.

Shapes are the document's recipe: per-device batch 4, 356 video tokens (100 temporal + 256 spatial, 1024-wide fp16
features) and ~90-120 text tokens per sample of which ~40 answer tokens are supervised; vocabulary 32006. Weights
are random (speed does not depend on their values), built in code: no download.

* ``ours``: frozen backbone in the compute dtype, only the projector and the 2 ``<vid_start>``/``<vid_end>`` rows
  trainable (fp32), logits only at the supervised positions, AdamW on those tensors;
* ``straightforward`` (the original): fp32 backbone (autocast for bf16), the whole 32006 x H embedding trainable in
  fp32 with AdamW state (gradient reaching only the 2 rows through ``.detach()``), full (B, L, V) logits and the
  standard shifted cross-entropy.

Each variant runs in its own subprocess so that its peak memory is its own (CPU: peak RSS; CUDA:
``max_memory_allocated``). Step time is the median of ``--steps`` timed steps after ``--warmup``.

    python bench/train_step.py                       # CPU, fp32 (about 2-3 minutes on 2 cores)
    python bench/train_step.py --device cuda         # one GPU, bf16 (seconds)
    python bench/train_step.py --small               # tiny model and shapes (seconds; what the tests run)
    python bench/train_step.py --gradient-checkpointing --json runs/train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` beside this file, however it is started

import common  # noqa: E402
import torch  # noqa: E402

VARIANT_ORDER = ("ours", "straightforward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", default=None, help="compute dtype: fp32, bf16, fp16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: CPU 3, CUDA 20, small 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: CPU 1, CUDA 3)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop timing a variant after this many seconds of timed steps (default: CPU 45, else none)",
    )
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default 4, small 2)")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="checkpoint every decoder layer (both variants)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --small, where tiny ops only lose to threading; else torch's)",
    )
    p.add_argument("--small", action="store_true", help="tiny model and shapes: the same code in seconds")
    p.add_argument("--variants", default=",".join(VARIANT_ORDER), help="comma-separated subset of ours,straightforward")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # passed on to the per-variant child processes
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (3 if args.small or not cuda else 20)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.budget_s is None and not cuda and not args.small:
        args.budget_s = 45.0
    return args


def shapes_for(args) -> common.Shapes:
    import dataclasses

    shapes = common.SMALL_SHAPES if args.small else common.Shapes()
    return dataclasses.replace(shapes, batch=args.batch) if args.batch else shapes


def run_variant(args) -> dict:
    """Build, set up and time one variant in this process; returns its numbers."""
    device, variant = args.device, args.worker
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    compute = common.parse_dtype(args.dtype, device)
    shapes = shapes_for(args)
    config = common.model_config("tiny" if args.small else "100m", shapes, attn=args.attn)
    # ours keeps the frozen backbone in the compute dtype; the original keeps everything fp32 (autocast for bf16).
    backbone = compute if variant == "ours" else torch.float32
    autocast = None if compute == torch.float32 else compute
    model = common.build_model(config, device, backbone)
    setup, loss_fn = common.VARIANTS[variant]
    params = setup(model)
    common.set_checkpointing(model, args.gradient_checkpointing)
    optimizer = common.make_optimizer(params, device)
    batch = common.make_batch(shapes).to(device)
    total, trainable = common.count_parameters(model)

    meter = common.MemoryMeter(device)
    meter.start()
    losses: list[float] = []
    timing = common.time_steps(
        lambda: losses.append(common.train_step(model, loss_fn, batch, optimizer, autocast)),
        device,
        args.warmup,
        args.steps,
        budget_s=args.budget_s,
    )
    peak = meter.peak_mib()
    step_s = timing.median_s
    return {
        "variant": variant,
        "parameters": total,
        "trainable": trainable,
        "backbone_dtype": common.dtype_name(backbone),
        "autocast": common.dtype_name(autocast) if autocast else None,
        "step_ms": round(1000 * step_s, 2),
        "step_ms_all": [round(1000 * t, 2) for t in timing.wall_s],
        "timed_steps": len(timing.wall_s),
        "cpu_s_per_step": None if device.startswith("cuda") else round(timing.median_cpu_s, 3),
        "tokens_per_s": round(batch.real_tokens / step_s, 1),
        "samples_per_s": round(shapes.batch / step_s, 3),
        "peak_mib": round(peak, 1),
        "start_mib": round(meter.start_mib, 1),
        "train_delta_mib": round(peak - meter.start_mib, 1),
        "memory_kind": meter.kind,
        "loss": round(losses[-1], 4),
        "threads": torch.get_num_threads(),
    }


def spawn(args, variant: str) -> dict:
    """Run one variant in a fresh interpreter (honest peak memory) and read its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--worker", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def report(args, results: dict[str, dict]) -> str:
    shapes = shapes_for(args)
    batch = common.make_batch(shapes)
    size = "tiny" if args.small else "100m"
    sizes = common.LLAMA_SIZES[size]
    compute = common.parse_dtype(args.dtype, args.device)
    any_result = next(iter(results.values()))
    text = shapes.text_tokens()
    lines = [
        f"train_step: one Video-ChatGPT training step, random weights, "
        f"{size} LLaMA (hidden {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, intermediate "
        f"{sizes['intermediate_size']}, vocab {common.VOCAB}): {any_result['parameters'] / 1e6:.1f}M parameters",
        f"batch {shapes.batch} x {batch.input_ids.shape[1]} tokens ({shapes.video_tokens} video + "
        f"{min(text)}-{max(text)} "
        f"text per sample; {batch.real_tokens} real tokens, {batch.supervised} supervised)",
    ]
    if args.device.startswith("cuda"):
        lines.append(
            f"device {torch.cuda.get_device_name(args.device) if torch.cuda.is_available() else args.device}, "
            f"compute {common.dtype_name(compute)}, attention {args.attn}, gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}"
        )
    else:
        lines.append(
            f"device CPU ({any_result['threads']} threads), {common.dtype_name(compute)}"
            + (
                " (CPU fp32 is used here: both variants compute in fp32 without autocast; on a GPU the default is "
                "bf16, with ours' frozen backbone stored in bf16 and the original's in fp32)"
                if compute == torch.float32
                else ""
            )
            + f", attention {args.attn}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        )
    counts = sorted({r["timed_steps"] for r in results.values()})
    lines.append(
        f"median of {'/'.join(map(str, counts))} timed steps (asked {args.steps}) after {args.warmup} warmup; "
        f"memory: {any_result['memory_kind']}"
    )
    lines.append("")
    cpu = not args.device.startswith("cuda")
    header = (
        f"{'variant':<16} {'trainable':>12} {'step ms':>10} "
        + (f"{'CPU s/step':>11} " if cpu else "")
        + f"{'tokens/s':>10} {'peak MiB':>10} {'step delta MiB':>15}  loss"
    )
    lines += [header, "-" * len(header)]
    for name in VARIANT_ORDER:
        r = results.get(name)
        if r:
            lines.append(
                f"{name:<16} {r['trainable']:>12,} {r['step_ms']:>10.1f} "
                + (f"{r['cpu_s_per_step']:>11.2f} " if cpu else "")
                + f"{r['tokens_per_s']:>10.1f} {r['peak_mib']:>10.1f} {r['train_delta_mib']:>15.1f}  "
                f"{r['loss']:.4f}"
            )
    if "ours" in results and "straightforward" in results:
        o, s = results["ours"], results["straightforward"]
        lines.append("")
        if cpu:
            lines.append(
                f"straightforward / ours: CPU seconds per step "
                f"x{s['cpu_s_per_step'] / o['cpu_s_per_step']:.2f} "
                f"(the work done; steadier than wall time on a shared machine)"
            )
        lines.append(
            f"straightforward / ours: step time x{s['step_ms'] / o['step_ms']:.2f}, peak memory "
            f"x{s['peak_mib'] / o['peak_mib']:.2f}, memory added by the steps x"
            f"{s['train_delta_mib'] / max(o['train_delta_mib'], 1e-9):.2f}, "
            f"trainable parameters x{s['trainable'] / o['trainable']:.0f}"
        )
        h, layers, inter = sizes["hidden_size"], sizes["num_hidden_layers"], sizes["intermediate_size"]
        head, body = h * common.VOCAB, layers * (4 * h * h + 3 * h * inter)
        head_share = head / (head + body)
        lines.append(
            f"note: at this size lm_head is {100 * head_share:.0f}% of the matmul parameters a token passes through "
            f"(about 2% at 7B), so the full-vocabulary logits weigh more here than at 7B; bench/gpu.py measures 7B"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.small:
        torch.set_num_threads(args.threads or 1)
    if args.worker:
        print(json.dumps(run_variant(args)), flush=True)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANT_ORDER)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; expected {','.join(VARIANT_ORDER)}")
    results = {v: spawn(args, v) for v in variants}
    print(report(args, results), flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "argv"}
        Path(args.json_out).write_text(json.dumps({"args": settings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
