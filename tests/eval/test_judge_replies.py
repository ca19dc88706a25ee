"""The LLM client against odd but plausible HTTP 200 replies, a server that drips bytes and one that never stops.

Every case runs ``video-chatgpt evaluate`` end to end against the scripted server: each record ends as a result or
a recorded failure with its reason, ``results.json`` is written and nothing prints a traceback.
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc

import pytest

from tests.eval.server import Reply, ScriptedServer, completion, ok
from tests.helpers.eval import evaluate, write_preds
from video_chatgpt.eval.judge import Judge, JudgeSettings
from video_chatgpt.eval.protocol import PAIR
from video_chatgpt.llm_client import MAX_REPLY_BYTES, read_completion

NESTED = "[" * 100_000 + "]" * 100_000


def _json(value) -> Reply:
    return Reply(body=json.dumps(value).encode())


def _model(model) -> Reply:
    return Reply(content="{'score': 4}", model=model)


# case -> (the reply to record q0, what q0 ends as: a score, or words of its failure reason)
ODD_REPLIES = {
    "text/plain body": (Reply(body=b"The score is 3.", content_type="text/plain"), "unusable reply: not JSON"),
    "HTML body": (Reply(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"), "not JSON"),
    "JSON type, non-JSON body": (Reply(body=b"{'score': 3}"), "unusable reply: not JSON"),
    "empty body": (Reply(body=b""), "unusable reply: not JSON"),
    "invalid UTF-8 body": (Reply(body=b'{"choices": "\xff\xfe"}'), "not JSON (UnicodeDecodeError)"),
    "JSON null": (Reply(body=b"null"), "a JSON NoneType, expected a chat completion object"),
    "JSON list": (_json([completion("{'score': 3}")]), "a JSON list, expected a chat completion object"),
    "envelope nested 100000 deep": (Reply(body=f'{{"choices": {NESTED}}}'.encode()), "not JSON (RecursionError)"),
    "a 5000-digit number in the envelope": (Reply(body=b'{"usage": ' + b"7" * 5000 + b"}"), "not JSON (ValueError)"),
    "choices a string": (_json({"choices": "{'score': 3}"}), "'choices' is str \"{'score': 3}\""),
    "choices {}": (_json({"choices": {}}), "'choices' is dict, expected a non-empty list"),
    "choices []": (_json({"choices": []}), "'choices' is list, expected a non-empty list"),
    "choices [{}]": (_json({"choices": [{}]}), "'choices[0].message' is missing or null"),
    "choices [3]": (_json({"choices": [3]}), "'choices[0].message' is missing or null"),
    "message a string": (_json({"choices": [{"message": "{'score': 3}"}]}), "'choices[0].message' is str"),
    "content a number": (Reply(content=3), "'content' is int 3, expected text"),
    "content null (a refusal)": (Reply(content=None), "'content' is missing or null"),
    "content a dict": (Reply(content={"score": 3}), "'content' is dict, expected text"),
    "content parts (valid OpenAI)": (
        Reply(content=[{"type": "text", "text": "{'score': "}, {"type": "refusal"}, {"type": "text", "text": "4}"}]),
        4,
    ),
    "content parts without text": (Reply(content=[{"type": "image_url"}, 5]), "'content' is a list without text"),
    "content parts with a number as text": (Reply(content=[{"type": "text", "text": 4}]), "without text parts"),
    "5000-digit score": (ok('{"score": ' + "1" * 5000 + "}"), "unparseable reply: not a Python or JSON dict"),
    "400-digit score": (ok("{'score': " + "1" * 400 + "}"), "is outside 0..5"),
    "deeply nested score": (ok('{"score": ' + NESTED + "}"), "unparseable reply: not a Python or JSON dict"),
    "score inf": (ok("{'score': 1e999}"), "'score' inf is outside 0..5"),
    "score NaN (JSON)": (ok('{"score": NaN}'), "'score' is not a number: nan"),
    "lone surrogate in content": (Reply(body=b'{"choices": [{"message": {"content": "\\ud800 {\'score\': 2}"}}]}'), 2),
    "model a list": (_model(["judge-a", "judge-b"]), 4),
    "model a number": (_model(5), 4),
    "model an object": (_model({"name": "judge"}), 4),
    "gzip-compressed although not asked": (
        Reply(body=gzip.compress(json.dumps(completion("{'score': 3}")).encode()), headers={"Content-Encoding": "gzip"}),
        "a compressed reply (Content-Encoding: gzip)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ODD_REPLIES))
def test_an_odd_reply_is_a_result_or_a_recorded_failure(tmp_path, capsys, case):
    reply, expected = ODD_REPLIES[case]
    preds = write_preds(tmp_path / "p.json", 2)
    # q0 gets the odd reply; q1 a plain one whose model is text ("model of mixed types": 5 and "judge-b" together).
    script = {"q0": reply, "q1": Reply(content="{'score': 2}", model="judge-b")}
    with ScriptedServer(lambda n, record, body: script[record]) as server:
        status, out = evaluate(
            server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e",
            "--num_workers", "2", "--max_retries", "1", capsys=capsys,
        )  # fmt: skip
        asked = server.count("q0")
    assert "Traceback" not in out.err
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    summary = results["criteria"]["correctness"]
    cached = [json.loads(line) for line in (tmp_path / "e" / "correctness.cache.jsonl").read_text().splitlines()]
    (q0,) = [c for c in cached[1:] if c["key"] == "v0_0"]
    if isinstance(expected, int):
        assert status == 0 and q0["ok"] and q0["reply"] == {"score": expected} and asked == 1
        assert summary["judged"] == 2 and summary["mean"] == pytest.approx((expected + 2) / 2)
    else:
        assert status == 1 and not q0["ok"] and expected in q0["reason"], q0["reason"]
        assert asked == 2 and q0["attempts"] == 2  # asked again at once, then recorded
        assert [f["key"] for f in summary["failures"]] == ["v0_0"] and summary["judged"] == 1
        assert len(q0["raw"] or "") < 4100  # the cache keeps at most 4000 characters of a reply
    assert results["judge"]["reported_models"] in (["judge-b"], ["judge-b", "scripted-judge-1"])


def test_drip_fed_replies_end_at_the_total_deadline(tmp_path, capsys):
    """A server sending one byte every 0.1 s (the body: ~250 bytes, 25 s; or the status line and headers too)
    keeps every socket read alive; each attempt must still end at --timeout in total."""
    preds = write_preds(tmp_path / "p.json", 2)
    drips = {
        "q0": Reply(content="{'score': 3}", drip=0.1),
        "q1": Reply(content="{'score': 3}", drip=0.1, drip_headers=True),
    }
    timeout, retries = 1.0, 1
    with ScriptedServer(lambda n, record, body: drips[record]) as server:
        t0 = time.monotonic()
        status, out = evaluate(
            server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e",
            "--num_workers", "1", "--max_retries", str(retries), "--timeout", str(timeout), capsys=capsys,
        )  # fmt: skip
        wall = time.monotonic() - t0
        starts = {record: [e.time for e in server.log if e.record == record] for record in drips}
    # 2 records x 2 attempts x 1 s, one after the other, plus backoffs of at most 0.03 s and the run's own time
    # (unbounded, each attempt would take the 25 s of the drip).
    print(f"4 drip-fed attempts at --timeout {timeout:g}: {wall:.2f} s")
    assert wall < 2 * (retries + 1) * timeout + 2.5, wall
    assert status == 1 and "Traceback" not in out.err
    for record, times in starts.items():
        assert len(times) == retries + 1 and times[1] - times[0] < timeout + 0.5, (record, times)
    summary = json.loads((tmp_path / "e" / "results.json").read_text())["criteria"]["correctness"]
    assert [f["reason"] for f in summary["failures"]] == ["no reply within --timeout 1 s"] * 2


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "read-until-close"])
def test_a_huge_reply_is_cut_at_the_size_limit(tmp_path, capsys, declared):
    """A 64 MB completion (whose content would parse): abandoned at 1 MiB, the allocations stay bounded, the cache
    keeps a line of at most a few KB, and the record is a recorded failure."""
    size = 64 * 2**20
    preds = write_preds(tmp_path / "p.json", 1)
    with ScriptedServer(lambda n, record, body: Reply(stream_size=size, declare_size=declared)) as server:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            status, out = evaluate(
                server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e",
                "--max_retries", "1", capsys=capsys,
            )  # fmt: skip
            peak_mb = (tracemalloc.get_traced_memory()[1] - before) / 2**20
        finally:
            tracemalloc.stop()
    assert peak_mb < 16, f"{peak_mb:.0f} MB traced during the run"
    assert status == 1 and "Traceback" not in out.err
    summary = json.loads((tmp_path / "e" / "results.json").read_text())["criteria"]["correctness"]
    (failure,) = summary["failures"]
    assert f"more than the {MAX_REPLY_BYTES} bytes a reply may have" in failure["reason"]
    assert failure["attempts"] == 2
    assert (tmp_path / "e" / "correctness.cache.jsonl").stat().st_size < 16_000


def test_read_completion_joins_text_parts_and_keeps_only_a_text_model():
    body = completion([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], model=["x"])
    got = read_completion(json.dumps(body).encode())
    assert (got.text, got.model) == ("ab", None)
    assert read_completion(json.dumps(completion("c", model="m" * 500)).encode()).model == "m" * 200


def test_requests_carry_any_text_and_a_bad_key_is_one_line(tmp_path, capsys):
    # Messages may hold what httpx2's own JSON encoder refuses (a lone surrogate from a JSON escape, NaN): the client
    # encodes the request itself, as ASCII JSON, and the record is judged.
    messages = [{"role": "user", "content": "Question: q0\nPredicted Answer: p\ud800 \u00e9"}]
    with ScriptedServer(lambda n, record, body: ok("{'score': 5}")) as server:
        judge = Judge(JudgeSettings("judge-x", server.api_base, temperature=float("nan")), api_key="k")
        outcome = judge.judge(messages, PAIR)
        assert outcome["ok"] and outcome["reply"] == {"score": 5}, outcome
        assert server.log[0].body["messages"] == messages
        # A key no HTTP header can carry: one line, without the key.
        preds = write_preds(tmp_path / "p.json", 1)
        status, out = evaluate(
            server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e",
            "--api_key", "sk-\u00e9t\u00e9", capsys=capsys, key=False,
        )  # fmt: skip
    assert status == 1 and "Traceback" not in out.err and "\u00e9t\u00e9" not in out.err
    assert "error: the API key holds non-ASCII characters" in out.err


def test_client_settings_refuse_a_negative_retry_count():
    """``Asker.ask`` makes ``max_retries + 1`` attempts; a negative count (a Python caller's) is refused where it is
    given, not an error from inside ``ask`` later."""
    from video_chatgpt.llm_client import ClientSettings

    assert ClientSettings(model="m", api_base="http://127.0.0.1:1", max_retries=0).max_retries == 0
    with pytest.raises(ValueError, match="max_retries must be >= 0, got -1"):
        ClientSettings(model="m", api_base="http://127.0.0.1:1", max_retries=-1)
