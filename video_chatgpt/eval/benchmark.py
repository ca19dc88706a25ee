"""``video-chatgpt benchmark``: predict + evaluate every benchmark file of a folder, one table at the end.

    export OPENAI_API_KEY=...                       # or a local judge: --api_base http://localhost:8000/v1
    video-chatgpt benchmark --benchmark_dir benchmarks/ --video_dir videos/ \\
        --model_name_or_path ./Video-ChatGPT_7B-1.1_Checkpoints --output_dir bench_out --judge_model gpt-3.5-turbo
    # offline, on the sample world (a rule-based TEST judge, not an LLM):
    video-chatgpt sample benchmark --out runs/sample/world
    video-chatgpt sample judge-server --port 8765 &
    video-chatgpt benchmark --benchmark_dir runs/sample/world/benchmark --video_dir runs/sample/world/videos/test \\
        --model_name_or_path runs/quickstart/Video-ChatGPT_7B-1.1_Checkpoints --vision_tower runs/quickstart/models/clip-vit-tiny \\
        --output_dir runs/sample/bench --api_base http://127.0.0.1:8765/v1 --judge_model sample-rule-judge

What it finds in ``--benchmark_dir`` (and in its direct subfolders, the original's layout such as
``MSVD_Zero_Shot_QA/test_q.json``):

* ``generic_qa.json``, ``temporal_qa.json``, ``consistency_qa.json``: VCGBench; the general answers are judged for
  correctness, detail and context, the others for temporal understanding and consistency;
* zero-shot QA sets, a question file and its answer file in ActivityNet-QA's format: ``X_q.json`` + ``X_a.json`` or
  ``Xquestions.json`` + ``Xanswers.json``; the dataset (msvd, msrvtt, tgif, activitynet) is read from the names, for
  the published numbers beside ours. A subfolder with a ``videos`` folder of its own is answered from that folder.

Each step is the command of its own (``video-chatgpt predict``, ``video-chatgpt evaluate``) with the same files:
predictions in ``<output_dir>/preds``, judgements in ``<output_dir>/eval/<set>``, so a killed run resumes where it
stopped (both steps resume) and every file can be looked at or rescored alone. The model is loaded once, and only
when some answer is missing. At the end ``benchmark.md`` / ``benchmark.json`` gather every set's numbers. Exit status
0 when everything was predicted and judged; 1 when something is missing (the rest still runs; rerun to fill in).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.eval import evaluate
from video_chatgpt.eval.evaluate import DEFAULT_API_BASE, DEFAULT_JUDGE, RESULTS_JSON
from video_chatgpt.eval.protocol import CRITERIA, PUBLISHED_QA, PUBLISHED_VCGBENCH, guess_qa_dataset
from video_chatgpt.eval.report import num, published_cell
from video_chatgpt.files import read_json, write_json_atomically, write_text_atomically
from video_chatgpt.inference import predict
from video_chatgpt.inference.engine import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE
from video_chatgpt.inference.flags import add_model_flags, model_flag_problem, model_flags_argv

VCGBENCH_FILES = {  # file name -> (predict task, prediction name, the criteria judged on its answers)
    "generic_qa.json": ("general", "generic", ("correctness", "detail", "context")),
    "temporal_qa.json": ("temporal", "temporal", ("temporal",)),
    "consistency_qa.json": ("consistency", "consistency", ("consistency",)),
}
QA_PAIR = (
    (re.compile(r"^(?P<stem>.*)_q\.json$"), "_a.json"),
    (re.compile(r"^(?P<stem>.*)questions\.json$"), "answers.json"),
)
SUMMARY_JSON, SUMMARY_MD = "benchmark.json", "benchmark.md"
SUMMARY_COUNTS = ("mean", "mean_int", "judged", "failed", "total")  # of each criterion's results, in each row


@dataclass(frozen=True)
class BenchmarkSet:
    """One prediction file to make and the criteria to judge it for."""

    label: str  # prediction name and eval folder name: "generic", "msvd_qa", ...
    task: str  # `predict --task`
    criteria: tuple[str, ...]  # `evaluate --task` for each (QA sets: ("qa",))
    files: tuple[Path, ...]  # (gt_file,) or (questions, answers)
    video_dir: Path | None  # None: the command's --video_dir
    dataset: str | None = None  # QA: msvd / msrvtt / tgif / activitynet, when the names say


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "qa"


def find_sets(folder: Path, names: list[str], prefix: str = "") -> list[BenchmarkSet]:
    """The benchmark sets among the file ``names`` of one folder (pure; ``prefix`` names a subfolder)."""
    present = set(names)
    own_videos = folder / "videos" if prefix else None
    sets = []
    for name, (task, pred_name, criteria) in VCGBENCH_FILES.items():
        if name in present:
            label = f"{_label(prefix)}_{pred_name}" if prefix else pred_name
            sets.append(BenchmarkSet(label, task, criteria, (folder / name,), own_videos))
    for name in sorted(present):
        for pattern, answer_suffix in QA_PAIR:
            match = pattern.match(name)
            if not match or f"{match['stem']}{answer_suffix}" not in present:
                continue
            stem = match["stem"]
            dataset = guess_qa_dataset(f"{prefix}/{stem}")
            base = _label(f"{prefix}_{stem}" if prefix else stem) if (prefix or stem) else "qa"
            label = base if base.endswith("qa") else f"{base}_qa"
            task = f"{dataset}_qa" if dataset else "activitynet_qa"  # all four share ActivityNet-QA's format
            sets.append(
                BenchmarkSet(
                    label, task, ("qa",), (folder / name, folder / f"{stem}{answer_suffix}"), own_videos, dataset
                )
            )
    return sets


def discover(benchmark_dir: Path) -> list[BenchmarkSet]:
    """Every set in ``benchmark_dir`` and its direct subfolders; refuses a folder with none, or two sets of one name."""
    if not benchmark_dir.is_dir():
        raise UserError(f"--benchmark_dir {benchmark_dir}: no such folder")
    sets = find_sets(benchmark_dir, [p.name for p in benchmark_dir.iterdir() if p.is_file()])
    for sub in sorted(p for p in benchmark_dir.iterdir() if p.is_dir() and p.name != "videos"):
        sets += find_sets(sub, [p.name for p in sub.iterdir() if p.is_file()], prefix=sub.name)
    if not sets:
        raise UserError(
            f"--benchmark_dir {benchmark_dir}: no benchmark file found (expected generic_qa.json, "
            f"temporal_qa.json, consistency_qa.json, or QA pairs X_q.json + X_a.json / "
            f"Xquestions.json + Xanswers.json, there or one folder down)"
        )
    labels = [s.label for s in sets]
    clashes = sorted({x for x in labels if labels.count(x) > 1})
    if clashes:
        raise UserError(
            f"--benchmark_dir {benchmark_dir}: two sets would write the same files ({', '.join(clashes)}); rename one"
        )
    return sets


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("benchmark", __doc__)
    p.add_argument("--benchmark_dir", type=Path, required=True, help="folder of question files (see above)")
    p.add_argument("--output_dir", type=Path, required=True, help="predictions, scores and results.md")
    p.add_argument("--video_dir", type=Path, help="the videos (a set's subfolder 'videos' wins for that set)")
    p.add_argument("--features_dir", type=Path, help="precomputed feature files instead of (or before) videos")
    add_model_flags(p)
    g = p.add_argument_group("generation (as `video-chatgpt predict`)")
    g.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy (deterministic)")
    g.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens")
    g.add_argument("--seed", type=int, default=0, help="generation seed (sample i: seed + i) and the judge's seed")
    g = p.add_argument_group("the judge (as `video-chatgpt evaluate`)")
    g.add_argument("--judge_model", default=DEFAULT_JUDGE, help="the judge model")
    g.add_argument("--api_base", default=DEFAULT_API_BASE, help="any OpenAI-compatible /v1 endpoint")
    g.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--num_workers", type=int, help="concurrent judge requests (default 8)")
    g.add_argument("--judge_temperature", type=float, default=0.0, help="the judge's temperature")
    g.add_argument("--max_retries", type=int, help="attempts per judge request")
    g.add_argument("--timeout", type=float, help="seconds per judge request, in all")
    return p


def _flags(args, names: tuple[str, ...]) -> list[str]:
    """``--name value`` for each flag given (None: left to the command's own default)."""
    out = []
    for name in names:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name}", str(value)]
    return out


