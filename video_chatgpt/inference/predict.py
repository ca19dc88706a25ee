"""``video-chatgpt predict``: answer a benchmark's questions, writing the files ``video-chatgpt evaluate`` reads.

    # VCGBench general (correctness / detail / context) and temporal: video_name, Q, A -> adds "pred"
    video-chatgpt predict --task general --gt_file generic_qa.json --video_dir videos/ \\
        --output_dir preds --output_name generic --model_name_or_path LLaVA-7B-Lightening-v1-1 \\
        --projection_path video_chatgpt-7B.bin
    video-chatgpt predict --task temporal --gt_file temporal_qa.json ... --output_name temporal
    # VCGBench consistency: video_name, Q1, Q2, A -> adds "pred1", "pred2"
    video-chatgpt predict --task consistency --gt_file consistency_qa.json ... --output_name consistency
    # zero-shot QA (ActivityNet-QA; MSVD-QA, MSRVTT-QA and TGIF-QA in the same format): questions (video_name,
    # question, question_id) + answers (answer, question_id), matched by question_id, else by list position
    video-chatgpt predict --task msvd_qa --gt_file_question test_q.json --gt_file_answers test_a.json \\
        --video_dir videos/ --output_dir preds --output_name msvd_qa --model_name_or_path ./Video-ChatGPT_7B-1.1_Checkpoints

Output ``{output_dir}/{output_name}.json``: the question records plus their predictions, in question-file order,
written to a temporary file and renamed (never half a file). QA records carry the keys the judge reads
(``video_name``, ``Q``, ``A``, ``pred``, plus ``question_id``); the original wrote ``id/question/answer``.

Beside it:

* ``{output_name}.predict.json``: what the predictions were made from: the question files (path and sha256), the
  model, projector and generation settings. A rerun into the same output with another question file or other
  settings is refused (``--overwrite`` starts again).
* ``{output_name}.progress.jsonl``: one line per answered record, flushed as it is answered, keyed by the record's
  identity (video and question, or ``question_id``), not its list position. A rerun (after a kill, or to fill in
  samples whose video was missing) answers only the rest. Sample ``i`` of the question file is sampled with seed
  ``--seed + i``, so a resumed run writes exactly what an uninterrupted one would.
* ``{output_name}.errors.json``: samples without a readable video, with the paths tried and the reason. A missing
  video is never replaced by another: it is ``{features_dir}/{video_name}.pkl|.npy``, else
  ``{video_dir}/{video_name}{ext}`` for ext in ``constants.VIDEO_SUFFIXES``; a ``video_name`` that is absolute or
  climbs out with ``..`` is never opened (``files.inside``, as for training). The others are predicted and the exit
  status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import VIDEO_SUFFIXES
from video_chatgpt.errors import UserError
from video_chatgpt.features.decode import VideoDecodeError
from video_chatgpt.features.store import FEATURE_SUFFIXES, FeatureFileError, load_features
from video_chatgpt.files import check_output, inside, parse_json, read_bytes_bounded, read_json, write_json_atomically
from video_chatgpt.inference.chat import check_rows, expected_video_tokens
from video_chatgpt.inference.engine import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, load_engine
from video_chatgpt.inference.flags import add_model_flags, check_model_flags, engine_kwargs

logger = logging.getLogger(__name__)
GENERAL_TASKS = ("general", "temporal")  # same record format, their own question files
QA_TASKS = ("activitynet_qa", "msvd_qa", "msrvtt_qa", "tgif_qa")  # ActivityNet-QA's format for all four
TASKS = (*GENERAL_TASKS, "consistency", *QA_TASKS)


# ------------------------------------------------------------------------------------------------ records (pure)
def read_question_file(path: str | Path, flag: str) -> tuple[list, dict]:
    """(the JSON list of a question file, its entry in the sidecar: flag, resolved path, sha256); a one-line
    ``UserError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; pass the benchmark's question file")
    data = read_bytes_bounded(path)
    try:
        items = parse_json(data, f"{flag} {path}")
    except UserError as exc:
        raise UserError(f"{exc}; download or copy the question file again") from None
    if not isinstance(items, list):
        raise UserError(f"{flag} {path}: expected a JSON list of question records, found {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{flag} {path}: item {i} is a {type(item).__name__}, expected an object")
    return items, {"flag": flag, "path": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest()}


def _require(item: dict, keys: tuple[str, ...], path, i: int) -> None:
    """Every key in ``keys`` is present and text (a list or a number would be asked as its Python text)."""
    missing = [k for k in keys if k not in item]
    if missing:
        raise UserError(
            f"{path}: item {i} lacks {', '.join(missing)} (has {', '.join(item) or 'nothing'}); is it "
            f"the question file of this --task?"
        )
    for k in keys:
        if not isinstance(item[k], str):
            raise UserError(f"{path}: item {i} {k!r} is a {type(item[k]).__name__}, expected text")


