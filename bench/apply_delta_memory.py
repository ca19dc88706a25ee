"""Peak memory of apply-delta: our streaming tool against loading both models whole (what the original does).

Run from the repository root (about a minute on 2 CPU cores, ~2 GB of temporary disk)::

    .venv/bin/python bench/apply_delta_memory.py                      # ~400 MB fp16 models, 4 shards, both formats
    .venv/bin/python bench/apply_delta_memory.py --size-mb 800 --shards 8 --format bin

It builds, in a temporary folder, a random LLaMA-shaped base (vocabulary 32000) and a LLaVA-shaped delta
(vocabulary 32003 + projector) of ``--size-mb`` each, in ``--shards`` shards, then runs three child processes, one
after the other, each reporting its own peak resident memory (``VmHWM`` of ``/proc/self/status``, the high-water
mark of that process since its ``exec``; ``ru_maxrss`` from ``wait4`` is not used because Linux carries the parent's
RSS at ``fork`` into it):

* ``imports only``: Python + torch + our package imported, nothing done (the floor under both numbers);
* ``ours``: ``video_chatgpt.weights.apply_delta.main`` (streamed; output sharded safetensors, 2 GB shards);
* ``naive``: both models loaded whole into state dicts (``torch.load`` / ``load_file`` of every shard), the delta
  added in place, and one ``save_file``: the memory pattern of the original's two ``from_pretrained`` calls.

Ours reads each tensor's bytes from the shard files (safetensors and ``.bin`` alike), so its peak is about three
copies of the largest tensor (delta, base, result), whatever the shard or model size. Both outputs are then compared
tensor by tensor (``--no-verify`` skips that).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

HIDDEN, INTERMEDIATE, MM_HIDDEN = 1024, 2752, 1024  # width 1024: a 7B model's shapes scaled down 4x
BASE_VOCAB, DELTA_VOCAB = 32000, 32003


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
        p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        p + "input_layernorm.weight": (HIDDEN,),
        p + "post_attention_layernorm.weight": (HIDDEN,),
    }


def model_shapes(size_mb: float, vocab: int, projector: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a LLaMA-like model of about ``size_mb`` MB in fp16 (as many layers as fit)."""
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(0).values()) * 2
    fixed = 2 * vocab * HIDDEN * 2
    layers = max(1, round((size_mb * 1e6 - fixed) / per_layer))
    shapes = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        shapes.update(layer_shapes(i))
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab, HIDDEN)
    if projector:
        shapes["model.mm_projector.weight"] = (HIDDEN, MM_HIDDEN)
        shapes["model.mm_projector.bias"] = (HIDDEN,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(shape, generator=gen, dtype=torch.float16) * 0.02 for n, shape in shapes.items()}


def write_model(folder: Path, state: dict[str, torch.Tensor], shards: int, fmt: str, llava: bool) -> None:
    """``state`` in ``shards`` shards with the HF index, config.json and (for the delta) LLaVA's tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    # Shards of about equal size, in state order (as save_pretrained splits by max_shard_size).
    target = sum(t.numel() * 2 for t in state.values()) / shards
    groups: list[list[str]] = [[]]
    size = 0
    for n, t in state.items():
        if size >= target * 0.999 and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += t.numel() * 2
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"{stem}-{i + 1:05d}-of-{len(groups):05d}.{ext}"
        chunk = {n: state[n] for n in group}
        if fmt == "safetensors":
            save_file(chunk, folder / fname, metadata={"format": "pt"})
        else:
            torch.save(chunk, folder / fname)
        for n, t in chunk.items():
            weight_map[n] = fname
            total += t.numel() * 2
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    vocab = state["model.embed_tokens.weight"].shape[0]
    config = {
        "model_type": "llava" if llava else "llama",
        "hidden_size": HIDDEN,
        "vocab_size": vocab,
        "intermediate_size": INTERMEDIATE,
        "torch_dtype": "float16",
    }
    if llava:
        config.update(mm_vision_tower="openai/clip-vit-large-patch14", mm_hidden_size=MM_HIDDEN, use_mm_proj=True)
        from video_chatgpt.sample.models import write_llava_tokenizer

        write_llava_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def naive_apply(base: Path, delta: Path, out: Path) -> None:
    """Both models whole in memory, the delta added in place (fp16), one file saved: the original's memory use."""
    from safetensors.torch import load_file, save_file

    def load_all(folder: Path) -> dict[str, torch.Tensor]:
        state = {}
        for f in sorted(folder.glob("*.safetensors")):
            state.update(load_file(f))
        for f in sorted(folder.glob("*.bin")):
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        return state

    base_sd, delta_sd = load_all(base), load_all(delta)
    for name, param in delta_sd.items():
        if name not in base_sd:
            continue  # the projector: taken as stored
        b = base_sd[name]
        param[: b.shape[0]] += b  # same shape, or the first rows of the vocabulary tensors
    out.mkdir(parents=True)
    save_file(delta_sd, out / "model.safetensors", metadata={"format": "pt"})


