"""``video-chatgpt evaluate``: score prediction files with an LLM judge (VCGBench's five criteria, zero-shot QA).

    # one criterion (the original scripts' flags work: --pred_path --output_dir --output_json --num_tasks)
    export OPENAI_API_KEY=...                     # the key is read from the environment, never from the command line
    video-chatgpt evaluate --task correctness --pred_path preds/generic.json --output_dir eval/correctness
    # all of VCGBench from the three prediction files (general answers are judged for correctness, detail, context)
    video-chatgpt evaluate --task vcgbench --pred_general preds/generic.json --pred_temporal preds/temporal.json \\
        --pred_consistency preds/consistency.json --output_dir eval/vcgbench --num_workers 8
    # zero-shot QA (MSVD / MSRVTT / TGIF / ActivityNet-QA): accuracy and score
    video-chatgpt evaluate --task qa --dataset msvd --pred_path preds/msvd_qa.json --output_dir eval/msvd
    # any OpenAI-compatible server: vLLM, llama.cpp (llama-server), Ollama
    video-chatgpt evaluate --task qa --pred_path ... --output_dir ... \\
        --api_base http://localhost:8000/v1 --judge_model Qwen/Qwen2.5-7B-Instruct

In ``--output_dir``:

* ``<criterion>.cache.jsonl``: one line per judged record, flushed as it arrives (the first line holds the judge
  settings). A rerun skips every record judged with the same messages and retries the failed ones, so a killed run
  loses at most the requests in flight; a rerun with another judge, temperature, seed or prompt set is refused.
* ``<criterion>_combined.json`` (or ``--output_json``): the original's combined file, key -> ``[reply, qa_set]``.
* ``results.json`` and ``results.md``: per criterion the mean of the raw scores with a 95% bootstrap interval, the
  original's ``int()`` mean, the published number, judged / failed / total counts and the failures with their raw
  replies; the judge model (asked and reported), the API host (never the key), temperature, seed, the sha256 of the
  prompt set, the number of requests and the wall time.

Exit status 0 when every record was judged, 1 when some failed (they are listed; a rerun retries them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.eval.judge import Judge, JudgeRefused, JudgeSettings
from video_chatgpt.eval.protocol import (
    CRITERIA,
    PROMPTS_FILE,
    PUBLISHED_QA,
    QA,
    build_messages,
    guess_qa_dataset,
    load_prompts,
    prompts_sha256,
    qa_items,
    request_sha256,
    summarize,
)
from video_chatgpt.eval.report import render_markdown, summary_lines
from video_chatgpt.files import check_output, parse_json, read_bytes_bounded, read_json, write_bytes_atomically
from video_chatgpt.llm_client import api_host, key_from_environment

DEFAULT_JUDGE = "gpt-3.5-turbo"  # the original's judge (the model named in the prompt file)
DEFAULT_API_BASE = "https://api.openai.com/v1"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
TASKS = (*CRITERIA, "vcgbench")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("evaluate", __doc__)
    p.add_argument("--task", choices=TASKS, required=True, help="what to score")
    p.add_argument("--pred_path", help="prediction file of `video-chatgpt predict` (every task but vcgbench)")
    p.add_argument("--pred_general", help="vcgbench: predictions on the general QA file (correctness/detail/context)")
    p.add_argument("--pred_temporal", help="vcgbench: predictions on the temporal QA file")
    p.add_argument("--pred_consistency", help="vcgbench: predictions on the consistency QA file")
    p.add_argument(
        "--dataset",
        choices=sorted(PUBLISHED_QA),
        help="qa: which published numbers to show (default: guessed from the file name)",
    )
    p.add_argument("--output_dir", type=Path, required=True, help="scores, results.json and the judge's replies")
    p.add_argument(
        "--output_json", type=Path, help="the combined file (default <output_dir>/<criterion>_combined.json)"
    )
    p.add_argument("--judge_model", default=DEFAULT_JUDGE, help="the judge model")
    p.add_argument("--api_base", default=DEFAULT_API_BASE, help="any OpenAI-compatible /v1 endpoint")
    p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="name of the environment variable holding the key")
    p.add_argument("--api_key", help="deprecated: visible to other users (ps, shell history); use --api_key_env")
    p.add_argument("--num_workers", type=int, default=None, help="concurrent requests (default 8)")
    p.add_argument("--num_tasks", type=int, default=None, help="the original's name for --num_workers")
    p.add_argument(
        "--judge_temperature",
        "--temperature",
        dest="temperature",
        metavar="T",
        type=float,
        default=0.0,
        help="the judge's temperature",
    )
    p.add_argument("--seed", type=int, default=0, help="sent to the judge; also seeds the bootstrap and the jitter")
    p.add_argument("--max_retries", type=int, default=5, help="retries per record (HTTP errors, timeouts, bad replies)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request in total: connect, wait, read the whole reply"
    )
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry; doubles each time")
    p.add_argument("--max_backoff", type=float, default=60.0, help="longest wait between attempts")
    return p


def resolve_api_key(args) -> str:
    if args.api_key:
        print(
            "video-chatgpt evaluate: warning: --api_key is visible to other users of this machine (ps, shell "
            "history); put the key in an environment variable and name it with --api_key_env",
            file=sys.stderr,
        )
        return args.api_key
    return key_from_environment(args.api_key_env, [api_host(args.api_base)], "video-chatgpt evaluate")


def jobs_of(args) -> list[tuple[str, Path]]:
    """(criterion, prediction file) pairs the task asks for."""
    if args.task == "vcgbench":
        files = {"general": args.pred_general, "temporal": args.pred_temporal, "consistency": args.pred_consistency}
        missing = [f"--pred_{k}" for k, v in files.items() if not v]
        if missing:
            raise UserError(
                f"--task vcgbench needs {', '.join(missing)} (the prediction files of the general, "
                f"temporal and consistency runs of `video-chatgpt predict`)"
            )
        if args.output_json:
            raise UserError(
                "--output_json names one file; with --task vcgbench each criterion's combined file is "
                "<output_dir>/<criterion>_combined.json"
            )
        general = [(name, Path(files["general"])) for name in ("correctness", "detail", "context")]
        return general + [(name, Path(files[name])) for name in ("temporal", "consistency")]
    if not args.pred_path:
        raise UserError(f"--task {args.task} needs --pred_path (a prediction file of `video-chatgpt predict`)")
    return [(args.task, Path(args.pred_path))]


def check_outputs(args, jobs: list[tuple[str, Path]]) -> None:
    """No file this run writes (results, caches, combined files) may be or hold a prediction file it reads."""
    if args.task == "vcgbench":
        inputs = {f"--pred_{k}": getattr(args, f"pred_{k}") for k in ("general", "temporal", "consistency")}
    else:
        inputs = {"--pred_path": args.pred_path}
    outputs = {"--output_dir": [args.output_dir / RESULTS_JSON, args.output_dir / RESULTS_MD]}
    for name, _ in jobs:
        outputs["--output_dir"] += [args.output_dir / f"{name}.cache.jsonl", args.output_dir / f"{name}_combined.json"]
    if args.output_json:
        outputs["--output_json"] = [args.output_json]
    for flag, paths in outputs.items():
        for path in paths:
            check_output(path, inputs, flag if flag == "--output_json" else "--output_dir file")


def read_predictions(path: Path) -> tuple[list, str]:
    if not path.is_file():
        raise UserError(f"{path}: no such prediction file (make it with `video-chatgpt predict`)")
    data = read_bytes_bounded(path)
    try:
        return parse_json(data, str(path)), hashlib.sha256(data).hexdigest()
    except UserError as exc:
        raise UserError(f"{exc}; rerun `video-chatgpt predict` to rewrite it") from None


def describe_changes(old: dict, new: dict) -> str:
    """``temperature 0.0 -> 0.7, seed 0 -> 1``: what differs between two settings dicts."""
    return ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)


class JudgeCache:
    """``<criterion>.cache.jsonl``: a header line with the judge settings, then one outcome per line.

    Each line is written with one ``write`` and flushed; a line cut by a kill can only be the last one, and it is
    dropped when the file is opened again.
    """

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.header = header
        self.outcomes: dict[str, dict] = {}  # key -> its last outcome
        if path.is_file():
            self._load()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        if complete != text:  # the tail of a line a kill interrupted: that record is judged again
            self.path.write_text(complete, encoding="utf-8")
        lines = complete.splitlines()
        try:
            header = parse_json(lines[0], str(self.path))["header"] if lines else None
        except (UserError, KeyError, TypeError):
            header = None
        if header is None:
            raise UserError(f"{self.path}: not a judge cache (no header line); delete it or use another --output_dir")
        if header != self.header:
            changed = describe_changes(header, self.header)
            raise UserError(
                f"{self.path} was judged with other settings ({changed}); use another --output_dir, or "
                f"delete the file to judge everything again"
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                outcome = parse_json(line, str(self.path))
                self.outcomes[outcome["key"]] = outcome
            except (UserError, KeyError, TypeError):
                raise UserError(
                    f"{self.path}: line {number} is not a judge record; delete the file to judge everything again"
                ) from None

    def append(self, outcome: dict) -> None:
        self._file.write(json.dumps(outcome, ensure_ascii=False) + "\n")
        self._file.flush()
        self.outcomes[outcome["key"]] = outcome

    def close(self) -> None:
        self._file.close()


def judge_all(
    judge: Judge, todo: list[tuple[str, dict, list, str]], kind: str, cache: JudgeCache, num_workers: int, desc: str
) -> None:
    """Judge ``(key, qa_set, messages, request_sha)`` items with ``num_workers`` threads; each outcome is cached as
    it arrives (in this thread). The first item goes alone: a server that cannot be reached stops the run there."""
    from tqdm import tqdm

    def one(item):
        key, qa_set, messages, sha = item
        return {"key": key, "request_sha256": sha, **judge.judge(messages, kind), "qa_set": qa_set}

    bar = tqdm(total=len(todo), desc=desc, unit="record", file=sys.stderr, disable=not todo)
    failed = 0
    try:
        if todo:
            first = one(todo[0])
            if not first["ok"] and first["reason"].startswith("connection failed"):
                raise UserError(
                    f"cannot reach the judge at {judge.settings.api_base}: {first['reason']}; check "
                    f"--api_base and that the server runs"
                )
            cache.append(first)
            failed += not first["ok"]
            bar.update(1)
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            futures = [pool.submit(one, item) for item in todo[1:]]
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    cache.append(outcome)
                    failed += not outcome["ok"]
                    bar.update(1)
                    bar.set_postfix(failed=failed)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    for name in ("num_workers", "num_tasks", "max_retries"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "max_retries" else 1):
            raise UserError(f"--{name} must be >= {0 if name == 'max_retries' else 1}, got {value}")
    if not 0 < args.timeout < float("inf"):
        raise UserError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    for name in ("temperature", "backoff", "max_backoff"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"--{name} must be a finite number >= 0, got {value}")
    if not str(args.api_base).lower().startswith(("http://", "https://")):
        raise UserError(f"--api_base {args.api_base}: an http:// or https:// address of an OpenAI-compatible /v1 API")
    num_workers = args.num_workers or args.num_tasks or 8
    jobs = jobs_of(args)
    check_outputs(args, jobs)  # before anything is written
    host = api_host(args.api_base)
    api_key = resolve_api_key(args)
    settings = JudgeSettings(
        args.judge_model,
        args.api_base,
        args.temperature,
        args.seed,
        args.timeout,
        args.max_retries,
        args.backoff,
        args.max_backoff,
    )
    judge = Judge(settings, api_key, jitter_seed=args.seed)
    prompts, prompt_sha = load_prompts(), prompts_sha256()
    judge_info = {"model": args.judge_model, "api_host": host, "temperature": args.temperature, "seed": args.seed}
    results_path = args.output_dir / RESULTS_JSON
    results = {
        "judge": {**judge_info, "reported_models": []},
        "prompts": {"file": PROMPTS_FILE, "sha256": prompt_sha},
        "criteria": {},
    }
    if results_path.is_file():
        try:
            previous = read_json(results_path, expect=dict)
            before = {**{k: previous["judge"][k] for k in judge_info}, "prompts_sha256": previous["prompts"]["sha256"]}
        except (UserError, KeyError, TypeError):
            raise UserError(
                f"{results_path}: not a results file of `video-chatgpt evaluate`; delete it or use another --output_dir"
            ) from None
        now = {**judge_info, "prompts_sha256": prompt_sha}
        if before != now:
            raise UserError(
                f"{results_path} holds results judged with other settings "
                f"({describe_changes(before, now)}); use another --output_dir"
            )
        results["criteria"] = previous["criteria"]
        results["judge"]["reported_models"] = previous["judge"].get("reported_models", [])

    start, reused = time.perf_counter(), 0
    for name, pred_path in jobs:
        criterion = CRITERIA[name]
        t0, requests0 = time.perf_counter(), judge.requests
        records, pred_sha = read_predictions(pred_path)
        items = qa_items(criterion.kind, records, str(pred_path))
        prompt = prompts[criterion.prompt_key]
        header = {"criterion": name, "prompt_key": criterion.prompt_key, "prompts_sha256": prompt_sha, **judge_info}
        cache = JudgeCache(args.output_dir / f"{name}.cache.jsonl", header)
        try:
            prepared = [
                (key, qa_set, msgs, request_sha256(msgs))
                for key, qa_set in items
                for msgs in [build_messages(prompt, criterion.kind, qa_set)]
            ]
            cached = {
                key
                for key, _, _, sha in prepared
                if cache.outcomes.get(key, {}).get("ok") and cache.outcomes[key].get("request_sha256") == sha
            }
            todo = [p for p in prepared if p[0] not in cached]
            reused += len(cached)
            print(
                f"{name}: {len(items)} records in {pred_path}: {len(cached)} already judged, {len(todo)} to judge",
                file=sys.stderr,
                flush=True,
            )
            judge_all(judge, todo, criterion.kind, cache, num_workers, name)
        except JudgeRefused as exc:
            raise UserError(
                f"{exc}; check --judge_model, --api_base and the key in ${args.api_key_env} (the records "
                f"judged so far are kept in {cache.path})"
            ) from None
        finally:
            cache.close()
        outcomes = [cache.outcomes[key] for key, _ in items]
        combined = {o["key"]: [o["reply"], o["qa_set"]] for o in outcomes if o["ok"]}
        combined_path = args.output_json or args.output_dir / f"{name}_combined.json"
        write_bytes_atomically(combined_path, json.dumps(combined, indent=1, ensure_ascii=False).encode())
        summary = summarize(criterion.kind, outcomes, seed=args.seed)
        if criterion.kind == QA:
            summary["dataset"] = args.dataset or guess_qa_dataset(str(pred_path))
        summary.update(
            pred_path=str(pred_path),
            pred_sha256=pred_sha,
            combined_json=str(combined_path),
            requests=judge.requests - requests0,
            wall_time_s=round(time.perf_counter() - t0, 3),
        )
        results["criteria"][name] = summary

    earlier = results["judge"]["reported_models"]
    earlier = {m for m in earlier if isinstance(m, str)} if isinstance(earlier, list) else set()  # text only
    results["judge"]["reported_models"] = sorted(earlier | judge.reported_models)
    results["run"] = {
        "requests": judge.requests,
        "reused": reused,
        "num_workers": num_workers,
        "max_retries": args.max_retries,
        "timeout_s": args.timeout,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    write_bytes_atomically(results_path, json.dumps(results, indent=1, ensure_ascii=False).encode())
    markdown = render_markdown(results)
    write_bytes_atomically(args.output_dir / RESULTS_MD, markdown.encode())
    print("\n".join(summary_lines(results)) + f"\nreport: {args.output_dir / RESULTS_MD}", flush=True)
    failed = sum(results["criteria"][name]["failed"] for name, _ in jobs)
    if failed:
        print(
            f"video-chatgpt evaluate: {failed} records have no valid judgement (listed under 'failures' in "
            f"{results_path}); run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt evaluate"))