def identity_keys(identities: list[tuple]) -> list[str]:
    """One stable key per record: its identity (e.g. video and question), plus its occurrence number when the file
    repeats it. Independent of list positions, so a resume never pairs an answer with another question."""
    seen: dict[tuple, int] = {}
    keys = []
    for ident in identities:
        n = seen.get(ident, 0)
        seen[ident] = n + 1
        keys.append(json.dumps([*ident, n], ensure_ascii=False))
    return keys


def load_samples(task: str, gt_file=None, gt_file_question=None, gt_file_answers=None) -> tuple[list[dict], list[dict]]:
    """(samples, question files). Each sample is the record to write, plus ``key`` (identity) and ``index``."""
    if task in GENERAL_TASKS or task == "consistency":
        if gt_file is None:
            raise UserError(f"--task {task} needs --gt_file (the benchmark's question file)")
        items, entry = read_question_file(gt_file, "--gt_file")
        need = ("video_name", "Q", "A") if task in GENERAL_TASKS else ("video_name", "Q1", "Q2", "A")
        for i, item in enumerate(items):
            _require(item, need, gt_file, i)
        records = [dict(item) for item in items]
        identities = [tuple(str(item[k]) for k in need[:-1]) for item in items]
        files = [entry]
    elif task in QA_TASKS:
        if gt_file_question is None or gt_file_answers is None:
            raise UserError(f"--task {task} needs --gt_file_question and --gt_file_answers")
        questions, q_entry = read_question_file(gt_file_question, "--gt_file_question")
        answers, a_entry = read_question_file(gt_file_answers, "--gt_file_answers")
        by_id = {a["question_id"]: a for a in answers if "question_id" in a}
        records, identities = [], []
        for i, q in enumerate(questions):
            _require(q, ("video_name", "question"), gt_file_question, i)
            qid = q.get("question_id")
            answer = by_id.get(qid) if qid is not None else None
            if answer is None:  # the original's answer files pair by list position
                if i >= len(answers):
                    raise UserError(
                        f"{gt_file_answers}: no answer for question {i} (question_id {qid!r}) of {gt_file_question}"
                    )
                answer = answers[i]
            _require(answer, ("answer",), gt_file_answers, i)
            record = {"video_name": q["video_name"], "Q": q["question"], "A": answer["answer"]}
            if qid is not None:
                record["question_id"] = qid
            records.append(record)
            identities.append(("qid", str(qid)) if qid is not None else (str(q["video_name"]), str(q["question"])))
        files = [q_entry, a_entry]
    else:
        raise UserError(f"unknown --task {task!r}; expected one of {', '.join(TASKS)}")
    keys = identity_keys(identities)
    return [{"record": r, "key": k, "index": i} for i, (r, k) in enumerate(zip(records, keys))], files


def questions_of(task: str, record: dict) -> dict[str, str]:
    """output key -> question: ``{"pred": Q}`` or, for consistency, ``{"pred1": Q1, "pred2": Q2}``."""
    return {"pred1": record["Q1"], "pred2": record["Q2"]} if task == "consistency" else {"pred": record["Q"]}


def find_source(
    video_name: str, video_dir: Path | None, features_dir: Path | None, what: str = "video_name"
) -> tuple[Path | None, list[str]]:
    """The video (or feature) file of a sample, and every path tried. A ``video_name`` that is absolute or climbs out
    of its folder (``files.inside``) raises ``UserError`` naming ``what`` (e.g. "item 3 video_name")."""
    sources = ((features_dir, FEATURE_SUFFIXES, "--features_dir"), (video_dir, VIDEO_SUFFIXES, "--video_dir"))
    tried = []
    for folder, suffixes, flag in sources:
        if folder is None:
            continue
        inside(folder, video_name, what, flag)
        for ext in suffixes:
            path = folder / f"{video_name}{ext}"
            tried.append(str(path))
            if path.is_file():
                return path, tried
    return None, tried