def peak_rss_mb() -> float:
    """Peak RSS of this process since its exec, in MB (Linux VmHWM; elsewhere ru_maxrss, which may be higher)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


def child(kind: str, paths: list[str]) -> None:
    """Body of one measured child process; prints its peak RSS as the last line of stdout."""
    if kind == "ours":
        from video_chatgpt.weights.apply_delta import main as apply_main

        base, delta, out = paths
        code = apply_main(["--base-model-path", base, "--target-model-path", out, "--delta-path", delta, "--quiet"])
        if code:
            raise SystemExit(code)
    elif kind == "naive":
        naive_apply(*map(Path, paths))
    else:  # imports only: what every child pays before doing anything
        import safetensors  # noqa: F401

        import video_chatgpt.weights.apply_delta  # noqa: F401
    print(f"PEAK_RSS_MB {peak_rss_mb():.1f}", flush=True)


def run_child(kind: str, paths: list[Path]) -> tuple[float, float]:
    """Run ``child(kind, paths)`` in a fresh Python; returns (its peak RSS in MB, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not last[0].startswith("PEAK_RSS_MB "):
        raise SystemExit(f"child {kind} failed (exit {proc.returncode}):\n{proc.stderr}")
    return float(last[0].split()[1]), wall


def verify(ours: Path, naive: Path) -> int:
    """Compare every tensor of the two outputs bit for bit; returns how many were compared."""
    from safetensors import safe_open

    with safe_open(str(naive / "model.safetensors"), "pt") as ref:
        names = set(ref.keys())
        index = json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"]
        if set(index) != names:
            raise SystemExit(f"outputs hold different tensors: {sorted(set(index) ^ names)[:5]}")
        for shard in sorted(set(index.values())):
            with safe_open(str(ours / shard), "pt") as f:
                for name in f.keys():
                    if not torch.equal(f.get_tensor(name), ref.get_tensor(name)):
                        raise SystemExit(f"tensor {name} differs between ours and naive")
    return len(names)


def bench_format(
    root: Path, fmt: str, base_state: dict, delta_state: dict, shards: int, floor: float, check: bool
) -> list[str]:
    """Write the two models in ``fmt``, run ours and naive, return the report lines."""
    base, delta = root / f"base-{fmt}", root / f"delta-{fmt}"
    write_model(base, base_state, shards, fmt, llava=False)
    write_model(delta, delta_state, shards, fmt, llava=True)
    shard_files = list(delta.glob("*-of-*"))
    model_mb = sum(f.stat().st_size for f in shard_files) / 1e6
    shard_mb = max(f.stat().st_size for f in shard_files) / 1e6
    tensor_mb = max(t.numel() * 2 for t in delta_state.values()) / 1e6

    ours = run_child("ours", [base, delta, root / f"ours-{fmt}"])
    naive = run_child("naive", [base, delta, root / f"naive-{fmt}"])
    verified = verify(root / f"ours-{fmt}", root / f"naive-{fmt}") if check else None

    kind = "safetensors" if fmt == "safetensors" else "PyTorch .bin"
    lines = [
        f"{kind}: base + delta of {model_mb:.0f} MB each (fp16), {shards} shards each (largest {shard_mb:.0f} MB), "
        f"largest tensor {tensor_mb:.0f} MB",
        f"  {'':34}{'peak RSS':>10}{'above imports':>15}{'wall':>8}",
    ]
    for label, (rss, wall) in (("ours: video-chatgpt apply-delta", ours), ("naive: both models whole in RAM", naive)):
        lines.append(f"  {label:34}{rss:>7.0f} MB{rss - floor:>12.0f} MB{wall:>7.1f}s")
    lines.append(
        f"  above imports: ours {(ours[0] - floor) / model_mb:.2f} x one model ({(ours[0] - floor) / tensor_mb:.1f} x "
        f"the largest tensor), naive {(naive[0] - floor) / model_mb:.2f} x one model"
        + (f"; outputs identical ({verified} tensors)" if verified is not None else "")
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=400, help="size of each model in MB (fp16)")
    p.add_argument("--shards", type=int, default=4, help="shards per model")
    p.add_argument("--format", choices=["bin", "safetensors", "both"], default="both")
    p.add_argument("--workdir", type=Path, default=None, help="where to build the models (default: a temporary folder)")
    p.add_argument("--no-verify", action="store_true", help="do not compare the two outputs")
    p.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)  # internal: one measured run
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1:])
        return 0
    formats = ["bin", "safetensors"] if args.format == "both" else [args.format]
    base_state = random_state(model_shapes(args.size_mb, BASE_VOCAB, projector=False), seed=0)
    delta_state = random_state(model_shapes(args.size_mb, DELTA_VOCAB, projector=True), seed=1)
    root = Path(tempfile.mkdtemp(prefix="apply-delta-bench-", dir=args.workdir))
    try:
        floor, floor_wall = run_child("imports", [])
        print(f"apply-delta peak memory (RSS), {os.cpu_count()} CPUs, torch {torch.__version__}")
        print(f"  imports only (python, torch, video_chatgpt.weights): {floor:.0f} MB ({floor_wall:.1f}s)", flush=True)
        for fmt in formats:
            lines = bench_format(root, fmt, base_state, delta_state, args.shards, floor, not args.no_verify)
            print("\n".join(lines), flush=True)
            for d in root.iterdir():  # free the disk before the next format
                shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
