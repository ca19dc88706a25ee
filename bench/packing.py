"""Padding on a VideoInstruct-like length mix: padded, grouped (--group_by_length), packed (--packing), side by side.

    python bench/packing.py                          # CPU, a 20M-parameter LLaMA-architecture model (~5-15 min)
    python bench/packing.py --small                  # tiny model and few batches (seconds; what the tests run)
    python bench/packing.py --device cuda --size 7b  # one GPU, bf16 (bench/gpu.py runs the same rows)

The length mix (``length_mix``; docs/packing.md says why): every sample is ``<s>`` + system prompt and question
(45-70 tokens) + ``<vid_start>`` + 356 ``<vid_patch>`` + ``<vid_end>`` + ``ASSISTANT:`` (6) + the answer + ``</s>``.
VideoInstruct's 100K pairs are of two kinds: short question-answer pairs about the video (about 70%: answers of
one or two sentences, 20-120 tokens, median ~45) and detailed descriptions / summaries (about 30%: a paragraph,
120-400 tokens, median ~250). Answers are drawn log-normally within those bounds, so whole samples run from ~430
to ~840 tokens, and a random batch of 4 is padded to its longest.

Lengths are drawn for 20,000 samples (the padding of every batch of them is printed, exact), and each row trains on
``--batches`` batches of ``--batch`` samples of them:

* ``padded``: the original's batches (random order, right-padded to the longest sample);
* ``grouped``: batches of ``--group_by_length``'s order over the 20,000 (``train.sampling.grouped_indices``; its
  megabatches of 50 steps need a real-size dataset), picked at random, padded;
* ``packed``: the padded row's batches, each one row (``--packing``: ``data.dataset.PackedVideoDataCollator``), attention
  within each sample through transformers' block-diagonal mask (sdpa) or flash-attn's varlen kernel;
* ``per-sample``: the padded row's batches, each sample its own forward (no padding and no attention across samples, but
  B small calls instead of one): the other way of keeping attention per sample, for comparison.

Each step is a forward with labels and a backward (the trainable projector and token rows, frozen backbone, as
``--tune_mm_mlp_adapter``); the optimizer is left out so every row sees the same weights, and the loss of each
batch is compared with the padded one's (``max loss diff``: the same supervised tokens, the same mean). tokens/s
counts real tokens (no padding) per wall second, tokens/CPU-s per CPU second of this process (all threads; the
steadier measure on a shared machine; on CUDA it is the host's time and means little); padding is the share of the
computed token positions that were padding.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` beside this file, however it is started

import common  # noqa: E402
import torch  # noqa: E402

from video_chatgpt.constants import IGNORE_INDEX  # noqa: E402
from video_chatgpt.data.dataset import PackedVideoDataCollator, VideoDataCollator  # noqa: E402
from video_chatgpt.train.sampling import grouped_indices, padding_fraction  # noqa: E402

MODES = ("padded", "grouped", "packed", "per-sample")
POPULATION = 20_000  # lengths drawn for the batching (the rows train on a few of its batches)
# (share, low, median, high) of answer lengths in tokens, per kind of VideoInstruct pair; see the module docstring.
ANSWER_KINDS = ((0.7, 20, 45, 120), (0.3, 120, 250, 400))
PROMPT_TOKENS = (45, 70)  # <s> + vicuna_v1_1 system prompt (~35) + "USER:" + a question (~10-30)
ROLE_TOKENS = 6  # "ASSISTANT:" and separators after the video


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--size", default=None, help="20m (default), 7b, 100m or tiny (common.LLAMA_SIZES)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2 (default sdpa)")
    p.add_argument("--batch", type=int, default=4, help="samples per batch (default 4, the document's)")
    p.add_argument("--batches", type=int, default=None, help="batches per row (default 12, small 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first, per row (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="tiny model, short video spans, few batches (seconds)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def length_mix(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (prompt, answer) token counts drawn from the mix described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = float(torch.rand((), generator=g))
        _, low, median, high = ANSWER_KINDS[0] if u < ANSWER_KINDS[0][0] else ANSWER_KINDS[1]
        # log-normal around the median, spread so that the bounds are ~2 sigma away, then clipped to them
        sigma = math.log(high / low) / 4
        answer = int(min(high, max(low, median * math.exp(sigma * float(torch.randn((), generator=g))))))
        prompt = int(torch.randint(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1, (), generator=g))
        out.append((prompt, answer))
    return out


def make_items(mix: list[tuple[int, int]], video_tokens: int, mm_hidden: int, seed: int = 0) -> list[dict]:
    """Dataset items (``SupervisedVideoDataset.__getitem__``'s dicts) in the document's token layout."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for prompt, answer in mix:
        words = lambda k: torch.randint(3, 32000, (k,), generator=g)  # noqa: E731 - ordinary text ids
        ids = torch.cat(
            [
                torch.tensor([common.BOS_ID]),
                words(prompt - 1),
                torch.tensor([common.START_ID]),
                torch.full((video_tokens,), common.PATCH_ID),
                torch.tensor([common.END_ID]),
                words(ROLE_TOKENS),
                words(answer),
                torch.tensor([common.EOS_ID]),
            ]
        )
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-(answer + 1) :] = ids[-(answer + 1) :]  # the answer and its </s>
        feats = torch.randn((video_tokens, mm_hidden), generator=g).to(torch.float16)
        items.append({"input_ids": ids, "labels": labels, "video_spatio_temporal_features": feats})
    return items