GENERATION_FLAGS = ("temperature", "max_new_tokens", "seed")
JUDGE_FLAGS = ("judge_model", "api_base", "api_key_env", "num_workers", "max_retries", "timeout", "seed")


def predict_argv(args, s: BenchmarkSet) -> list[str]:
    video_dir = s.video_dir if s.video_dir is not None and s.video_dir.is_dir() else args.video_dir
    if len(s.files) == 1:
        argv = ["--task", s.task, "--gt_file", str(s.files[0])]
    else:
        argv = ["--task", s.task, "--gt_file_question", str(s.files[0]), "--gt_file_answers", str(s.files[1])]
    argv += ["--video_dir", str(video_dir)] if video_dir else []
    argv += ["--features_dir", str(args.features_dir)] if args.features_dir else []
    argv += ["--output_dir", str(args.output_dir / "preds"), "--output_name", s.label]
    return argv + model_flags_argv(args) + _flags(args, GENERATION_FLAGS)


def evaluate_argv(args, s: BenchmarkSet, criterion: str) -> list[str]:
    argv = ["--task", criterion, "--pred_path", str(args.output_dir / "preds" / f"{s.label}.json")]
    argv += ["--dataset", s.dataset] if s.dataset else []
    argv += ["--output_dir", str(args.output_dir / "eval" / s.label), "--temperature", str(args.judge_temperature)]
    return argv + _flags(args, JUDGE_FLAGS)


