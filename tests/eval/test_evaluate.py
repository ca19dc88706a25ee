"""``video-chatgpt evaluate`` against a scripted OpenAI-compatible server on 127.0.0.1 (real HTTP, real client).

Each record's question names it (``q0``, ``q1``, ...); the server's script answers per record and attempt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.eval.server import Reply, ScriptedServer, ok
from tests.helpers.eval import KEY_ENV, SECRET, evaluate, write_preds
from video_chatgpt.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def attempt(server, record) -> int:
    return server.count(record)  # 1 for the first request about the record (it is logged before the script runs)


def assert_no_secret(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    for text in texts:
        assert SECRET not in text


def test_scripted_replies_exact_means_retries_failures_and_files(tmp_path, capsys):
    preds = write_preds(tmp_path / "generic.json", 8)

    def script(n, record, body):
        k = attempt(server, record)
        if record == "q0":
            return ok("{'score': 3}")
        if record == "q1":
            return ok("{'score': 4.8}")
        if record == "q2":
            return ok("Sure! Here is my evaluation: {'score': 2} I hope this helps.")
        if record == "q3":  # garbage, then a valid dict: asked again
            return ok("I cannot judge this." if k == 1 else "{'score': 5}")
        if record == "q4":  # rate-limited once, with Retry-After
            return Reply(status=429, headers={"Retry-After": "1"}) if k == 1 else ok("{'score': 1}")
        if record == "q5":  # a server error, then JSON
            return Reply(status=500) if k == 1 else ok('{"score": 0}')
        if record == "q6":  # slower than --timeout, then fine
            return ok("{'score': 4}", delay=3.0 if k == 1 else 0.0)
        return ok("no idea")  # q7: never parses

    out_dir = tmp_path / "eval"
    with ScriptedServer(script) as server:
        t0 = time.monotonic()
        status, out = evaluate(
            server,
            "--task",
            "correctness",
            "--pred_path",
            preds,
            "--output_dir",
            out_dir,
            "--output_json",
            tmp_path / "correctness_results.json",
            "--num_workers",
            "4",
            "--max_retries",
            "2",
            "--timeout",
            "1",
            capsys=capsys,
        )
        wall = time.monotonic() - t0
        log = list(server.log)
        check_first_run(server, status, out, log, wall, out_dir, tmp_path)
        # Rerun: the 7 judged records are reused; only the failed one is asked again (and now parses).
        server.script = lambda n, record, body: ok("{'score': 2}")
        status, out = evaluate(
            server,
            "--task",
            "correctness",
            "--pred_path",
            preds,
            "--output_dir",
            out_dir,
            "--output_json",
            tmp_path / "correctness_results.json",
            "--max_retries",
            "2",
            capsys=capsys,
        )
        assert [e.record for e in server.log[len(log) :]] == ["q7"]
    assert status == 0
    s = json.loads((out_dir / "results.json").read_text())["criteria"]["correctness"]
    assert (s["judged"], s["failed"], s["mean"]) == (8, 0, pytest.approx((19.8 + 2) / 8))


def check_first_run(server, status, out, log, wall, out_dir, tmp_path):
    assert status == 1  # one record has no valid judgement
    per_record = {f"q{i}": sum(e.record == f"q{i}" for e in log) for i in range(8)}
    assert per_record == {"q0": 1, "q1": 1, "q2": 1, "q3": 2, "q4": 2, "q5": 2, "q6": 2, "q7": 3}  # bounded: 1 + 2
    assert all(e.authorization == f"Bearer {SECRET}" for e in log)  # the key is sent, in the header only
    assert all(e.body["temperature"] == 0 and e.body["seed"] == 0 and e.body["model"] == "judge-x" for e in log)
    q4 = [e.time for e in log if e.record == "q4"]
    assert q4[1] - q4[0] >= 0.95  # Retry-After: 1 honoured (the backoff alone would be ~0.02 s)
    assert wall < 20  # nothing hangs: the 3 s reply was abandoned after the 1 s timeout

    results = json.loads((out_dir / "results.json").read_text())
    s = results["criteria"]["correctness"]
    assert (s["total"], s["judged"], s["failed"]) == (8, 7, 1)
    assert s["mean"] == pytest.approx((3 + 4.8 + 2 + 5 + 1 + 0 + 4) / 7)  # 2.8286
    assert s["mean_int"] == pytest.approx((3 + 4 + 2 + 5 + 1 + 0 + 4) / 7)  # 2.7143, as the original computes it
    assert s["ci95"][0] < s["mean"] < s["ci95"][1]
    (failure,) = s["failures"]
    assert failure["key"] == "v1_2" and failure["attempts"] == 3 and failure["raw"] == "no idea"
    assert "unparseable" in failure["reason"]
    assert s["requests"] == len(log) == 14 and results["run"]["requests"] == 14
    judge = results["judge"]
    assert judge == {
        "model": "judge-x",
        "api_host": server.api_base.split("/")[2],
        "temperature": 0.0,
        "seed": 0,
        "reported_models": ["scripted-judge-1"],
    }
    assert len(results["prompts"]["sha256"]) == 64 and results["run"]["wall_time_s"] > 0

    # The original's combined JSON: key -> [reply, qa_set], judged records only; keys as the original makes them.
    combined = json.loads((tmp_path / "correctness_results.json").read_text())
    assert set(combined) == {"v0_0", "v1_0", "v2_0", "v0_1", "v1_1", "v2_1", "v0_2"}
    assert combined["v1_0"] == [{"score": 4.8}, {"q": "q1", "a": "a1", "pred": "p1"}]

    md = (out_dir / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Correctness"))
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "Correctness of information",
        "2.83",
        f"{s['ci95'][0]:.2f} - {s['ci95'][1]:.2f}",
        "2.71",
        "2.40",
        "7",
        "1",
        "8",
    ]
    assert "judge-x" in md and "14 requests" in md
    assert "1 records have no valid judgement" in out.err
    assert_no_secret(tmp_path, out.out, out.err)


def test_always_failing_server_is_bounded_and_listed(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 3)
    with ScriptedServer(lambda n, record, body: Reply(status=503)) as server:
        t0 = time.monotonic()
        status, out = evaluate(
            server,
            "--task",
            "detail",
            "--pred_path",
            preds,
            "--output_dir",
            tmp_path / "e",
            "--max_retries",
            "3",
            capsys=capsys,
        )
        assert len(server.log) == 3 * 4 and time.monotonic() - t0 < 10
    assert status == 1
    s = json.loads((tmp_path / "e" / "results.json").read_text())["criteria"]["detail"]
    assert (s["judged"], s["failed"], s["mean"]) == (0, 3, None)
    assert all(f["reason"] == "HTTP 503" and f["attempts"] == 4 for f in s["failures"])


def test_refused_key_stops_with_one_line_and_keeps_nothing_secret(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 5)
    with ScriptedServer(lambda n, record, body: Reply(status=401)) as server:
        status, out = evaluate(
            server, "--task", "context", "--pred_path", preds, "--output_dir", tmp_path / "e", capsys=capsys
        )
        assert len(server.log) == 1  # no retry and no other record: every one would be refused the same way
    assert status == 1
    assert "video-chatgpt evaluate: error: the judge server answered HTTP 401" in out.err
    assert "Traceback" not in out.err
    assert_no_secret(tmp_path, out.out, out.err)


def test_unreachable_server_and_missing_key(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 2)
    status = cli_main(
        [
            "evaluate",
            "--task",
            "correctness",
            "--pred_path",
            str(preds),
            "--output_dir",
            str(tmp_path / "e"),
            "--api_base",
            "http://127.0.0.1:9/v1",
            "--max_retries",
            "1",
            "--backoff",
            "0.01",
            "--api_key_env",
            "VCG_TEST_UNSET_KEY",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "cannot reach the judge at http://127.0.0.1:9/v1" in err and "Traceback" not in err
    os.environ.pop("VCG_TEST_UNSET_KEY", None)
    status = cli_main(
        [
            "evaluate",
            "--task",
            "correctness",
            "--pred_path",
            str(preds),
            "--output_dir",
            str(tmp_path / "e2"),
            "--api_key_env",
            "VCG_TEST_UNSET_KEY",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "set the environment variable VCG_TEST_UNSET_KEY" in err


def test_api_key_flag_works_with_a_warning_and_is_never_written(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 2)
    with ScriptedServer(lambda n, record, body: ok("{'score': 3}")) as server:
        status, out = evaluate(
            server,
            "--task",
            "temporal",
            "--pred_path",
            preds,
            "--output_dir",
            tmp_path / "e",
            "--api_key",
            SECRET,
            capsys=capsys,
            key=False,
        )
        assert {e.authorization for e in server.log} == {f"Bearer {SECRET}"}
    assert status == 0 and "--api_key is visible to other users" in out.err
    assert_no_secret(tmp_path, out.out, out.err)


def test_other_judge_settings_are_refused(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 2)
    with ScriptedServer(lambda n, record, body: ok("{'score': 3}")) as server:
        assert (
            evaluate(
                server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e", capsys=capsys
            )[0]
            == 0
        )
        status, out = evaluate(
            server,
            "--task",
            "correctness",
            "--pred_path",
            preds,
            "--output_dir",
            tmp_path / "e",
            "--temperature",
            "0.7",
            capsys=capsys,
        )
        assert len(server.log) == 2
    assert status == 1 and "with other settings (temperature 0.0 -> 0.7)" in out.err


def test_changed_prediction_is_judged_again(tmp_path, capsys):
    preds = write_preds(tmp_path / "p.json", 3)
    with ScriptedServer(lambda n, record, body: ok("{'score': 3}")) as server:
        evaluate(server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e", capsys=capsys)
        records = json.loads(preds.read_text())
        records[1]["pred"] = "a new answer"
        preds.write_text(json.dumps(records))
        evaluate(server, "--task", "correctness", "--pred_path", preds, "--output_dir", tmp_path / "e", capsys=capsys)
        assert sorted(e.record for e in server.log[:3]) == ["q0", "q1", "q2"]
        assert [e.record for e in server.log[3:]] == ["q1"]  # only the record whose messages changed


def test_qa_accuracy_and_score_beside_the_published_numbers(tmp_path, capsys):
    records = [{"id": f"vid{i}", "question": f"q{i}", "answer": "yes", "pred": "yes"} for i in range(5)]
    (tmp_path / "msvd_qa.json").write_text(json.dumps(records))
    replies = {
        "q0": "{'pred': 'yes', 'score': 5}",
        "q1": "{'pred': 'no', 'score': 1}",
        "q2": "{'pred': 'yes', 'score': 4.8}",
        "q3": "{'pred': 'YES ', 'score': 3}",
        "q4": "{'score': 3}",
    }
    with ScriptedServer(lambda n, record, body: ok(replies[record])) as server:
        status, out = evaluate(
            server,
            "--task",
            "qa",
            "--pred_path",
            tmp_path / "msvd_qa.json",
            "--output_dir",
            tmp_path / "e",
            "--max_retries",
            "1",
            capsys=capsys,
        )
    assert status == 1
    s = json.loads((tmp_path / "e" / "results.json").read_text())["criteria"]["qa"]
    assert s["dataset"] == "msvd" and (s["judged"], s["failed"]) == (4, 1)
    assert s["accuracy"] == pytest.approx(75.0) and (s["yes"], s["no"]) == (3, 1)
    assert s["mean"] == pytest.approx((5 + 1 + 4.8 + 3) / 4) and s["mean_int"] == pytest.approx((5 + 1 + 4 + 3) / 4)
    md = (tmp_path / "e" / "results.md").read_text()
    assert "| accuracy (%) | 75.0 |" in md and "| 64.9 | 4 | 1 | 5 |" in md and "| 3.3 |" in md
    combined = json.loads((tmp_path / "e" / "qa_combined.json").read_text())
    assert combined["vid2_0"] == [{"pred": "yes", "score": 4.8}, {"q": "q2", "a": "yes", "pred": "yes"}]


def test_vcgbench_judges_five_criteria_from_three_files(tmp_path, capsys):
    general = write_preds(tmp_path / "generic.json", 2)
    temporal = write_preds(tmp_path / "temporal.json", 2, start=10)
    consistency = write_preds(tmp_path / "consistency.json", 2, consistency=True, start=20)

    def script(n, record, body):
        system = body["messages"][0]["content"]
        score = {"factual accuracy": 1, "detail orientation": 2, "contextual": 3, "temporal": 4, "consistency": 5}
        return ok(str({"score": next(v for k, v in score.items() if k in system)}))

    with ScriptedServer(script) as server:
        status, out = evaluate(
            server,
            "--task",
            "vcgbench",
            "--pred_general",
            general,
            "--pred_temporal",
            temporal,
            "--pred_consistency",
            consistency,
            "--output_dir",
            tmp_path / "e",
            capsys=capsys,
        )
        assert len(server.log) == 10
        user = next(e.body for e in server.log if e.record == "q20")["messages"][1]["content"]
        assert "Question 2: q20 again" in user and "Predicted Answer to Question 2: p20" in user
    assert status == 0
    criteria = json.loads((tmp_path / "e" / "results.json").read_text())["criteria"]
    assert {k: v["mean"] for k, v in criteria.items()} == {
        "correctness": 1,
        "detail": 2,
        "context": 3,
        "temporal": 4,
        "consistency": 5,
    }
    for name in criteria:
        assert (tmp_path / "e" / f"{name}_combined.json").is_file()
    md = (tmp_path / "e" / "results.md").read_text()
    assert "| Consistency | 5.00 |" in md and "| 2.37 |" in md


def test_killed_run_resumes_and_judges_each_record_exactly_once(tmp_path):
    """A real subprocess is killed (SIGKILL) with one request in flight; the rerun asks only what is not cached."""
    preds = write_preds(tmp_path / "p.json", 10)
    release = threading.Event()

    def script(n, record, body):
        if record == "q5" and attempt(server, record) == 1:
            return Reply(content="{'score': 1}", block=release)  # in flight when the kill comes
        return ok("{'score': 2}")

    out_dir = tmp_path / "e"
    argv = [
        "evaluate",
        "--task",
        "correctness",
        "--pred_path",
        str(preds),
        "--output_dir",
        str(out_dir),
        "--num_workers",
        "1",
        "--api_key_env",
        KEY_ENV,
        "--judge_model",
        "judge-x",
    ]
    with ScriptedServer(script) as server:
        env = {**os.environ, KEY_ENV: SECRET}
        child = subprocess.Popen(
            [sys.executable, "-m", "video_chatgpt.cli", *argv, "--api_base", server.api_base],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while server.count("q5") == 0 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.02)
            assert server.count("q5") == 1, child.communicate(timeout=5)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            release.set()
            if child.poll() is None:
                child.kill()
        out, err = child.communicate()
        cached = [json.loads(line) for line in (out_dir / "correctness.cache.jsonl").read_text().splitlines()[1:]]
        assert [c["key"] for c in cached] == ["v0_0", "v1_0", "v2_0", "v0_1", "v1_1"]  # q0..q4, q5 was in flight
        status, _ = evaluate(server, *argv[1:-4], "--num_workers", "1")
        counts = {f"q{i}": server.count(f"q{i}") for i in range(10)}
    assert status == 0
    assert counts == {**{f"q{i}": 1 for i in range(10)}, "q5": 2}  # only the request in flight was lost
    lines = [json.loads(line)["key"] for line in (out_dir / "correctness.cache.jsonl").read_text().splitlines()[1:]]
    assert sorted(lines) == sorted(set(lines)) and len(lines) == 10  # each record judged exactly once
    assert json.loads((out_dir / "results.json").read_text())["criteria"]["correctness"]["judged"] == 10
    assert_no_secret(tmp_path, out.decode(), err.decode())


def test_parallel_workers_beat_the_serial_time(tmp_path, capsys):
    """500 records, 50 ms per reply: serially at least 25 s; 16 workers must take well under that."""
    n, delay = 500, 0.05
    preds = write_preds(tmp_path / "p.json", n)
    with ScriptedServer(lambda i, record, body: ok("{'score': 3}", delay=delay)) as server:
        t0 = time.monotonic()
        status, _ = evaluate(
            server,
            "--task",
            "correctness",
            "--pred_path",
            preds,
            "--output_dir",
            tmp_path / "e",
            "--num_workers",
            "16",
            capsys=capsys,
        )
        wall = time.monotonic() - t0
        assert len(server.log) == n
    assert status == 0
    serial_bound = n * delay
    print(f"500 records at 16 workers: {wall:.1f} s (serial >= {serial_bound:.0f} s)")
    assert wall < serial_bound / 2  # measured 4-8 s on 2 shared cores (bench/evaluate.py: 8x faster than serial)
