"""An offline benchmark on the sample world, and a rule-based judge server to score it without any network.

    video-chatgpt sample world --out runs/sample/world
    video-chatgpt sample benchmark --out runs/sample/world          # question files in runs/sample/world/benchmark
    video-chatgpt sample judge-server --port 8765 &                  # a TEST judge, not an LLM (see below)
    video-chatgpt predict --task general --gt_file runs/sample/world/benchmark/generic_qa.json \\
        --video_dir runs/sample/world/videos/test --output_dir runs/sample/preds --output_name generic \\
        --model_name_or_path <training output folder> --vision_tower runs/sample/models/clip-vit-tiny --temperature 0
    video-chatgpt evaluate --task correctness --pred_path runs/sample/preds/generic.json \\
        --output_dir runs/sample/eval --api_base http://127.0.0.1:8765/v1 --judge_model sample-rule-judge

Question files, in the original benchmarks' formats, about the held-out videos (answers known from ``truth.json``):
``generic_qa.json`` and ``temporal_qa.json`` (``video_name, Q, A``), ``consistency_qa.json`` (``video_name, Q1, Q2,
A``), and zero-shot QA in ActivityNet-QA's layout: ``qa_questions.json`` (``video_name, question, question_id``) +
``qa_answers.json`` (``answer, question_id``).

**The judge server is a deterministic test stand-in, not a language model.** It speaks the OpenAI chat-completions
protocol, reads the judge prompt it is sent, takes the ``Correct Answer`` and ``Predicted Answer`` lines and scores
their word overlap (F1 of lower-case words, times 5, rounded; for consistency the lowest of the three pairwise
overlaps; for QA ``yes`` when every word of the correct answer is in the prediction). It understands the sample's
short factual answers; its numbers say nothing about a real benchmark.
"""

from __future__ import annotations

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from video_chatgpt.args import command_parser
from video_chatgpt.constants import TEST_JUDGES
from video_chatgpt.errors import UserError
from video_chatgpt.sample.world import COLOUR_QUESTIONS, colour_answer

JUDGE_MODEL = next(iter(TEST_JUDGES))  # "sample-rule-judge"
MAX_SCORE = 5
_WORD = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------------------------ the benchmark
def benchmark_files(truths: list[dict]) -> dict[str, list[dict]]:
    """file name -> records, from the ground truth of the held-out videos (pure).

    Every question asks what the sample model can learn, the colour (it does not learn the shape or the direction;
    questions about them would only measure the judge): in the benchmarks' formats and in several wordings."""
    general, temporal, consistency, questions, answers = [], [], [], [], []
    for t in truths:
        v, c = t["video_id"], t["colour"]
        general += [
            {"video_name": v, "Q": q, "A": colour_answer(c)} for q in (COLOUR_QUESTIONS[0], COLOUR_QUESTIONS[2])
        ]
        # The object keeps its colour the whole time: the colour at the end is the colour.
        temporal.append(
            {"video_name": v, "Q": "What colour is the object at the end of the video?", "A": colour_answer(c)}
        )
        consistency.append(
            {"video_name": v, "Q1": COLOUR_QUESTIONS[0], "Q2": COLOUR_QUESTIONS[1], "A": colour_answer(c)}
        )
        for i, question in enumerate(COLOUR_QUESTIONS[:2]):
            qid = f"{v}_colour{i}"
            questions.append({"video_name": v, "question": question, "question_id": qid})
            answers.append({"answer": c, "question_id": qid})
    return {
        "generic_qa.json": general,
        "temporal_qa.json": temporal,
        "consistency_qa.json": consistency,
        "qa_questions.json": questions,
        "qa_answers.json": answers,
    }


def make_sample_benchmark(world: str | Path) -> dict[str, Path]:
    """Write the benchmark of a sample world (``video-chatgpt sample world``) into ``<world>/benchmark``."""
    world = Path(world)
    truth_file = world / "truth.json"
    if not truth_file.is_file():
        raise UserError(f"{truth_file}: no such file; make the world first: video-chatgpt sample world --out {world}")
    truths = json.loads(truth_file.read_text())["test"]
    out = world / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in benchmark_files(truths).items():
        (out / name).write_text(json.dumps(records, indent=1))
        paths[name.removesuffix(".json")] = out / name
    paths["videos"] = world / "videos" / "test"
    return paths