def sample_length(prompt: int, answer: int, video_tokens: int) -> int:
    """Tokens of one sample in ``make_items``' layout."""
    return 1 + (prompt - 1) + 1 + video_tokens + 1 + ROLE_TOKENS + answer + 1


def step_indices(population: list[int], batch: int, batches: int, grouped: bool, seed: int) -> list[list[int]]:
    """``batches`` steps of ``batch`` sample indices into ``population`` (sample lengths), as training would batch
    them: random (consecutive batches of a shuffled order) or ``--group_by_length``'s order over the whole
    population (its megabatches of 50 steps need a real-size dataset), ``batches`` of its steps picked at random."""
    g = torch.Generator().manual_seed(seed + 1)
    order = grouped_indices(population, batch, 1, seed) if grouped else torch.randperm(len(population), generator=g)
    steps = [list(order[b : b + batch]) for b in range(0, len(order) - batch + 1, batch)]
    picked = torch.randperm(len(steps), generator=g)[:batches].tolist() if grouped else range(batches)
    return [[int(i) for i in steps[k]] for k in picked]


def batches_of(mode: str, steps: list[list[dict]], flash: bool) -> list[list[dict]]:
    """The collated inputs of each step of ``mode`` (a list of forwards per step: one, or one per sample)."""
    if mode == "packed":
        packer = PackedVideoDataCollator(flash_attn_kwargs=flash)
        return [[packer(step)] for step in steps]
    if mode == "per-sample":
        padder = VideoDataCollator(pad_id=common.PAD_ID)
        return [[padder([x]) for x in step] for step in steps]
    padder = VideoDataCollator(pad_id=common.PAD_ID)
    return [[padder(step)] for step in steps]


