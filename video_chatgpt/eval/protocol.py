"""The judge protocol as pure functions: criteria, record keys, prompt messages, reply parsing, aggregation.

Nothing here does I/O beyond reading the packaged prompt file; ``evaluate.py`` is the thin shell around it.

* Criteria: the five VCGBench criteria (``correctness``, ``detail``, ``context``, ``temporal``, ``consistency``) and
  zero-shot ``qa``; each names its prompt in ``vcgbench_judge_prompts.json`` (the original scripts' prompts, byte for
  byte: changing a word changes the benchmark) and the slots its user message fills.
* Keys: ``<video_name>_<n>`` with n = 0, 1, ... per repeated video, as the original evaluators make them.
* ``qa_set``: the second element of each value of the original's combined JSON (``{"q", "a", "pred"}`` or, for
  consistency, ``{"q1", "q2", "a", "pred1", "pred2"}``).
* Parsing: the first ``{...}`` of the reply, read with ``ast.literal_eval`` (then JSON); ``score`` must be a number in
  0..5 (kept as given: 4.8 stays 4.8), QA ``pred`` must be yes or no. Anything else is a parse failure.
* Aggregation: mean of the raw scores with a 95% bootstrap interval, the original's ``int()`` mean beside it, QA
  accuracy = share of "yes" among judged records; failures are counted and listed, never averaged.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

from video_chatgpt.errors import UserError

PROMPTS_FILE = "vcgbench_judge_prompts.json"
SCORE_RANGE = (0, 5)  # the prompts ask for an integer score between 0 and 5
QA_VERDICTS = ("yes", "no")
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95

# kinds of records: "pair" (question, answer, pred), "consistency" (two questions, two preds), "qa" (pair + yes/no)
PAIR, CONSISTENCY, QA = "pair", "consistency", "qa"
SLOTS = {
    PAIR: ("question", "answer", "pred"),
    QA: ("question", "answer", "pred"),
    CONSISTENCY: ("question1", "question2", "answer", "pred1", "pred2"),
}
# The qa_set field a slot is filled from, where its name differs (pred, pred1, pred2 are their own).
SLOT_FIELDS = {"question": "q", "answer": "a", "question1": "q1", "question2": "q2"}


@dataclass(frozen=True)
class Criterion:
    name: str  # what --task calls it
    prompt_key: str  # its entry in vcgbench_judge_prompts.json
    kind: str  # PAIR, CONSISTENCY or QA
    title: str  # row label of the results table


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("correctness", "evaluate_benchmark_1_correctness", PAIR, "Correctness of information"),
        Criterion("detail", "evaluate_benchmark_2_detailed_orientation", PAIR, "Detail orientation"),
        Criterion("context", "evaluate_benchmark_3_context", PAIR, "Contextual understanding"),
        Criterion("temporal", "evaluate_benchmark_4_temporal", PAIR, "Temporal understanding"),
        Criterion("consistency", "evaluate_benchmark_5_consistency", CONSISTENCY, "Consistency"),
        Criterion("qa", "evaluate_activitynet_qa", QA, "Zero-shot QA"),
    )
}

# The original's published numbers (Video-ChatGPT README), judged by gpt-3.5-turbo in 2023.
PUBLISHED_VCGBENCH = {"correctness": 2.40, "detail": 2.52, "context": 2.62, "temporal": 1.98, "consistency": 2.37}
PUBLISHED_QA = {  # dataset -> (accuracy %, score)
    "msvd": (64.9, 3.3),
    "msrvtt": (49.3, 2.8),
    "tgif": (51.4, 3.0),
    "activitynet": (35.2, 2.7),
}


# ------------------------------------------------------------------------------------------------------ prompts
def prompts_bytes() -> bytes:
    """The packaged prompt file, exactly as shipped."""
    return resources.files("video_chatgpt.eval").joinpath(PROMPTS_FILE).read_bytes()


def prompts_sha256() -> str:
    return hashlib.sha256(prompts_bytes()).hexdigest()


def load_prompts() -> dict[str, dict]:
    """prompt key -> ``{"model": ..., "messages": [{"role", "content"}, ...]}``."""
    return json.loads(prompts_bytes().decode("utf-8"))


_SLOT = re.compile(r"\{(" + "|".join(sorted({s for slots in SLOTS.values() for s in slots})) + r")\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace the ``{slot}`` markers in one pass; every other brace (``{''score': 4.8}``) stays as written.

    One pass, so a prediction that itself contains ``{answer}`` is not filled again.
    """
    return _SLOT.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def build_messages(prompt: dict, kind: str, qa_set: dict) -> list[dict[str, str]]:
    """The chat messages for one record: the criterion's system + user messages with the record's slots filled."""
    values = {slot: qa_set[SLOT_FIELDS.get(slot, slot)] for slot in SLOTS[kind]}
    return [{"role": m["role"], "content": fill(m["content"], values)} for m in prompt["messages"]]


