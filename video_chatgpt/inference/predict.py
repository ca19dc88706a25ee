"""``video-chatgpt predict``: batch prediction over the benchmark question files, in the evaluators' format.

    # correctness / detail / context (one gt file) and temporal: objects with video_name, Q, A -> adds "pred"
    video-chatgpt predict --task general --gt_file generic_qa.json --video_dir videos/ \\
        --output_dir preds --output_name correctness --model-name LLaVA-7B-Lightening-v1-1 \\
        --projection_path video_chatgpt-7B.bin
    # consistency: video_name, Q1, Q2, A -> adds "pred1", "pred2"
    video-chatgpt predict --task consistency --gt_file consistency_qa.json ...
    # ActivityNet-QA: questions (video_name, question, question_id) + answers (answer), matched by question_id
    video-chatgpt predict --task activitynet_qa --gt_file_question test_q.json --gt_file_answers test_a.json ...

Output: ``{output_dir}/{output_name}.json``, a list of the input objects plus their predictions. ActivityNet-QA
records are written with the keys the judge reads (``video_name``, ``Q``, ``A``, ``pred``, plus ``question_id``):
the original wrote ``id/question/answer`` and its evaluator then failed on them.

* Resumable: a rerun keeps the predictions already in the output file and does only the rest; the file is
  rewritten atomically every ``--save_every`` samples.
* A missing video is never replaced by another: the video is looked for as ``{video_dir}/{video_name}{ext}`` for
  ext in ``.mp4 .avi .mov .mkv .webm`` (or ``{features_dir}/{video_name}.pkl|.npy``); samples without one are listed
  with the paths tried in ``{output_name}.errors.json``, the others are predicted, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from video_chatgpt.data.conversation import TEMPLATES
from video_chatgpt.features.store import FEATURE_SUFFIXES, atomic_write_bytes, load_features

logger = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


# ------------------------------------------------------------------------------------------------ records (pure)
def load_samples(task: str, gt_file=None, gt_file_question=None, gt_file_answers=None) -> list[dict]:
    """The question records of a task, each with a stable ``key`` for resuming and the questions to ask."""
    if task in ("general", "consistency"):
        if gt_file is None:
            raise ValueError(f"--task {task} needs --gt_file")
        items = _read_list(gt_file)
        need = ("video_name", "Q", "A") if task == "general" else ("video_name", "Q1", "Q2", "A")
        samples = []
        for i, item in enumerate(items):
            missing = [k for k in need if k not in item]
            if missing:
                raise ValueError(f"{gt_file}: item {i} lacks {missing}")
            samples.append({**item, "key": i})
        return samples
    if task == "activitynet_qa":
        if gt_file_question is None or gt_file_answers is None:
            raise ValueError("--task activitynet_qa needs --gt_file_question and --gt_file_answers")
        questions, answers = _read_list(gt_file_question), _read_list(gt_file_answers)
        by_id = {a["question_id"]: a for a in answers if "question_id" in a}
        samples = []
        for i, q in enumerate(questions):
            qid = q.get("question_id", i)
            answer = by_id.get(qid)
            if answer is None:  # answer files of the original pair by list position
                if i >= len(answers):
                    raise ValueError(f"{gt_file_answers}: no answer for question {i} (question_id {qid!r})")
                answer = answers[i]
            samples.append({"video_name": q["video_name"], "Q": q["question"], "A": answer["answer"],
                            "question_id": qid, "key": qid})
        return samples
    raise ValueError(f"unknown task {task!r}")


def _read_list(path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list")
    return data


def questions_of(task: str, sample: dict) -> dict[str, str]:
    """output key -> question: ``{"pred": Q}`` or, for consistency, ``{"pred1": Q1, "pred2": Q2}``."""
    return {"pred1": sample["Q1"], "pred2": sample["Q2"]} if task == "consistency" else {"pred": sample["Q"]}


def find_source(video_name: str, video_dir: Path | None, features_dir: Path | None) -> tuple[Path | None, list[str]]:
    """The video (or feature) file of a sample, and every path tried."""
    tried = []
    if features_dir is not None:
        for ext in FEATURE_SUFFIXES:
            path = features_dir / f"{video_name}{ext}"
            tried.append(str(path))
            if path.is_file():
                return path, tried
    if video_dir is not None:
        for ext in VIDEO_EXTENSIONS:
            path = video_dir / f"{video_name}{ext}"
            tried.append(str(path))
            if path.is_file():
                return path, tried
    return None, tried


# ---------------------------------------------------------------------------------------------------- the job
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="video-chatgpt predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["general", "consistency", "activitynet_qa"], default="general")
    p.add_argument("--gt_file")
    p.add_argument("--gt_file_question")
    p.add_argument("--gt_file_answers")
    p.add_argument("--video_dir", type=Path)
    p.add_argument("--features_dir", type=Path, help="precomputed feature files instead of (or before) videos")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--output_name", required=True)
    p.add_argument("--model-name", "--model_name", dest="model_name", required=True)
    p.add_argument("--projection_path", default=None)
    p.add_argument("--conv-mode", "--conv_mode", dest="conv_mode", default="video-chatgpt_v1", choices=sorted(TEMPLATES))
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max_new_tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of sample k is seed + k")
    p.add_argument("--vision_tower", default=None)
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--save_every", type=int, default=10)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.video_dir is None and args.features_dir is None:
        raise SystemExit("give --video_dir or --features_dir")
    samples = load_samples(args.task, args.gt_file, args.gt_file_question, args.gt_file_answers)
    out_path = args.output_dir / f"{args.output_name}.json"
    err_path = args.output_dir / f"{args.output_name}.errors.json"
    done = {r["key"]: r for r in (_read_list(out_path) if out_path.is_file() else [])}
    todo = [s for s in samples if s["key"] not in done]
    print(f"{len(samples)} samples: {len(done)} already predicted in {out_path}, {len(todo)} to do", flush=True)

    from video_chatgpt.inference.engine import load_engine

    engine = load_engine(args.model_name, args.projection_path, device=args.device, vision_tower=args.vision_tower,
                         num_frames=args.num_frames, conv_mode=args.conv_mode) if todo else None
    errors = []

    def save() -> None:
        ordered = [done[s["key"]] for s in samples if s["key"] in done]
        atomic_write_bytes(out_path, json.dumps(ordered, indent=1, ensure_ascii=False).encode())

    from tqdm import tqdm

    for k, sample in enumerate(tqdm(todo, desc="predict", unit="sample", disable=not todo)):
        source, tried = find_source(sample["video_name"], args.video_dir, args.features_dir)
        if source is None:
            errors.append({"key": sample["key"], "video_name": sample["video_name"], "reason": "video not found",
                           "tried": tried})
            continue
        features = load_features(source) if source.suffix in FEATURE_SUFFIXES else engine.video_features(source)
        record = {key: value for key, value in sample.items() if key != "key"}
        for out_key, question in questions_of(args.task, sample).items():
            record[out_key] = engine.answer(question, features, temperature=args.temperature,
                                            max_new_tokens=args.max_new_tokens, seed=args.seed + k)
        done[sample["key"]] = {**record, "key": sample["key"]}
        if (k + 1) % args.save_every == 0:
            save()
    save()
    if errors:
        atomic_write_bytes(err_path, json.dumps(errors, indent=1).encode())
        print(f"{len(errors)} samples have no video (listed in {err_path}):", file=sys.stderr)
        for e in errors[:10]:
            print(f"  {e['video_name']}: tried {', '.join(e['tried'])}", file=sys.stderr)
        return 1
    err_path.unlink(missing_ok=True)
    print(f"wrote {len(done)} predictions to {out_path}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
