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
    assert ast.literal_eval(rule_judgement(user_prompt("temporal", {**same, "pred": "The object is blue."}))) == \
        {"score": 4}  # round(5 * 0.75)
    assert ast.literal_eval(rule_judgement(user_prompt("qa", {"q": "Colour?", "a": "red", "pred": "It is red."}))) == \
        {"pred": "yes", "score": 5}
    assert ast.literal_eval(rule_judgement(user_prompt("qa", {"q": "Colour?", "a": "red", "pred": "Blue."}))) == \
        {"pred": "no", "score": 0}
    consistent = {"q1": "a", "q2": "b", "a": "The object is red.", "pred1": "The object is red.",
                  "pred2": "The object is blue."}
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
    return cli_main(["evaluate", "--api_base", api_base, "--judge_model", "sample-rule-judge",
                     "--api_key_env", "VCG_SAMPLE_NO_KEY", *map(str, argv)])


def test_reference_answers_score_full_marks_and_a_model_runs_end_to_end(sample_world, tiny_llava, tiny_clip,
                                                                         judge_server, tmp_path):
    bench = make_sample_benchmark(sample_world["truth"].parent)
    generic = json.loads(bench["generic_qa"].read_text())
    assert len(generic) == 2 * 4 and {"video_name", "Q", "A"} <= set(generic[0])
    # The reference answers as predictions: every criterion scores 5 and QA accuracy is 100%.
    (tmp_path / "ref.json").write_text(json.dumps([{**r, "pred": r["A"]} for r in generic]))
    assert evaluate(judge_server, "--task", "correctness", "--pred_path", tmp_path / "ref.json",
                    "--output_dir", tmp_path / "ref_eval") == 0
    s = json.loads((tmp_path / "ref_eval" / "results.json").read_text())["criteria"]["correctness"]
    assert (s["mean"], s["judged"]) == (5, 8)

    # A model (the untrained tiny base) through predict on the held-out videos, then the judge.
    common = ["--video_dir", bench["videos"], "--output_dir", tmp_path / "preds", "--model-name", tiny_llava,
              "--vision_tower", tiny_clip, "--temperature", "0", "--max_new_tokens", "6", "--device", "cpu"]
    assert cli_main(["predict", "--task", "msvd_qa", "--gt_file_question", str(bench["qa_questions"]),
                     "--gt_file_answers", str(bench["qa_answers"]), "--output_name", "sample_qa",
                     *map(str, common)]) == 0
    preds = json.loads((tmp_path / "preds" / "sample_qa.json").read_text())
    assert len(preds) == 8 and all(set(p) >= {"video_name", "Q", "A", "pred", "question_id"} for p in preds)
    assert evaluate(judge_server, "--task", "qa", "--dataset", "msvd", "--pred_path",
                    tmp_path / "preds" / "sample_qa.json", "--output_dir", tmp_path / "qa_eval") == 0
    s = json.loads((tmp_path / "qa_eval" / "results.json").read_text())["criteria"]["qa"]
    assert s["judged"] == 8 and s["failed"] == 0 and 0 <= s["accuracy"] <= 100
    assert "| accuracy (%) |" in (tmp_path / "qa_eval" / "results.md").read_text()