# ------------------------------------------------------------------------------------------ the rule-based judge
def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def overlap_f1(reference: str, prediction: str) -> float:
    """F1 of the word multisets of two answers (0 when either is empty)."""
    ref, pred = words(reference), words(prediction)
    if not ref or not pred:
        return 0.0
    remaining = list(pred)
    common = 0
    for w in ref:
        if w in remaining:
            remaining.remove(w)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _line(prompt: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (.*)$", prompt, re.MULTILINE)
    return match.group(1) if match else ""


def rule_judgement(user_prompt: str) -> str:
    """The reply (a Python dict string, as the prompts ask) for one judge prompt of the shipped prompt set."""
    answer = _line(user_prompt, "Correct Answer")
    if "Predicted Answer to Question 1" in user_prompt:
        p1, p2 = (
            _line(user_prompt, "Predicted Answer to Question 1"),
            _line(user_prompt, "Predicted Answer to Question 2"),
        )
        f1 = min(overlap_f1(answer, p1), overlap_f1(answer, p2), overlap_f1(p1, p2))
        return str({"score": round(MAX_SCORE * f1)})
    pred = _line(user_prompt, "Predicted Answer")
    f1 = overlap_f1(answer, pred)
    if "'pred' and 'score'" in user_prompt:  # zero-shot QA
        hit = bool(words(answer)) and set(words(answer)) <= set(words(pred))
        return str({"pred": "yes" if hit else "no", "score": MAX_SCORE if hit else round(MAX_SCORE * f1)})
    return str({"score": round(MAX_SCORE * f1)})


class _JudgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0  # seconds before each reply (a remote judge's latency, for benchmarks); set per server
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args):  # one line per request is noise for a judge serving thousands
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            return self._send(200, {"object": "list", "data": [{"id": JUDGE_MODEL, "object": "model"}]})
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):  # noqa: N802
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        except (ValueError, KeyError, TypeError, StopIteration):
            return self._send(400, {"error": {"message": "expected a chat-completions body with a user message"}})
        if self.delay:
            time.sleep(self.delay)
        self._send(
            200,
            {
                "id": "chatcmpl-sample",
                "object": "chat.completion",
                "created": 0,
                "model": JUDGE_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": rule_judgement(user)},
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )


def make_judge_server(host: str = "127.0.0.1", port: int = 0, delay: float = 0.0) -> ThreadingHTTPServer:
    """The rule-based judge as an HTTP server (not started: call ``serve_forever``); port 0 picks a free one;
    ``delay`` seconds before each reply."""
    handler = type("JudgeHandler", (_JudgeHandler,), {"delay": delay})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt sample benchmark --out WORLD`` | ``video-chatgpt sample judge-server [--host H] [--port N]``."""
    p = command_parser("sample", __doc__)
    p.add_argument("what", choices=["benchmark", "judge-server"])
    p.add_argument("--out", help="benchmark: the sample world folder")
    p.add_argument("--host", default="127.0.0.1", help="judge-server: address to listen on")
    p.add_argument("--port", type=int, default=8765, help="judge-server: port (0: any free one)")
    p.add_argument("--delay", type=float, default=0.0, help="judge-server: seconds before each reply (latency)")
    args = p.parse_args(argv)
    if args.what == "benchmark":
        if not args.out:
            p.error("benchmark needs --out (the sample world folder)")
        for role, path in make_sample_benchmark(args.out).items():
            print(f"{role}: {path}")
        return 0
    server = make_judge_server(args.host, args.port, args.delay)
    host, port = server.server_address[:2]
    print(
        f"sample rule-based judge (a test stand-in, not an LLM) on http://{host}:{port}/v1 as model "
        f"{JUDGE_MODEL!r}; Ctrl-C stops it",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
