"""bench/extract_realsize.py in its smoke mode (2-second clips): both methods keep equal frames (it checks), the
printed speed-ups are the rows' own ratios, and the projection follows from the per-frame costs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_realsize_bench_smoke(tmp_path):
    out = tmp_path / "realsize.json"
    cmd = [sys.executable, str(REPO / "bench" / "extract_realsize.py"), "--smoke", "--videos", str(tmp_path / "v")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert len(data["clips"]) == 2
    for row in data["clips"]:
        for key in ("job", "anet_density"):
            m = row[key]
            assert m["speedup"] == pytest.approx(m["straight"]["cpu_s"] / m["ours"]["cpu_s"])
            assert m["straight"]["frames_per_cpu_s"] == pytest.approx(row["frames"] / m["straight"]["cpu_s"])
    proj = data["projection"]
    assert proj["videos"] == 13_303 and proj["frames_per_video"] == 4500 and proj["cores"] == 16
    for method in ("straight", "ours"):
        p = proj[method]
        assert p["decode_min"] == pytest.approx(13_303 * p["cpu_s_per_video"] / 16 / 60)
        assert p["job_min"] == pytest.approx(max(p["decode_min"], proj["encode_min"]))
    assert proj["encode_min"] == pytest.approx(13_303 * 100 / proj["gpu_frames_per_s"] / 60)
    assert "PROJECTED" in data["gpu_note"] or "measured" in data["gpu_note"]
    assert "PROJECTION for the 13,303 training videos" in proc.stdout
