"""The benchmarks run end to end in their small modes: every section present, every number positive, and each
printed comparison equal to the ratio of the rows it compares.

``bench/gpu.py --small`` runs the real-size benchmark's code paths (7B training variants, tower, extractor, folder
job, projections) with tiny shapes on CPU; ``bench/train_step.py --small`` the ~100M side-by-side step. Both run as
the user runs them, in a subprocess from the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_script(*argv: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def positive(row: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and row[key] > 0, f"{key}={row[key]!r} in {row}"


def check_gpu_json(data: dict) -> None:
    assert {"env", "args", "training", "projection", "extraction", "wall_s"} <= set(data)
    train = data["training"]
    assert train["flops_per_step"] > 0 and "4*N_body*T" in train["flops_formula"]
    rows = {(r["variant"], r["attn"], r["gradient_checkpointing"]): r for r in train["rows"]}
    for key in (
        ("ours", "sdpa", False),
        ("ours", "sdpa", True),
        ("lora", "sdpa", True),
        ("straightforward", "sdpa", True),
    ):
        assert rows[key]["status"] == "ok", rows[key]
        positive(rows[key], "step_ms", "steps_per_s", "samples_per_s", "tokens_per_s", "peak_memory_gb", "tflops_per_s")
    # flash_attention_2 rows are there too: measured where flash_attn is importable, else skipped with the reason
    for gc_on in (False, True):
        fa2 = rows[("ours", "flash_attention_2", gc_on)]
        assert fa2["status"] == "ok" or fa2["status"].startswith("skipped:"), fa2
    assert rows[("straightforward", "sdpa", True)]["trainable"] > train["ours_model"]["trainable"] > 0
    # The printed comparison is the rows' own ratio (ours vs the straightforward step at the same settings).
    ratio, ours, straight = (
        train["ratio_straightforward_over_ours"],
        rows[("ours", "sdpa", True)],
        rows[("straightforward", "sdpa", True)],
    )
    assert ratio["step_time"] == pytest.approx(straight["step_ms"] / ours["step_ms"], rel=1e-2)
    assert ratio["peak_memory"] == pytest.approx(straight["peak_memory_gb"] / ours["peak_memory_gb"], rel=1e-2)

    proj = data["projection"]["training"]
    assert proj["samples"] == 300_000 and proj["optimizer_steps"] == 9375
    assert len(proj["rows"]) == 4
    lora = rows[("lora", "sdpa", True)]
    assert lora["trainable"] > train["ours_model"]["trainable"] and lora["lora_r"] == 64
    positive(lora, "plan_gb")
    for row in proj["rows"]:
        positive(row, "one_gpu_hours", "eight_gpus_hours")
        assert row["eight_gpus_hours"] == pytest.approx(row["one_gpu_hours"] / 8, rel=0.02, abs=0.01)

    ext = data["extraction"]
    assert [r["batch"] for r in ext["tower_alone"]] == data["args"]["tower_batches"]
    for row in ext["tower_alone"]:
        assert row["status"] == "ok"
        positive(row, "frames_per_s")
    videos = ext["extractor"]
    assert videos["status"] == "ok", videos
    positive(videos, "videos_per_s", "load_s")
    assert len(videos["clips"]) == len(data["args"]["clip_seconds"])
    for clip in videos["clips"]:
        positive(clip, "frames", "extract_s", "decode_only_s")
        assert clip["feature_shape"] == [videos["num_frames"] + 256, ext["tower"]["hidden_size"]]
    job = videos["folder_job"]
    assert job["extracted"] == job["videos"] and job["failed"] == 0
    positive(job, "videos_per_s", "decoded_frames_per_s")
    positive(
        videos["projection"],
        "one_video_api_s_per_video",
        "folder_job_videos_per_s",
        "train_videos_one_gpu_hours_folder_job",
        "train_videos_eight_gpus_hours_folder_job",
    )


def test_gpu_small_writes_every_section(tmp_path):
    """bf16 as on a GPU: ours with a bf16 backbone, the straightforward step fp32, both under bf16 autocast."""
    out = tmp_path / "gpu.json"
    proc = run_script("bench/gpu.py", "--small", "--dtype", "bf16", "--out", str(out))
    data = json.loads(out.read_text())
    check_gpu_json(data)
    assert data["training"]["compute_dtype"] == "bf16"
    for text in ("straightforward / ours", "tower alone", "folder job", "projection"):
        assert text in proc.stdout, proc.stdout
    ratio = data["training"]["ratio_straightforward_over_ours"]
    assert (f"step time x{ratio['step_time']:.2f}, peak memory x{ratio['peak_memory']:.2f}") in proc.stdout


@pytest.mark.gpu
def test_gpu_small_on_cuda(tmp_path):
    """The same tiny run on a CUDA GPU: bf16 autocast, fused AdamW, CUDA memory and the fp16 tower."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "gpu.json"
    run_script("bench/gpu.py", "--small", "--device", "cuda", "--out", str(out))
    data = json.loads(out.read_text())
    check_gpu_json(data)
    assert data["training"]["compute_dtype"] == "bf16" and data["env"]["peak_source"]


def test_train_step_small_prints_both_variants(tmp_path):
    out = tmp_path / "train_step.json"
    proc = run_script("bench/train_step.py", "--small", "--steps", "2", "--warmup", "1", "--json", str(out))
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ours ") for line in lines), proc.stdout
    assert any(line.startswith("straightforward ") for line in lines), proc.stdout
    assert "straightforward / ours: step time x" in proc.stdout
    assert "CPU fp32 is used here" in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ours", "straightforward"}
    for r in results.values():
        positive(r, "step_ms", "tokens_per_s", "samples_per_s", "peak_mib", "trainable")
    o, s = results["ours"], results["straightforward"]
    printed = (
        f"straightforward / ours: step time x{s['step_ms'] / o['step_ms']:.2f}, peak memory "
        f"x{s['peak_mib'] / o['peak_mib']:.2f}"
    )
    assert printed in proc.stdout, proc.stdout  # the printed comparison is the measured rows' ratio
    assert f"trainable parameters x{s['trainable'] / o['trainable']:.0f}" in proc.stdout
    # ours trains the projector and 2 rows; the straightforward way the projector and the whole embedding
    assert results["ours"]["trainable"] == 2 * 64 + 64 * 32 + 64
    assert results["straightforward"]["trainable"] == 32006 * 64 + 64 * 32 + 64
