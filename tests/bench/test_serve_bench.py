"""``bench/serve.py`` end to end in a small mode: both servers measured at each concurrency, every number positive,
the batched server's batches fewer than its requests once several clients are at it, one-at-a-time's never."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO


def test_serve_bench_small(tmp_path):
    out = tmp_path / "serve.json"
    argv = ["bench/serve.py", "--clients", "1", "4", "--rounds", "1", "--max_tokens", "4", "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["clients"] for row in rows] == [1, 4]
    for row in rows:
        for mode in ("one_at_a_time", "batched"):
            assert all(row[mode][key] > 0 for key in ("wall_s", "requests_per_s", "tokens_per_s", "p50_s", "p95_s"))
            assert row[mode]["requests"] == row["clients"]
        assert row["one_at_a_time"]["batches"] == row["clients"]
    assert rows[1]["batched"]["batches"] < 4
    assert "batched / one at a time: throughput x" in proc.stdout