def request_sha256(messages: list[dict[str, str]]) -> str:
    """Identity of what the judge is asked: a cached verdict is reused only for the same messages."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------------ records
_FIELDS = {  # qa_set field -> accepted record keys, in order (ours / the original's evaluator first)
    "video_name": ("video_name", "id"),
    "q": ("Q", "question"),
    "a": ("A", "answer"),
    "pred": ("pred",),
    "q1": ("Q1",),
    "q2": ("Q2",),
    "pred1": ("pred1",),
    "pred2": ("pred2",),
}


def _field(record: dict, field: str, where: str) -> str:
    for name in _FIELDS[field]:
        if name in record and record[name] is not None:
            value = record[name]
            if not isinstance(value, str):  # a list or a number would be judged as its Python text
                raise UserError(f"{where} {name!r} is a {type(value).__name__}, expected text")
            return value
    names = " or ".join(repr(n) for n in _FIELDS[field])
    raise UserError(
        f"{where} has no {names} (keys: {', '.join(map(str, record))}); is it a prediction file of "
        f"'video-chatgpt predict' for this task?"
    )


def qa_items(kind: str, records: list, source: str) -> list[tuple[str, dict]]:
    """``[(key, qa_set)]`` of a prediction file, keys ``<video_name>_<n>`` as the original makes them."""
    if not isinstance(records, list):
        raise UserError(f"{source}: expected a JSON list of prediction records, found {type(records).__name__}")
    fields = [SLOT_FIELDS.get(slot, slot) for slot in SLOTS[kind]]
    counts: dict[str, int] = {}
    items = []
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(record, dict):
            raise UserError(f"{where} is a {type(record).__name__}, expected an object")
        video = _field(record, "video_name", where)
        n = counts.get(video, 0)
        counts[video] = n + 1
        items.append((f"{video}_{n}", {f: _field(record, f, where) for f in fields}))
    return items


# ------------------------------------------------------------------------------------------------------ parsing
_FIRST_DICT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_reply(text: str | None, kind: str) -> tuple[dict | None, str | None]:
    """``(reply, None)`` for a valid judge reply, ``(None, reason)`` otherwise.

    ``reply`` is ``{"score": s}`` (``{"pred": "yes"|"no", "score": s}`` for QA), ``s`` the number as given.
    """
    if text is not None and not isinstance(text, str):
        return None, f"the reply is a {type(text).__name__}, not text"
    match = _FIRST_DICT.search(text or "")
    if match is None:
        return None, "no {...} in the reply"
    source = match.group(0)
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = json.loads(source)
        except (ValueError, RecursionError):  # not JSON, an integer of > 4300 digits, nested too deep
            return None, f"not a Python or JSON dict: {source[:120]!r}"
    if not isinstance(value, dict):
        return None, f"not a dict: {source[:120]!r}"
    score = value.get("score")
    # No float() of an int: a 400-digit one overflows. NaN is the one value unequal to itself; inf is out of range.
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        return None, f"'score' is not a number: {_short(score)}"
    if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        return None, f"'score' {_short(score)} is outside {SCORE_RANGE[0]}..{SCORE_RANGE[1]}"
    if kind != QA:
        return {"score": score}, None
    pred = value.get("pred")
    verdict = pred.strip().lower() if isinstance(pred, str) else None
    if verdict not in QA_VERDICTS:
        return None, f"'pred' is not yes or no: {_short(pred)}"
    return {"pred": verdict, "score": score}, None


def _short(value: object) -> str:
    """A parsed value for a message, at most ~60 characters (a 4000-digit score, a deeply nested list)."""
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"


# -------------------------------------------------------------------------------------------------- aggregation
def bootstrap_ci(
    values: list[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES, level: float = CONFIDENCE
) -> list[float] | None:
    """Percentile bootstrap interval of the mean (None without values)."""
    if not values:
        return None
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)  # (resamples,)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def summarize(kind: str, outcomes: list[dict], seed: int) -> dict:
    """Scores of one criterion from its outcomes (``{"key", "ok", "reply", "reason", "raw", "attempts"}``)."""
    judged = [o for o in outcomes if o["ok"]]
    scores = [o["reply"]["score"] for o in judged]
    summary = {
        "total": len(outcomes),
        "judged": len(judged),
        "failed": len(outcomes) - len(judged),
        "mean": _mean(scores),  # mean of the scores as the judge gave them
        "mean_int": _mean([int(s) for s in scores]),  # the original's mean of int(score): 4.8 counts as 4
        "ci95": bootstrap_ci(scores, seed),
        "failures": [{k: o.get(k) for k in ("key", "reason", "raw", "attempts")} for o in outcomes if not o["ok"]],
    }
    if kind == QA:
        hits = [1.0 if o["reply"]["pred"] == "yes" else 0.0 for o in judged]
        accuracy_ci = bootstrap_ci(hits, seed)
        summary["accuracy"] = None if not hits else 100 * _mean(hits)
        summary["accuracy_ci95"] = None if accuracy_ci is None else [100 * x for x in accuracy_ci]
        summary["yes"], summary["no"] = int(sum(hits)), len(hits) - int(sum(hits))
    return summary


def guess_qa_dataset(path: str) -> str | None:
    """The QA set a prediction file is about, from its name (``msvd``, ``msrvtt``, ``tgif``, ``activitynet``)."""
    name = path.lower().replace("-", "").replace("_", "")
    for dataset in ("msrvtt", "msvd", "tgif", "activitynet", "anet"):
        if dataset in name:
            return "activitynet" if dataset == "anet" else dataset
    return None
