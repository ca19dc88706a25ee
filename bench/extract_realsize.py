"""Decoding at ActivityNet size: today's straight-through decode against ours (frames located by timestamp), side by
side on generated clips, and the projection for the 13,303 training videos on a 16-core node with one GPU.

    .venv/bin/python bench/extract_realsize.py             # --quick: two 1-minute clips, ~2-4 minutes on 2 cores
    .venv/bin/python bench/extract_realsize.py --full      # 6 clips of 1, 2.5 and 5 minutes: ~30-40 minutes here
    .venv/bin/python bench/extract_realsize.py --smoke     # 2-second clips: the code paths in seconds (tests)
    .venv/bin/python bench/extract_realsize.py --gpu-json bench/results/gpu.json   # a measured tower rate

Clips (generated once with PyAV + libx264 and cached in ``bench/results/realsize_videos``): a textured background
panning at changing speed and a moving block, 640x360 or 1280x720, 25 or 30 fps, 1 to 5 minutes, with a long GOP
(x264's default: a keyframe every 250 frames) or a short one (every 2 seconds), 3 B-frames, CRF 23 (YouTube-like
bit rates). Generated content decodes faster than camera footage of the same size, so absolute rates are upper
bounds; the ratio of the two methods is what carries over.

Per clip, in this process, each method once per ``--repeats`` (the fastest kept), one decoder thread
(``decode_sampled(..., threads=1)``, as each of the job's decode workers on a GPU node), 100 frames sampled:

* ``straight``: ``method="straight"``, today's decode: every frame decoded in order, the sampled ones kept;
* ``ours``: ``method="auto"``, what the extraction job now runs: a demux pass, then each sampled frame decoded
  from the keyframe before it (nearby ones in one forward pass), packets of unsampled non-reference frames skipped.

The kept frames of the two are compared (arrays equal) before any number prints. Times are CPU seconds of this
process (one decoder thread: the time of one core, whatever else runs on the machine), wall seconds beside them.

Projection (marked as such): 13,303 videos of 150 s at 30 fps (4,500 frames), 100 sampled each (1.33M frames to
encode); decoding: the clips' mean CPU seconds per video frame x 4,500 x 13,303 over 16 cores (one decode worker per
core, the job's default with a GPU); encoding: CLIP ViT-L/14 at 224 px in fp16 on one GPU, from a measured
``bench/gpu.py`` tower rate (``--gpu-json``) or else from its FLOPs at ``--gpu-mfu`` of an H100's dense fp16 peak.
The job runs both at once (decode workers feed the encoder), so the slower side sets its wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from video_chatgpt.features.decode import decode_sampled, read_packet_table  # noqa: E402

TRAIN_VIDEOS = 13_303  # ActivityNet videos of the training set (as bench/gpu.py)
ANET_SECONDS, ANET_FPS = 150.0, 30.0  # assumed mean length; 4,500 frames
NUM_FRAMES = 100
CORES = 16
# CLIP ViT-L/14 at 224 px: 257 tokens, width 1024, MLP 4096; the job runs 23 of its 24 layers (select layer -2).
VIT_L_TOKENS, VIT_L_WIDTH, VIT_L_LAYERS = 257, 1024, 23
H100_FP16_DENSE_TFLOPS = 989.0  # SXM datasheet, dense (bench/gpu.py's table)


@dataclass(frozen=True)
class Clip:
    width: int
    height: int
    fps: int
    seconds: float
    gop: int  # frames between keyframes

    @property
    def name(self) -> str:
        return f"v_{self.height}p{self.fps}_{self.seconds:g}s_gop{self.gop}.mp4"

    @property
    def label(self) -> str:
        gop = "long GOP" if self.gop >= 250 else f"GOP {self.gop / self.fps:.2g} s"
        length = f"{self.seconds / 60:g} min" if self.seconds >= 60 else f"{self.seconds:g} s"
        return f"{self.width}x{self.height} {self.fps} fps {length}, {gop} ({self.gop})"


QUICK = [Clip(640, 360, 30, 60, 250), Clip(1280, 720, 25, 60, 50)]
FULL = [
    Clip(640, 360, 30, 60, 250),
    Clip(640, 360, 30, 150, 60),
    Clip(640, 360, 25, 300, 250),
    Clip(1280, 720, 25, 60, 50),
    Clip(1280, 720, 30, 150, 250),
    Clip(1280, 720, 30, 300, 60),
]
SMOKE = [Clip(320, 180, 25, 2, 250), Clip(320, 180, 30, 2, 12)]


def write_clip(path: Path, clip: Clip, seed: int = 0) -> Path:
    """Encode ``clip`` (h264, 3 B-frames, fixed GOP, no scene-cut keyframes); frames are views into one texture."""
    import av

    rng = np.random.default_rng(seed)
    w, h = clip.width, clip.height
    small = rng.integers(0, 256, (h // 8 + 1, w // 4 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)
    texture = np.ascontiguousarray(np.pad(texture, ((0, max(0, 2 * h - texture.shape[0])), (0, 0), (0, 0)), "wrap"))
    texture = np.ascontiguousarray(np.pad(texture, ((0, 0), (0, max(0, 2 * w - texture.shape[1])), (0, 0)), "wrap"))
    tmp = path.with_name(f".{path.name}.part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        params = f"keyint={clip.gop}:min-keyint={clip.gop}:scenecut=0:bframes=3"
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": params}
        for i in range(int(round(clip.seconds * clip.fps))):
            dx = int((w / 2) * (1 + math.sin(i / (3.0 * clip.fps))))  # a slow pan that changes direction
            dy = int((h / 2) * (1 + math.cos(i / (5.0 * clip.fps))))
            frame = texture[dy : dy + h, dx : dx + w].copy()
            bx, by = (i * 4) % max(1, w - 40), (i * 2) % max(1, h - 40)
            frame[by : by + 40, bx : bx + 40] = (255, 200, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def measure(path: Path, method: str, num_frames: int, repeats: int, size: int = 224):
    """(best CPU s, its wall s, the SampledVideo) of ``decode_sampled`` with one decoder thread."""
    best = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        video = decode_sampled(path, num_frames, size, threads=1, method=method)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if best is None or cpu < best[0]:
            best = (cpu, wall, video)
    return best


def compare(path: Path, num_frames: int, repeats: int) -> dict:
    """Both methods on one clip with ``num_frames`` sampled; the kept frames must be equal."""
    s_cpu, s_wall, straight = measure(path, "straight", num_frames, repeats)
    o_cpu, o_wall, ours = measure(path, "auto", num_frames, repeats)
    if straight.indices != ours.indices or not np.array_equal(straight.frames, ours.frames):
        raise AssertionError(f"{path.name}: the two methods kept different frames")
    n = straight.num_decoded
    return {
        "num_frames": num_frames,
        "straight": {"cpu_s": s_cpu, "wall_s": s_wall, "frames_per_cpu_s": n / s_cpu},
        "ours": {
            "cpu_s": o_cpu,
            "wall_s": o_wall,
            "frames_per_cpu_s": n / o_cpu,
            "method": ours.method,
            "packets_decoded": ours.packets_decoded,
            "seeks": ours.seeks,
        },
        "speedup": s_cpu / o_cpu,
    }


def bench_clip(path: Path, clip: Clip, repeats: int) -> dict:
    """The job's 100 frames on this clip, and the sampling density of an average ActivityNet video (100 of 4,500
    frames: 40 of a 1-minute clip at 30 fps), which the projection uses."""
    table = read_packet_table(path)
    n = table.claimed
    anet = max(1, round(NUM_FRAMES * n / (ANET_SECONDS * ANET_FPS)))
    row = {"clip": asdict(clip), "label": clip.label, "frames": n, "keyframes": int(table.keyframe.sum())}
    row["mbit_per_s"] = round(path.stat().st_size * 8 / 1e6 / clip.seconds, 2)
    row["job"] = compare(path, NUM_FRAMES, repeats)
    row["anet_density"] = row["job"] if anet == NUM_FRAMES else compare(path, anet, repeats)
    return row


def gpu_frames_per_s(gpu_json: Path | None, mfu: float) -> tuple[float, str]:
    """ViT-L/14 frames/s on one GPU: the best measured tower rate in ``gpu_json``, else the FLOP estimate."""
    if gpu_json is not None and gpu_json.is_file():
        rows = json.loads(gpu_json.read_text()).get("extraction", {}).get("tower_alone", [])
        rates = [r["frames_per_s"] for r in rows if r.get("status") == "ok"]
        if rates:
            return max(rates), f"measured by bench/gpu.py ({gpu_json}; all 24 layers)"
    t, d = VIT_L_TOKENS, VIT_L_WIDTH
    # multiply-adds per layer: q/k/v/o projections 4 t d^2, MLP 8 t d^2, attention scores and values 2 t^2 d
    flops = 2 * VIT_L_LAYERS * (12 * t * d * d + 2 * t * t * d)
    rate = H100_FP16_DENSE_TFLOPS * 1e12 * mfu / flops
    return rate, (
        f"PROJECTED, not measured: {flops / 1e9:.0f} GFLOP per frame at {mfu:.0%} of an H100's dense fp16 "
        f"{H100_FP16_DENSE_TFLOPS:.0f} TFLOP/s (bench/gpu.py measures it on a GPU)"
    )


def project(rows: list[dict], gpu_rate: float, cores: int) -> dict:
    frames = ANET_SECONDS * ANET_FPS
    out = {"videos": TRAIN_VIDEOS, "frames_per_video": frames, "sampled_per_video": NUM_FRAMES, "cores": cores}
    encode_s = TRAIN_VIDEOS * NUM_FRAMES / gpu_rate
    out["gpu_frames_per_s"] = gpu_rate
    out["encode_min"] = encode_s / 60
    for method in ("straight", "ours"):
        # CPU s per video frame at an average ActivityNet video's sampling density, mean over the clips
        per_frame = float(np.mean([r["anet_density"][method]["cpu_s"] / r["frames"] for r in rows]))
        decode_s = TRAIN_VIDEOS * frames * per_frame / cores
        out[method] = {
            "cpu_s_per_video": per_frame * frames,
            "decode_min": decode_s / 60,
            "job_min": max(decode_s, encode_s) / 60,
        }
    return out


def render(rows: list[dict], proj: dict, gpu_note: str, load: str) -> str:
    lines = [
        f"One decoder thread; CPU seconds (wall beside); {load}",
        "",
        f"{'clip':54} {'frames':>6} {'keys':>4} {'sampled':>7} {'straight s':>11} {'ours s':>11} "
        f"{'speed-up':>8} {'straight f/s':>12} {'ours f/s':>8} {'decoded':>7} {'seeks':>5}",
    ]
    totals = {"job": [0.0, 0.0], "anet_density": [0.0, 0.0]}
    for r in rows:
        for key in ("job", "anet_density"):
            if key == "anet_density" and r[key] is r["job"]:
                continue
            m = r[key]
            s, o = m["straight"], m["ours"]
            totals[key][0] += s["cpu_s"]
            totals[key][1] += o["cpu_s"]
            first = key == "job"
            name = f"{r['label']}, {r['mbit_per_s']:.1f} Mb/s" if first else ""
            lines.append(
                f"{name:54} {r['frames'] if first else '':>6} "
                f"{r['keyframes'] if first else '':>4} {m['num_frames']:7d} {s['cpu_s']:5.2f} ({s['wall_s']:4.1f}) "
                f"{o['cpu_s']:5.2f} ({o['wall_s']:4.1f}) {m['speedup']:7.2f}x {s['frames_per_cpu_s']:12.0f} "
                f"{o['frames_per_cpu_s']:8.0f} {o['packets_decoded']:7d} {o['seeks']:5d}"
            )
    for key, what in (("job", f"{NUM_FRAMES} sampled"), ("anet_density", "ActivityNet density")):
        s_total, o_total = totals[key]
        if s_total:
            lines.append(
                f"{'all clips, ' + what:54} {'':6} {'':4} {'':7} {s_total:11.2f} {o_total:11.2f} "
                f"{s_total / o_total:7.2f}x"
            )
    lines += [
        "",
        f"(sampled: {NUM_FRAMES}, what the job takes, then the density of an average ActivityNet video, {NUM_FRAMES} "
        f"per {ANET_SECONDS * ANET_FPS:,.0f} frames; f/s: the video's frames per CPU second, i.e. per core; decoded: "
        "packets ours gave the decoder, skipped non-reference ones included)",
        "",
        f"PROJECTION for the {proj['videos']:,} training videos ({ANET_SECONDS:.0f} s at {ANET_FPS:.0f} fps = "
        f"{proj['frames_per_video']:,.0f} frames, {NUM_FRAMES} sampled: "
        f"{proj['videos'] * NUM_FRAMES / 1e6:.2f}M frames to encode) on a {proj['cores']}-core node with one GPU, "
        "decoding at the clips' mean cost per frame (ActivityNet density):",
        f"  encode (GPU): {proj['gpu_frames_per_s']:,.0f} frames/s -> {proj['encode_min']:.1f} min; {gpu_note}",
    ]
    for method in ("straight", "ours"):
        p = proj[method]
        lines.append(
            f"  {method:8} decode: {p['cpu_s_per_video']:5.2f} CPU s per video -> {p['decode_min']:6.1f} min on "
            f"{proj['cores']} cores; the job (decode and encode at once): {p['job_min']:6.1f} min"
        )
    ratio = proj["straight"]["job_min"] / proj["ours"]["job_min"]
    goal = "under" if proj["ours"]["job_min"] < 30 else "OVER"
    lines.append(f"  ours / straight: {ratio:.2f}x faster; ours is {goal} the 30-minute goal (projected)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="two 1-minute clips (the default)")
    mode.add_argument("--full", action="store_true", help="6 clips: 360p and 720p, 25/30 fps, 1-5 min, both GOPs")
    mode.add_argument("--smoke", action="store_true", help="two 2-second 180p clips: the code paths only")
    p.add_argument("--repeats", type=int, default=1, help="runs of each method per clip (the fastest is kept)")
    p.add_argument("--cores", type=int, default=CORES, help="decode cores of the projected node")
    p.add_argument("--gpu-json", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    p.add_argument("--gpu-mfu", type=float, default=0.4, help="assumed tower MFU when no GPU measurement exists")
    p.add_argument("--videos", type=Path, default=REPO / "bench" / "results" / "realsize_videos")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    clips = FULL if args.full else SMOKE if args.smoke else QUICK
    args.videos.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        path = args.videos / clip.name
        if not path.exists():
            start = time.perf_counter()
            write_clip(path, clip, seed=i)
            print(f"generated {clip.name} in {time.perf_counter() - start:.0f} s", flush=True)
    rows = [bench_clip(args.videos / clip.name, clip, args.repeats) for clip in clips]
    rate, note = gpu_frames_per_s(args.gpu_json, args.gpu_mfu)
    proj = project(rows, rate, args.cores)
    load = f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores"
    print(render(rows, proj, note, load))
    if args.json is not None:
        args.json.write_text(json.dumps({"clips": rows, "projection": proj, "gpu_note": note}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