# ------------------------------------------------------------------------------------------ files of one output
class PredictionFiles:
    """The output, its sidecar (what it was made from), the per-record progress and the error list."""

    def __init__(self, output_dir: Path, output_name: str) -> None:
        self.output = output_dir / f"{output_name}.json"
        self.sidecar = output_dir / f"{output_name}.predict.json"
        self.progress = output_dir / f"{output_name}.progress.jsonl"
        self.errors = output_dir / f"{output_name}.errors.json"

    def check_inputs(self, inputs: dict) -> None:
        """None of these files may be (or hold) a question file: ``--overwrite`` deletes them, a run replaces them."""
        for path in (self.output, self.sidecar, self.progress, self.errors):
            check_output(path, inputs, "--output_dir/--output_name")

    def start(self, made_from: dict, overwrite: bool) -> dict[str, dict]:
        """Check that the existing output was made from the same inputs and settings; returns key -> answered line."""
        existing = [p for p in (self.output, self.progress) if p.exists()]
        if overwrite:
            for path in (self.output, self.progress, self.errors, self.sidecar):
                path.unlink(missing_ok=True)
        elif self.sidecar.is_file():
            try:
                before = read_json(self.sidecar, expect=dict)["made_from"]
            except (UserError, KeyError, TypeError):
                raise UserError(
                    f"{self.sidecar}: unreadable; delete it and {self.output}, or pass --overwrite"
                ) from None
            self._refuse_other_inputs(before, made_from)
        elif existing:
            raise UserError(
                f"{existing[0]} exists but {self.sidecar} (what it was made from) does not; choose another "
                f"--output_name, or pass --overwrite to predict again"
            )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.sidecar, {"made_from": made_from}, indent=1, ensure_ascii=False)
        return self.read_progress()

    def _refuse_other_inputs(self, before: dict, now: dict) -> None:
        old = {f["flag"]: f for f in before.get("question_files", [])}
        for f in now["question_files"]:
            prev = old.get(f["flag"])
            if prev is None or prev["sha256"] != f["sha256"]:
                was = f"{prev['path']} (sha256 {prev['sha256'][:12]})" if prev else "other question files"
                raise UserError(
                    f"{self.output} was made from another question file: {was}, not {f['path']} "
                    f"(sha256 {f['sha256'][:12]}); choose another --output_name, or pass --overwrite"
                )
        if before.get("task") != now["task"]:
            raise UserError(
                f"{self.output} was made with --task {before.get('task')}, not {now['task']}; choose "
                f"another --output_name, or pass --overwrite"
            )
        changed = [
            f"{k} {before['settings'].get(k)!r} -> {v!r}"
            for k, v in now["settings"].items()
            if before.get("settings", {}).get(k) != v
        ]
        if changed:
            raise UserError(
                f"{self.output} was made with other settings ({', '.join(changed)}); a resumed run must "
                f"use the same ones: rerun with them, choose another --output_name, or pass --overwrite"
            )

    def read_progress(self) -> dict[str, dict]:
        if not self.progress.is_file():
            return {}
        text = self.progress.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        if complete != text:  # a line cut by a kill: that sample is answered again
            self.progress.write_text(complete, encoding="utf-8")
        done = {}
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                entry = parse_json(line, str(self.progress))
                done[entry["key"]] = entry
            except (UserError, KeyError, TypeError):
                raise UserError(
                    f"{self.progress}: line {number} is not a prediction record; pass --overwrite to predict again"
                ) from None
        return done


# ---------------------------------------------------------------------------------------------------- the job
def build_parser() -> argparse.ArgumentParser:
    p = command_parser("predict", __doc__)
    p.add_argument("--task", choices=TASKS, default="general", help="which question file format")
    p.add_argument("--gt_file", help="general / temporal / consistency: the question file")
    p.add_argument("--gt_file_question", help="QA tasks: the questions (video_name, question, question_id)")
    p.add_argument("--gt_file_answers", help="QA tasks: the answers (answer, question_id)")
    p.add_argument("--video_dir", type=Path, help="the videos, named <video_name><suffix>")
    p.add_argument("--features_dir", type=Path, help="precomputed feature files instead of (or before) videos")
    p.add_argument("--output_dir", type=Path, required=True, help="where the predictions go")
    p.add_argument("--output_name", required=True, help="writes <output_dir>/<output_name>.json")
    add_model_flags(p)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy (deterministic)")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens")
    p.add_argument("--seed", type=int, default=0, help="sample i of the question file is sampled with seed + i")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output of this name and start again")
    return p


# The flags a resumed run must repeat, besides the model folder, in the sidecar's order.
OPTIONAL_PATHS = ("projection_path", "lora_path")
SETTINGS = ("conv_mode", "prompt_ids", "temperature", "seed", "max_new_tokens", "vision_tower", "num_frames", "dtype")


def made_from(args, question_files: list[dict]) -> dict:
    """What a prediction file depends on: compared on resume (the paths of the videos are not: they may move)."""
    return {
        "task": args.task,
        "question_files": question_files,
        "settings": {
            "model_name": str(Path(args.model_name).resolve()),
            **{k: str(Path(getattr(args, k)).resolve()) if getattr(args, k) else None for k in OPTIONAL_PATHS},
            **{k: getattr(args, k) for k in SETTINGS},
        },
    }


