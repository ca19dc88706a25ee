"""The judge protocol's pure parts: the shipped prompts, slot filling, keys, reply parsing, aggregation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from video_chatgpt.errors import UserError
from video_chatgpt.eval import protocol as P

# sha256 of ../shared/spec/vcgbench_judge_prompts.json, the protocol data the package ships byte for byte.
SPEC_PROMPTS_SHA256 = "98920d75e654aec14e545f29ee3743aecdfa34c3b31c9d5398af416a32008319"
SPEC_PROMPTS = Path(__file__).resolve().parents[3] / "shared" / "spec" / "vcgbench_judge_prompts.json"


def test_packaged_prompts_are_the_spec_file_byte_for_byte():
    assert P.prompts_sha256() == SPEC_PROMPTS_SHA256
    if SPEC_PROMPTS.is_file():  # the checkout beside the spec: the constant above is that file's hash
        assert hashlib.sha256(SPEC_PROMPTS.read_bytes()).hexdigest() == SPEC_PROMPTS_SHA256
    prompts = P.load_prompts()
    assert {c.prompt_key for c in P.CRITERIA.values()} == set(prompts)
    assert "{''score': 4.8}" in prompts["evaluate_benchmark_1_correctness"]["messages"][1]["content"]  # typo kept


def test_messages_fill_slots_once_and_keep_other_braces():
    prompt = P.load_prompts()["evaluate_benchmark_1_correctness"]
    qa_set = {"q": "What {answer} is it?", "a": "A red ball.", "pred": "It is {pred}."}
    system, user = P.build_messages(prompt, P.PAIR, qa_set)
    assert system == prompt["messages"][0]
    assert (
        "Question: What {answer} is it?\nCorrect Answer: A red ball.\nPredicted Answer: It is {pred}.\n"
        in user["content"]
    )
    assert user["content"].endswith("{''score': 4.8}.")
    consistency = P.load_prompts()["evaluate_benchmark_5_consistency"]
    _, user = P.build_messages(
        consistency, P.CONSISTENCY, {"q1": "Q one", "q2": "Q two", "a": "Ans", "pred1": "P one", "pred2": "P two"}
    )
    assert (
        "Question 1: Q one\nQuestion 2: Q two\nCorrect Answer: Ans\nPredicted Answer to Question 1: P one\n"
        "Predicted Answer to Question 2: P two\n"
    ) in user["content"]


def test_keys_are_the_originals_and_both_record_layouts_are_read():
    records = [
        {"video_name": "v1", "Q": "a?", "A": "x", "pred": "y"},
        {"id": "v1", "question": "b?", "answer": "x2", "pred": "y2"},
        {"video_name": "v2", "Q": "c?", "A": "x3", "pred": "y3"},
    ]
    assert P.qa_items(P.QA, records, "p.json") == [
        ("v1_0", {"q": "a?", "a": "x", "pred": "y"}),
        ("v1_1", {"q": "b?", "a": "x2", "pred": "y2"}),
        ("v2_0", {"q": "c?", "a": "x3", "pred": "y3"}),
    ]
    with pytest.raises(UserError, match=r"p.json: record 0 has no 'pred'"):
        P.qa_items(P.PAIR, [{"video_name": "v", "Q": "q", "A": "a"}], "p.json")
    with pytest.raises(UserError, match=r"p.json: expected a JSON list"):
        P.qa_items(P.PAIR, {"v": 1}, "p.json")


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("{'score': 4}", P.PAIR, {"score": 4}),
        ("{'score': 4.8}", P.PAIR, {"score": 4.8}),
        ('Sure. {"score": 3} Hope it helps. {"score": 1}', P.PAIR, {"score": 3}),  # the first dict
        ("{'pred': 'Yes', 'score': 5}", P.QA, {"pred": "yes", "score": 5}),
        ("{'pred': 'no', 'score': 0}", P.QA, {"pred": "no", "score": 0}),
    ],
)
def test_valid_replies(text, kind, expected):
    assert P.parse_reply(text, kind) == (expected, None)


@pytest.mark.parametrize(
    "text, kind, reason",
    [
        ("I cannot judge this.", P.PAIR, "no {...}"),
        ("{''score': 4.8}", P.PAIR, "not a Python or JSON dict"),  # the prompt's own typo does not parse
        ("{'score': '4'}", P.PAIR, "not a number"),
        ("{'score': True}", P.PAIR, "not a number"),
        ("{'score': 7}", P.PAIR, "outside 0..5"),
        ("{'score': -1}", P.PAIR, "outside 0..5"),
        ("{'score': float('nan')}", P.PAIR, "not a Python or JSON dict"),
        ("{1, 2}", P.PAIR, "not a dict"),
        ("{'score': 3}", P.QA, "'pred' is not yes or no"),
        ("{'pred': 'maybe', 'score': 3}", P.QA, "'pred' is not yes or no"),
        (None, P.PAIR, "no {...}"),
        (3, P.PAIR, "the reply is a int, not text"),
        ('{"score": ' + "1" * 5000 + "}", P.PAIR, "not a Python or JSON dict"),  # over Python's 4300 digits
        ("{'score': " + "1" * 400 + "}", P.PAIR, "(400 characters) is outside 0..5"),  # no float(): no overflow
        ('{"score": ' + "[" * 100_000 + "]" * 100_000 + "}", P.PAIR, "not a Python or JSON dict"),  # too deep
        ("{'score': [[3]]}", P.PAIR, "'score' is not a number: a list"),
        ("{'score': 1e999}", P.PAIR, "'score' inf is outside 0..5"),
        ("{'pred': '" + "y" * 500 + "', 'score': 3}", P.QA, "(502 characters)"),
    ],
)
def test_invalid_replies(text, kind, reason):
    reply, why = P.parse_reply(text, kind)
    assert reply is None and reason in why


def test_summary_against_a_hand_computation():
    def ok(key, score, pred=None):
        return {"key": key, "ok": True, "reply": {"score": score, **({"pred": pred} if pred else {})}}

    outcomes = [
        ok("a", 4.8, "yes"),
        ok("b", 2, "no"),
        ok("c", 3.5, "yes"),
        ok("d", 5, "yes"),
        {"key": "e", "ok": False, "reply": None, "reason": "HTTP 500", "raw": "x", "attempts": 3},
    ]
    s = P.summarize(P.QA, outcomes, seed=0)
    assert (s["total"], s["judged"], s["failed"]) == (5, 4, 1)
    assert s["mean"] == pytest.approx((4.8 + 2 + 3.5 + 5) / 4)  # 3.825: the failure is not averaged in
    assert s["mean_int"] == pytest.approx((4 + 2 + 3 + 5) / 4)  # 3.5: the original's int() mean
    assert s["accuracy"] == pytest.approx(75.0) and (s["yes"], s["no"]) == (3, 1)
    assert s["failures"] == [{"key": "e", "reason": "HTTP 500", "raw": "x", "attempts": 3}]
    lo, hi = s["ci95"]
    assert 2 <= lo < s["mean"] < hi <= 5
    assert s == P.summarize(P.QA, outcomes, seed=0)  # the bootstrap is seeded
    empty = P.summarize(P.PAIR, outcomes[-1:], seed=0)
    assert (empty["mean"], empty["mean_int"], empty["ci95"], empty["failed"]) == (None, None, None, 1)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    small = P.bootstrap_ci([0, 5] * 5, seed=1)
    large = P.bootstrap_ci([0, 5] * 500, seed=1)
    assert small[0] < 2.5 < small[1] and large[0] < 2.5 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5
    assert P.bootstrap_ci([3.0], seed=0) == [3.0, 3.0]


def test_qa_dataset_from_the_file_name():
    assert [
        P.guess_qa_dataset(n)
        for n in ("preds/MSVD_QA.json", "msrvtt-qa.json", "tgif.json", "activitynet_qa.json", "other.json")
    ] == ["msvd", "msrvtt", "tgif", "activitynet", None]
    assert P.PUBLISHED_QA["msvd"] == (64.9, 3.3) and P.PUBLISHED_VCGBENCH["temporal"] == 1.98