def step_loss(model, forwards: list[dict], device: str, autocast: torch.dtype | None) -> float:
    """Forward + backward of one step; the loss is the mean over the step's supervised tokens (per-sample forwards
    are weighted by their supervised tokens, as one batch would be)."""
    supervised = [int((f["labels"][:, 1:] != IGNORE_INDEX).sum()) for f in forwards]
    total = 0.0
    for f, count in zip(forwards, supervised):
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()}
        with torch.autocast(device.split(":")[0], dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(**inputs).loss * (count / sum(supervised))
        loss.backward()
        total += float(loss.detach())
    model.zero_grad(set_to_none=True)
    return total


def run_mode(model, mode: str, step_items: list[list[dict]], args, device: str, autocast, flash: bool) -> dict:
    steps = batches_of(mode, step_items, flash)
    for forwards in steps[: args.warmup]:
        step_loss(model, forwards, device, autocast)
    common.sync(device)
    real = computed = 0
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for forwards in steps:
        losses.append(step_loss(model, forwards, device, autocast))
    common.sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for forwards in steps:
        for f in forwards:
            real += int(f["attention_mask"].sum()) if "attention_mask" in f else f["input_ids"].numel()
            computed += f["input_ids"].numel()
    return {
        "mode": mode,
        "steps": len(steps),
        "real_tokens": real,
        "computed_positions": computed,
        "padding_fraction": round(1 - real / computed, 4),
        "seconds": round(wall, 3),
        "tokens_per_second": round(real / wall, 1),
        "cpu_seconds": round(cpu, 3),
        "tokens_per_cpu_second": round(real / cpu, 1),
        "losses": losses,
    }


def bench_packing(model, args, device: str, autocast, video_tokens: int, mm_hidden: int) -> dict:
    """All the rows on ``model`` (built by the caller: this script or ``bench/gpu.py``)."""
    mix = length_mix(POPULATION, args.seed)
    population = [sample_length(p, a, video_tokens) for p, a in mix]
    flash = args.attn.startswith("flash_attention")
    rows = []
    for mode in MODES:
        steps = step_indices(population, args.batch, args.batches, mode == "grouped", args.seed)
        items = make_items([mix[i] for step in steps for i in step], video_tokens, mm_hidden, args.seed)
        step_items = [items[k : k + args.batch] for k in range(0, len(items), args.batch)]
        rows.append(run_mode(model, mode, step_items, args, device, autocast, flash))
    by_mode = {r["mode"]: r for r in rows}
    reference = by_mode["padded"]["losses"]
    for r in rows:  # same samples per step for padded / packed / per-sample: the loss must be the same
        r["max_loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], reference)) if r["mode"] != "grouped" else None
        r["speedup_vs_padded"] = round(r["tokens_per_second"] / by_mode["padded"]["tokens_per_second"], 2)
        r["cpu_speedup_vs_padded"] = round(r["tokens_per_cpu_second"] / by_mode["padded"]["tokens_per_cpu_second"], 2)
    random_order = torch.randperm(POPULATION, generator=torch.Generator().manual_seed(args.seed)).tolist()
    grouped_order = grouped_indices(population, args.batch, 1, args.seed)
    ranked = sorted(population)
    return {
        "population": POPULATION,
        "samples_per_row": args.batch * args.batches,
        "batch": args.batch,
        "video_tokens": video_tokens,
        "sample_lengths": {
            "min": ranked[0],
            "median": ranked[POPULATION // 2],
            "max": ranked[-1],
            "answer_median": sorted(a for _, a in mix)[POPULATION // 2],
            "long_share": round(sum(a > ANSWER_KINDS[0][3] for _, a in mix) / POPULATION, 3),
        },
        # exact, over every batch of the population (the rows measure a few batches of it)
        "padding_population": {
            "padded": round(padding_fraction(population, random_order, args.batch), 4),
            "grouped": round(padding_fraction(population, grouped_order, args.batch), 4),
            "packed": 0.0,
        },
        "attn": args.attn,
        "rows": rows,
    }


def render(result: dict, title: str) -> str:
    s, pop = result["sample_lengths"], result["padding_population"]
    lines = [
        title,
        f"  length mix: {result['population']:,} samples, {result['video_tokens']} video tokens; lengths min "
        f"{s['min']} / median {s['median']} / max {s['max']} (answers: median {s['answer_median']}, "
        f"{100 * s['long_share']:.0f}% over {ANSWER_KINDS[0][3]} tokens); attention {result['attn']}",
        f"  padding over all its batches of {result['batch']}: padded {100 * pop['padded']:.1f}%, grouped "
        f"{100 * pop['grouped']:.1f}%, packed 0%; measured below on {result['samples_per_row']} samples per row",
        f"  {'mode':<11} {'steps':>5} {'padding':>8} {'tokens/s':>10} {'vs padded':>9} {'tokens/CPU-s':>12} "
        f"{'vs padded':>9} {'max loss diff':>14}",
    ]
    for r in result["rows"]:
        diff = "-" if r["max_loss_diff"] is None else f"{r['max_loss_diff']:.2e}"
        lines.append(
            f"  {r['mode']:<11} {r['steps']:>5} {100 * r['padding_fraction']:>7.1f}% {r['tokens_per_second']:>10.1f} "
            f"{r['speedup_vs_padded']:>8.2f}x {r['tokens_per_cpu_second']:>12.1f} {r['cpu_speedup_vs_padded']:>8.2f}x "
            f"{diff:>14}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    compute = common.parse_dtype(args.dtype, device)
    autocast = compute if compute != torch.float32 else None
    size = args.size or ("tiny" if args.small else "20m")
    args.batches = args.batches or (3 if args.small else 12)
    shapes = common.SMALL_SHAPES if args.small else common.Shapes()
    config = common.model_config(size, shapes, attn=args.attn)
    torch.manual_seed(args.seed)
    model = common.build_model(config, device, compute)
    common.setup_ours(model)
    total, trainable = common.count_parameters(model)
    result = bench_packing(model, args, device, autocast, shapes.video_tokens, shapes.mm_hidden)
    result.update(device=device, size=size, parameters=total, trainable=trainable, dtype=common.dtype_name(compute))
    threads = torch.get_num_threads()
    title = (
        f"bench/packing.py: {size} LLaMA-architecture model ({total / 1e6:.1f}M parameters, {trainable:,} trainable), "
        f"{device} {result['dtype']}, {threads} threads"
    )
    print(render(result, title))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
