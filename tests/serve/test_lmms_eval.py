"""lmms-eval scores the served model: its ``openai`` chat model, videos as ``video_url`` parts, on the local task
``vcg_sample_colour`` (``video-chatgpt sample lmms-task``: a YAML and a JSONL file, no hub access); the accuracy it
prints equals the accuracy of our own ``predict`` on the same prompts, scored by the task's own rule.

lmms-eval runs in a virtualenv of its own (it pins ``av<16``): ``LMMS_EVAL_PYTHON`` names its python, else
``make lmms-eval-venv`` makes ``.venv-lmms-eval`` (PyPI). The model is the quickstart's (it has learned the colour);
``VCG_QUICKSTART_WORKDIR`` names a finished ``make quickstart`` folder to reuse, else the quickstart runs here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.serve import serve_process

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SERVED_NAME = "video-chatgpt-sample"
LMMS_EVAL_TIMEOUT_S = 1200
# One try per question (a failed request is scored wrong, so the accuracies differ), a CPU's patience per request.
MODEL_ARGS = "pass_video_url=True,max_retries=1,timeout=600,num_concurrent=4"


def load_task_utils(folder: Path):
    """The task folder's ``utils.py``, as lmms-eval loads it."""
    spec = importlib.util.spec_from_file_location("vcg_sample_colour_utils", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ fast: the task files
def test_the_task_folder_holds_the_held_out_questions(sample_world, tmp_path):
    from video_chatgpt.sample.lmms_task import TASK, write_lmms_task

    paths = write_lmms_task(sample_world["test_qa"].parent, tmp_path / "task")
    config = yaml.load(paths["yaml"].read_text(), Loader=yaml.BaseLoader)  # leaves the !function tags as text
    assert config["task"] == TASK and config["dataset_path"] == "json"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]) == paths["data"]  # absolute: lmms-eval's cwd differs
    records = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    questions = json.loads(sample_world["test_qa"].read_text())
    assert len(records) == len(questions)
    utils = load_task_utils(paths["folder"])
    for record, qa in zip(records, questions):
        assert Path(record["video"]).is_absolute() and Path(record["video"]).is_file()
        assert Path(record["video"]).stem == qa["video_name"]
        assert record["options"][ord(record["answer"]) - ord("A")] == qa["answer"]
        assert record["prompt"].startswith(qa["Q"]) and "\nA. red\n" in record["prompt"]
        messages = utils.doc_to_messages(record)
        assert messages[0]["content"][0] == {"type": "video", "url": record["video"]}
        assert utils.process_results(record, [qa["A"]]) == {"accuracy": 1.0}  # "The object is <colour>."
    predict_qa = json.loads(paths["predict_qa"].read_text())
    assert [q["Q"] for q in predict_qa] == [r["prompt"] for r in records]  # predict asks exactly what lmms-eval asks


@pytest.mark.parametrize(
    ("reply", "chosen"),
    [
        ("The object is green.", "B"),
        ("B", "B"),
        ("(C) blue", "C"),
        ("D. yellow", "D"),
        ("the object is Red", "A"),
        ("The object is red or green.", ""),  # two options named: no choice
        ("A green circle", "B"),  # "A" is a word here, not the option
        ("A greenish thing", ""),  # "green" is not a whole word here
        ("E.", ""),  # no option E
        ("", ""),
    ],
)
def test_the_task_scores_a_reply_by_the_option_it_chooses(tmp_path, sample_world, reply, chosen):
    from video_chatgpt.sample.lmms_task import write_lmms_task

    utils = load_task_utils(write_lmms_task(sample_world["test_qa"].parent, tmp_path / "task")["folder"])
    assert utils.chosen_option(reply, ["red", "green", "blue", "yellow"]) == chosen


def test_the_server_takes_the_request_lmms_eval_sends(media):
    """lmms-eval's ``openai`` model with ``pass_video_url=True`` sends a ``file://`` URL and ``media_io_kwargs``."""
    from video_chatgpt.serve.protocol import parse_chat_request

    video = media["videos"][0]
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": f"file://{video}"}},
                    {"type": "text", "text": "What colour?\nA. red"},
                ],
            }
        ],
        "max_tokens": 24,
        "temperature": 0,
        "media_io_kwargs": {"video": {"num_frames": 32}},
    }
    request = parse_chat_request(body)
    assert request.video.url == f"file://{video}" and request.question == "What colour?\nA. red"
    assert request.temperature == 0 and request.max_tokens == 24


# ------------------------------------------------------------------------------------- slow: lmms-eval end to end
def lmms_eval_python() -> Path:
    """lmms-eval's python: ``LMMS_EVAL_PYTHON``, else ``.venv-lmms-eval`` (made by ``make lmms-eval-venv``)."""
    if os.environ.get("LMMS_EVAL_PYTHON"):
        return Path(os.environ["LMMS_EVAL_PYTHON"])
    subprocess.run(["make", "-C", str(REPO), "lmms-eval-venv", f"PYTHON={sys.executable}"], check=True, timeout=3600)
    return REPO / ".venv-lmms-eval" / "bin" / "python"


