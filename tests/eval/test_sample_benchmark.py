"""The offline sample benchmark end to end: sample world -> benchmark files -> predict -> evaluate against the
rule-based judge server (real HTTP on 127.0.0.1), and the rule judge itself."""

from __future__ import annotations

import ast
import json
import os
import threading

import pytest

from video_chatgpt.cli import main as cli_main
from video_chatgpt.eval.protocol import CRITERIA, build_messages, load_prompts
from video_chatgpt.sample.benchmark import make_judge_server, make_sample_benchmark, overlap_f1, rule_judgement


def user_prompt(criterion: str, qa_set: dict) -> str:
    c = CRITERIA[criterion]
    return build_messages(load_prompts()[c.prompt_key], c.kind, qa_set)[1]["content"]


def test_rule_judge_reads_the_shipped_prompts():
    same = {"q": "What colour?", "a": "The object is red.", "pred": "The object is red."}
    assert ast.literal_eval(rule_judgement(user_prompt("correctness", same))) == {"score": 5}
    wrong = {**same, "pred": "A green circle."}
    assert ast.literal_eval(rule_judgement(user_prompt("detail", wrong))) == {"score": 0}
    assert overlap_f1("The object is red.", "The object is blue.") == pytest.approx(0.75)
    assert ast.literal_eval(rule_judgement(user_prompt("temporal", {**same, "pred": "The object is blue."}))) == {
        "score": 4
    }  # round(5 * 0.75)
    assert ast.literal_eval(rule_judgement(user_prompt("qa", {"q": "Colour?", "a": "red", "pred": "It is red."}))) == {
        "pred": "yes",
        "score": 5,
    }
    assert ast.literal_eval(rule_judgement(user_prompt("qa", {"q": "Colour?", "a": "red", "pred": "Blue."}))) == {
        "pred": "no",
        "score": 0,
    }
    consistent = {
        "q1": "a",
        "q2": "b",
        "a": "The object is red.",
        "pred1": "The object is red.",
        "pred2": "The object is blue.",
    }
    assert ast.literal_eval(rule_judgement(user_prompt("consistency", consistent))) == {"score": 4}


@pytest.fixture()
def judge_server():
    server = make_judge_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def evaluate(api_base, *argv):
    os.environ.pop("VCG_SAMPLE_NO_KEY", None)
    return cli_main(
        [
            "evaluate",
            "--api_base",
            api_base,
            "--judge_model",
            "sample-rule-judge",
            "--api_key_env",
            "VCG_SAMPLE_NO_KEY",
            *map(str, argv),
        ]
    )


def test_reference_answers_score_full_marks_and_a_model_runs_end_to_end(
    sample_world, tiny_llava, tiny_clip, judge_server, tmp_path
):
    bench = make_sample_benchmark(sample_world["truth"].parent)
    generic = json.loads(bench["generic_qa"].read_text())
    assert len(generic) == 2 * 4 and {"video_name", "Q", "A"} <= set(generic[0])
    # The reference answers as predictions: every criterion scores 5 and QA accuracy is 100%.
    (tmp_path / "ref.json").write_text(json.dumps([{**r, "pred": r["A"]} for r in generic]))
    assert (
        evaluate(
            judge_server,
            "--task",
            "correctness",
            "--pred_path",
            tmp_path / "ref.json",
            "--output_dir",
            tmp_path / "ref_eval",
        )
        == 0
    )
    s = json.loads((tmp_path / "ref_eval" / "results.json").read_text())["criteria"]["correctness"]
    assert (s["mean"], s["judged"]) == (5, 8)

    # A model (the untrained tiny base) through predict on the held-out videos, then the judge.
    common = [
        "--video_dir",
        bench["videos"],
        "--output_dir",
        tmp_path / "preds",
        "--model-name",
        tiny_llava,
        "--vision_tower",
        tiny_clip,
        "--temperature",
        "0",
        "--max_new_tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert (
        cli_main(
            [
                "predict",
                "--task",
                "msvd_qa",
                "--gt_file_question",
                str(bench["qa_questions"]),
                "--gt_file_answers",
                str(bench["qa_answers"]),
                "--output_name",
                "sample_qa",
                *map(str, common),
            ]
        )
        == 0
    )
    preds = json.loads((tmp_path / "preds" / "sample_qa.json").read_text())
    assert len(preds) == 8 and all(set(p) >= {"video_name", "Q", "A", "pred", "question_id"} for p in preds)
    assert (
        evaluate(
            judge_server,
            "--task",
            "qa",
            "--dataset",
            "msvd",
            "--pred_path",
            tmp_path / "preds" / "sample_qa.json",
            "--output_dir",
            tmp_path / "qa_eval",
        )
        == 0
    )
    s = json.loads((tmp_path / "qa_eval" / "results.json").read_text())["criteria"]["qa"]
    assert s["judged"] == 8 and s["failed"] == 0 and 0 <= s["accuracy"] <= 100
    assert "| accuracy (%) |" in (tmp_path / "qa_eval" / "results.md").read_text()