def summary_rows(sets: list[BenchmarkSet], results: dict[str, dict]) -> list[dict]:
    """One row per judged criterion: set, criterion, our numbers, the published ones, counts (pure)."""
    rows = []
    for s in sets:
        criteria = results.get(s.label, {}).get("criteria", {})
        for criterion in s.criteria:
            r = criteria.get(criterion)
            if r is None:
                rows.append({"set": s.label, "criterion": criterion, "missing": True})
                continue
            row = {"set": s.label, "criterion": criterion, **{k: r[k] for k in SUMMARY_COUNTS}}
            if criterion == "qa":
                published = PUBLISHED_QA.get(s.dataset or "", (None, None))
                row.update(
                    accuracy=r["accuracy"],
                    dataset=s.dataset,
                    published_accuracy=published[0],
                    published_score=published[1],
                )
            else:
                row["published"] = PUBLISHED_VCGBENCH.get(criterion)
            rows.append(row)
    return rows


def render_summary(rows: list[dict], judge: str) -> str:
    lines = [
        "# Benchmark",
        "",
        f"Judge `{judge}`. Per set: `eval/<set>/results.md` (95% intervals, failures).",
        "",
        "| set | criterion | ours | int() | published | accuracy (%) | published acc. | judged | failed | total |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['set']} | {r['criterion']} | not judged | | | | | | | |")
            continue
        title = (
            "QA" + (f" ({r['dataset']})" if r.get("dataset") else "")
            if r["criterion"] == "qa"
            else CRITERIA[r["criterion"]].title
        )
        published = r.get("published_score") if r["criterion"] == "qa" else r.get("published")
        lines.append(
            f"| {r['set']} | {title} | {num(r['mean'])} | {num(r['mean_int'])} | {published_cell(published, judge)} | "
            f"{num(r.get('accuracy'), 1)} | {published_cell(r.get('published_accuracy'), judge, 1)} | {r['judged']} | "
            f"{r['failed']} | {r['total']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.video_dir is None and args.features_dir is None:
        raise UserError("give --video_dir (videos) or --features_dir (precomputed feature files)")
    problem = model_flag_problem(args)  # before a folder is made (the model loads later, when needed)
    if problem:
        raise UserError(problem)
    sets = discover(args.benchmark_dir)
    print(f"{len(sets)} sets in {args.benchmark_dir}: " + ", ".join(f"{s.label} ({s.task})" for s in sets), flush=True)
    # One model for every set, loaded the first time a set has something to answer.
    get_engine = functools.cache(lambda: predict.load_predict_engine(args))
    status, results = 0, {}
    for s in sets:
        print(f"\n== {s.label}: predict ({s.task})", flush=True)
        status |= predict.main(predict_argv(args, s), get_engine=get_engine)
        if not (args.output_dir / "preds" / f"{s.label}.json").is_file():
            continue
        for criterion in s.criteria:
            print(f"== {s.label}: evaluate {criterion}", flush=True)
            status |= evaluate.main(evaluate_argv(args, s, criterion))
        results_file = args.output_dir / "eval" / s.label / RESULTS_JSON
        if results_file.is_file():
            results[s.label] = read_json(results_file, expect=dict)
    rows = summary_rows(sets, results)
    summary = {
        "benchmark_dir": str(args.benchmark_dir),
        "model_name": args.model_name,
        "judge_model": args.judge_model,
        "sets": [s.label for s in sets],
        "rows": rows,
    }
    write_json_atomically(args.output_dir / SUMMARY_JSON, summary, indent=1)
    markdown = render_summary(rows, args.judge_model)
    write_text_atomically(args.output_dir / SUMMARY_MD, markdown)
    print("\n" + markdown)
    if status or any(r.get("missing") for r in rows):
        print(
            "video-chatgpt benchmark: some answers or judgements are missing (see above); run the same command "
            "again to fill them in",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt benchmark"))