def main(argv: list[str] | None = None, *, get_engine=None) -> int:
    """``get_engine``: a function returning the loaded engine for these flags, called only when there is something
    to predict (``video-chatgpt benchmark`` loads the model once for several question files); None: load it here."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.video_dir is None and args.features_dir is None:
        raise UserError("give --video_dir (videos) or --features_dir (precomputed feature files)")
    if Path(args.output_name).name != args.output_name or args.output_name in ("", ".", ".."):
        raise UserError(f"--output_name {args.output_name!r}: a file name, without folders (those go in --output_dir)")
    for flag, folder in (("--video_dir", args.video_dir), ("--features_dir", args.features_dir)):
        if folder is not None and not folder.is_dir():
            raise UserError(f"{flag} {folder}: no such folder")
    samples, question_files = load_samples(args.task, args.gt_file, args.gt_file_question, args.gt_file_answers)
    files = PredictionFiles(args.output_dir, args.output_name)
    files.check_inputs(
        {f"--{name}": getattr(args, name) for name in ("gt_file", "gt_file_question", "gt_file_answers")}
    )
    if get_engine is None:
        check_model_flags(args)  # a mistyped --model_name_or_path stops here, before --overwrite deletes anything
    done = files.start(made_from(args, question_files), args.overwrite)
    todo = [s for s in samples if s["key"] not in done]
    print(f"{len(samples)} samples: {len(done)} already predicted in {files.output}, {len(todo)} to do", flush=True)

    errors = []
    if todo:
        errors = predict(args, todo, files, get_engine)
        done = files.read_progress()
    ordered = [done[s["key"]]["record"] for s in samples if s["key"] in done]
    write_json_atomically(files.output, ordered, indent=1, ensure_ascii=False)
    missing_keys = {s["key"] for s in samples if s["key"] not in done}
    errors = [e for e in errors if e["key"] in missing_keys]
    if errors:
        write_json_atomically(files.errors, errors, indent=1, ensure_ascii=False)
        print(f"{len(errors)} samples have no readable video (listed in {files.errors}):", file=sys.stderr)
        for e in errors[:10]:
            print(f"  {e['video_name']}: {e['reason']}; tried {', '.join(e['tried'])}", file=sys.stderr)
        print(
            f"wrote {len(ordered)} predictions to {files.output}; rerun the same command to add the missing ones",
            file=sys.stderr,
        )
        return 1
    files.errors.unlink(missing_ok=True)
    print(f"wrote {len(ordered)} predictions to {files.output}")
    return 0


def load_predict_engine(args):
    """The engine ``predict`` answers with, from its model flags (one line for a missing/broken base or projector)."""
    check_model_flags(args)
    return load_engine(**engine_kwargs(args))


def predict(args, todo: list[dict], files: PredictionFiles, get_engine=None) -> list[dict]:
    """Answer ``todo``, appending each answered record to the progress file; returns the samples without a video."""
    import torch

    with torch.no_grad():  # scoped, not set_grad_enabled: an in-process caller keeps autograd as it had it
        return _predict(args, todo, files, get_engine() if get_engine else load_predict_engine(args))


def _predict(args, todo: list[dict], files: PredictionFiles, engine) -> list[dict]:
    from tqdm import tqdm

    rows, rows_source = expected_video_tokens(engine)
    width = engine.model.config.mm_hidden_size
    errors = []
    if args.video_dir is not None:  # load the tower now: its "Loading weights" bar would draw inside ours
        _ = engine.extractor
    with open(files.progress, "a", encoding="utf-8") as progress:
        for sample in tqdm(todo, desc="predict", unit="sample"):
            record = sample["record"]
            error = {"key": sample["key"], "video_name": record["video_name"]}
            try:
                what = f"item {sample['index']} video_name"
                source, tried = find_source(record["video_name"], args.video_dir, args.features_dir, what)
            except UserError as exc:  # a name from the question file that leaves its folder: never opened
                errors.append({**error, "tried": [], "reason": str(exc)})
                continue
            error["tried"] = tried
            if source is None:
                errors.append({**error, "reason": "video not found"})
                continue
            try:
                if source.suffix in FEATURE_SUFFIXES:
                    features = load_features(source, expected_width=width)
                else:
                    features = engine.video_features(source)
            except (VideoDecodeError, FeatureFileError) as exc:
                errors.append({**error, "reason": f"unreadable: {exc}"})
                continue
            check_rows(str(source), features.shape[0], rows, rows_source)
            answered = dict(record)
            for out_key, question in questions_of(args.task, record).items():
                answered[out_key] = engine.answer(
                    question,
                    features,
                    temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens,
                    seed=args.seed + sample["index"],
                )
            progress.write(
                json.dumps({"key": sample["key"], "index": sample["index"], "record": answered}, ensure_ascii=False)
                + "\n"
            )
            progress.flush()
    return errors


if __name__ == "__main__":
    from video_chatgpt.errors import run_main

    sys.exit(run_main(main, None, "video-chatgpt predict"))
