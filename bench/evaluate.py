"""Judge throughput: ``video-chatgpt evaluate`` with one worker (the serial way) vs ``--num_workers`` concurrent ones.

    .venv/bin/python bench/evaluate.py                      # 500 records, 50 ms per reply, 1 vs 16 workers
    .venv/bin/python bench/evaluate.py --records 200 --delay 0.2 --workers 32

A local judge server (the sample's rule-based one, ``video_chatgpt.sample.benchmark``, with a fixed reply delay
standing in for a remote judge's latency) answers on 127.0.0.1; both runs go through the real client over HTTP and
write their own output folders. Prints the wall time of each, the serial lower bound (records x delay) and the
speed-up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from video_chatgpt.cli import main as cli_main  # noqa: E402
from video_chatgpt.sample.benchmark import make_judge_server  # noqa: E402


def run(api_base: str, preds: Path, out: Path, workers: int) -> float:
    os.environ.pop("VCG_BENCH_NO_KEY", None)
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        status = cli_main(
            [
                "evaluate",
                "--task",
                "correctness",
                "--pred_path",
                str(preds),
                "--output_dir",
                str(out),
                "--api_base",
                api_base,
                "--judge_model",
                "sample-rule-judge",
                "--api_key_env",
                "VCG_BENCH_NO_KEY",
                "--num_workers",
                str(workers),
            ]
        )
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"evaluate failed with status {status}")
    judged = json.loads((out / "results.json").read_text())["criteria"]["correctness"]["judged"]
    return wall, judged


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=500)
    p.add_argument("--delay", type=float, default=0.05, help="seconds the judge takes per reply")
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    server = make_judge_server("127.0.0.1", 0, delay=args.delay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api_base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preds = tmp / "preds.json"
        preds.write_text(
            json.dumps(
                [
                    {
                        "video_name": f"v{i}",
                        "Q": f"question {i}?",
                        "A": "The object is red.",
                        "pred": "The object is red." if i % 2 else "A blue circle.",
                    }
                    for i in range(args.records)
                ]
            )
        )
        serial, n1 = run(api_base, preds, tmp / "serial", 1)
        parallel, n2 = run(api_base, preds, tmp / "parallel", args.workers)
    server.shutdown()
    bound = args.records * args.delay
    print(f"{args.records} records, judge reply delay {args.delay * 1000:.0f} ms (serial lower bound {bound:.1f} s)")
    print(f"  --num_workers 1             {serial:7.1f} s   ({n1} judged)")
    print(
        f"  --num_workers {args.workers:<3d}           {parallel:7.1f} s   ({n2} judged)   "
        f"speed-up {serial / parallel:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
