"""Throughput and latency of ``video-chatgpt serve`` for 1, 4 and 16 concurrent clients: batched (``--max_batch_size
16``) against one request at a time (``--max_batch_size 1``), side by side in one run.

    .venv/bin/python bench/serve.py                      # tiny sample model on CPU, 32 new tokens per answer
    .venv/bin/python bench/serve.py --clients 1 4 16 --rounds 3 --max_tokens 64 --json out.json

The model is the sample's tiny LLaVA-like base (random weights, built in a temporary folder: it answers until
``--max_tokens``, so every answer has the same length); the videos are precomputed feature files of the model's shape
(the ``video_features`` part), so the numbers are the server's: HTTP, queueing, batching and generation, not video
decoding. Each of the N clients (threads with the official ``openai`` client, greedy) sends ``--rounds`` requests one
after the other, each about its own video. Both servers run in this process on 127.0.0.1 (uvicorn in a thread), one
after the other, over the same loaded model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from video_chatgpt.inference.engine import load_engine  # noqa: E402
from video_chatgpt.sample.models import make_sample_models  # noqa: E402
from video_chatgpt.serve.app import Server, create_app  # noqa: E402
from video_chatgpt.serve.batching import LocalBackend  # noqa: E402

MODEL = "bench"
QUESTION = "What colour is the moving object in the video?"


class Running:
    """A server in a thread of this process on a free 127.0.0.1 port."""

    def __init__(self, server: Server):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = server
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error")
        )
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)

    def __enter__(self) -> Running:
        self._thread.start()
        while not self._uvicorn.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=30)
        self.server.backend.close()


def run_clients(url: str, files: list[Path], clients: int, rounds: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``rounds`` requests in turn; latencies, throughput and token counts."""
    from openai import OpenAI

    api = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=0)

    def client(k: int) -> list[tuple[float, int]]:
        out = []
        for r in range(rounds):
            path = files[(k * rounds + r) % len(files)]
            message = {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "video_features", "video_features": {"url": path.name}},
                ],
            }
            start = time.perf_counter()
            reply = api.chat.completions.create(model=MODEL, messages=[message], temperature=0, max_tokens=max_tokens)
            out.append((time.perf_counter() - start, reply.usage.completion_tokens))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for per_client in pool.map(client, range(clients)) for x in per_client]
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in results)
    return {
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(n for _, n in results) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client, one after the other")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--max_batch_size", type=int, default=16, help="of the batched server")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        models = make_sample_models(Path(tmp) / "models")
        engine = load_engine(models["llava"], None, device="cpu", vision_tower=str(models["vision_tower"]))
        shape = (engine.extractor.num_tokens, engine.model.config.mm_hidden_size)  # what a video of the tower gives
        media = Path(tmp) / "media"
        media.mkdir()
        files = []
        for k in range(max(args.clients) * args.rounds):
            files.append(media / f"v{k}.npy")
            np.save(files[-1], np.random.default_rng(k).standard_normal(shape).astype(np.float16))
        rows = []
        for clients in args.clients:
            row = {"clients": clients}
            for mode, batch in (("one_at_a_time", 1), ("batched", args.max_batch_size)):
                server = Server(LocalBackend(engine, batch, max_queue=1024), MODEL, media)
                with Running(server) as running:
                    run_clients(running.url, files[:1], 1, 1, 2)  # warm-up (first-call costs)
                    row[mode] = run_clients(running.url, files, clients, args.rounds, args.max_tokens)
                    row[mode]["batches"] = server.backend.load()["batches"] - 1
            rows.append(row)
    print(
        f"\nvideo-chatgpt serve on CPU ({os.cpu_count()} cores), tiny sample model, {args.max_tokens} new tokens per "
        f"answer, {args.rounds} requests per client, video tokens {shape[0]}\n"
    )
    head = f"{'clients':>7} | {'mode':<13} | {'req/s':>6} | {'tokens/s':>8} | {'p50 s':>6} | {'p95 s':>6} | batches"
    print(head)
    print("-" * len(head))
    for row in rows:
        for mode in ("one_at_a_time", "batched"):
            r = row[mode]
            print(
                f"{row['clients']:>7} | {mode:<13} | {r['requests_per_s']:6.2f} | {r['tokens_per_s']:8.1f} | "
                f"{r['p50_s']:6.2f} | {r['p95_s']:6.2f} | {r['batches']} for {r['requests']} requests"
            )
        speedup = row["batched"]["requests_per_s"] / row["one_at_a_time"]["requests_per_s"]
        print(f"{'':>7} | batched / one at a time: throughput x{speedup:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