def test_benchmark_finds_the_original_layouts(tmp_path):
    from video_chatgpt.eval.benchmark import discover

    for name in ("generic_qa.json", "temporal_qa.json", "consistency_qa.json", "notes.json"):
        (tmp_path / name).write_text("[]")
    msvd = tmp_path / "MSVD_Zero_Shot_QA"
    (msvd / "videos").mkdir(parents=True)
    for name in ("test_q.json", "test_a.json"):
        (msvd / name).write_text("[]")
    (tmp_path / "anet_questions.json").write_text("[]")
    (tmp_path / "anet_answers.json").write_text("[]")
    (tmp_path / "lonely_q.json").write_text("[]")  # no answer file: not a set
    sets = {s.label: s for s in discover(tmp_path)}
    assert set(sets) == {"generic", "temporal", "consistency", "anet_qa", "msvd_zero_shot_qa_test_qa"}
    assert sets["generic"].criteria == ("correctness", "detail", "context") and sets["generic"].task == "general"
    assert (sets["msvd_zero_shot_qa_test_qa"].task, sets["msvd_zero_shot_qa_test_qa"].dataset) == ("msvd_qa", "msvd")
    assert sets["msvd_zero_shot_qa_test_qa"].video_dir == msvd / "videos"  # the set's own videos
    assert sets["anet_qa"].files == (tmp_path / "anet_questions.json", tmp_path / "anet_answers.json")
    assert (sets["anet_qa"].dataset, sets["generic"].video_dir) == ("activitynet", None)


def test_benchmark_refuses_a_folder_without_sets(tmp_path):
    from video_chatgpt.errors import UserError
    from video_chatgpt.eval.benchmark import discover

    (tmp_path / "readme.json").write_text("[]")
    with pytest.raises(UserError, match="no benchmark file found"):
        discover(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        discover(tmp_path / "nope")


def test_benchmark_chains_predict_and_evaluate_and_resumes(
    sample_world, tiny_llava, tiny_clip, judge_server, tmp_path, capsys
):
    bench = make_sample_benchmark(sample_world["truth"].parent)
    out = tmp_path / "bench"
    argv = [
        "benchmark",
        "--benchmark_dir",
        str(bench["generic_qa"].parent),
        "--video_dir",
        str(bench["videos"]),
        "--model-name",
        str(tiny_llava),
        "--vision_tower",
        str(tiny_clip),
        "--temperature",
        "0",
        "--max_new_tokens",
        "4",
        "--device",
        "cpu",
        "--output_dir",
        str(out),
        "--api_base",
        judge_server,
        "--judge_model",
        "sample-rule-judge",
        "--api_key_env",
        "VCG_SAMPLE_NO_KEY",
        "--num_workers",
        "4",
    ]
    os.environ.pop("VCG_SAMPLE_NO_KEY", None)
    assert cli_main(argv) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    got = {(r["set"], r["criterion"]): r for r in summary["rows"]}
    assert set(got) == {
        ("generic", "correctness"),
        ("generic", "detail"),
        ("generic", "context"),
        ("temporal", "temporal"),
        ("consistency", "consistency"),
        ("qa", "qa"),
    }
    generic = json.loads(bench["generic_qa"].read_text())
    assert all(r["failed"] == 0 for r in got.values())
    assert got[("generic", "correctness")]["total"] == len(generic) and got[("qa", "qa")]["total"] == 8
    # Each row is the per-set evaluate result, and the predictions are `predict`'s own file.
    per_set = json.loads((out / "eval" / "generic" / "results.json").read_text())["criteria"]["detail"]
    assert got[("generic", "detail")]["mean"] == per_set["mean"]
    assert got[("generic", "correctness")]["published"] == 2.40
    assert len(json.loads((out / "preds" / "generic.json").read_text())) == len(generic)
    assert "| generic | Correctness" in (out / "benchmark.md").read_text()

    # A rerun answers and judges nothing again.
    capsys.readouterr()
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("0 to do") == 4  # every prediction file resumed complete: the model is not even loaded
    for label in ("generic", "temporal", "consistency", "qa"):
        assert json.loads((out / "eval" / label / "results.json").read_text())["run"]["requests"] == 0


def test_the_sample_benchmark_asks_only_what_the_sample_model_learns(sample_world):
    """The sample model learns the colour, not the shape or the direction: every question and answer is about the
    colour, so its scores measure the model, not the judge's word overlap on sentences it cannot know."""
    from video_chatgpt.sample.benchmark import benchmark_files

    truths = json.loads(sample_world["truth"].read_text())["test"]
    files = benchmark_files(truths)
    texts = [r.get("Q", "") + r.get("Q1", "") + r.get("question", "") for rs in files.values() for r in rs]
    assert all("colour" in t for t in texts if t), texts
    for t in truths:
        for rs in (files["generic_qa.json"], files["temporal_qa.json"]):
            answers = {r["A"] for r in rs if r["video_name"] == t["video_id"]}
            assert t["shape"] not in " ".join(answers) and t["direction"] not in " ".join(answers)