def quickstart_workdir(tmp_path: Path) -> Path:
    """A finished quickstart folder: ``VCG_QUICKSTART_WORKDIR``, else the quickstart run here."""
    if os.environ.get("VCG_QUICKSTART_WORKDIR"):
        return Path(os.environ["VCG_QUICKSTART_WORKDIR"])
    work = tmp_path / "quickstart"
    result = subprocess.run(
        [sys.executable, "-m", "video_chatgpt.quickstart", "--workdir", str(work)],
        cwd=REPO,
        env={**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


def printed_accuracy(stdout: str, task: str) -> float:
    """The accuracy in the results table lmms-eval prints (``|vcg_sample_colour|...|accuracy|↑|0.875|±|...``)."""
    rows = [line for line in stdout.splitlines() if line.startswith(f"|{task}") and "|accuracy" in line]
    assert len(rows) == 1, stdout[-3000:]
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    return float(cells[cells.index("accuracy") + 2])


@pytest.mark.slow
def test_lmms_eval_scores_the_served_model_as_predict_does(tmp_path):
    from video_chatgpt.sample.lmms_task import MAX_NEW_TOKENS, TASK, write_lmms_task

    python = lmms_eval_python()
    work = quickstart_workdir(tmp_path)
    run, tower = work / "Video-ChatGPT_7B-1.1_Checkpoints", work / "models" / "clip-vit-tiny"
    task = write_lmms_task(work / "world", tmp_path / "task")
    utils = load_task_utils(task["folder"])
    records = [json.loads(line) for line in task["data"].read_text().splitlines()]

    flags = ["--model-name", str(run), "--vision_tower", str(tower), "--served_model_name", SERVED_NAME,
             "--allowed_local_media_path", str(task["videos"])]  # fmt: skip
    with serve_process(flags, tmp_path / "server.log") as running:
        model_args = f"model_version={SERVED_NAME},base_url={running['url']}/v1,{MODEL_ARGS}"
        command = [str(python), "-m", "lmms_eval", "--model", "openai", "--model_args", model_args,
                   "--tasks", TASK, "--include_path", str(task["folder"]), "--batch_size", "1",
                   "--output_path", str(tmp_path / "lmms_out"), "--log_samples"]  # fmt: skip
        env = {**os.environ, **OFFLINE, "OPENAI_API_KEY": "unused", "HF_HOME": str(tmp_path / "hf_home")}
        lmms = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=LMMS_EVAL_TIMEOUT_S)  # fmt: skip
    print(lmms.stdout[-2000:])
    assert lmms.returncode == 0, lmms.stdout[-3000:] + lmms.stderr[-5000:]
    assert "Error during evaluation" not in lmms.stdout + lmms.stderr  # lmms-eval logs it and still exits 0
    lmms_accuracy = printed_accuracy(lmms.stdout, TASK)
    (results,) = (tmp_path / "lmms_out").rglob("*_results.json")
    assert json.loads(results.read_text())["results"][TASK]["accuracy,none"] == pytest.approx(lmms_accuracy, abs=1e-4)
    (samples,) = (tmp_path / "lmms_out").rglob(f"*_samples_{TASK}.jsonl")
    lmms_answers = {s["doc_id"]: s["filtered_resps"] for s in map(json.loads, samples.read_text().splitlines())}
    server_log = (tmp_path / "server.log").read_text()
    assert server_log.count("POST /v1/chat/completions") >= len(records)  # lmms-eval asked our server

    out = tmp_path / "preds"
    predict = subprocess.run(
        [sys.executable, "-m", "video_chatgpt.cli", "predict", "--task", "general", "--gt_file", str(task["predict_qa"]),
         "--video_dir", str(task["videos"]), "--output_dir", str(out), "--output_name", "colour",
         "--model-name", str(run), "--vision_tower", str(tower), "--temperature", "0",
         "--max_new_tokens", str(MAX_NEW_TOKENS)],
        cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    preds = json.loads((out / "colour.json").read_text())
    scores = [utils.process_results(record, [p["pred"]])["accuracy"] for record, p in zip(records, preds, strict=True)]
    predict_accuracy = sum(scores) / len(scores)
    print(f"lmms-eval accuracy {lmms_accuracy:.4f}  predict accuracy {predict_accuracy:.4f}  ({len(scores)} questions)")
    assert lmms_accuracy == pytest.approx(predict_accuracy, abs=1e-4)  # lmms-eval prints 4 decimals
    assert predict_accuracy >= 0.5  # four colours: chance is 0.25
    assert [lmms_answers[k] for k in range(len(records))] == [p["pred"] for p in preds]  # the very same answers
