"""The training report and loss plot for a tiny real run: finished, resumed, and read only from its checkpoints."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import make_training_data
from video_chatgpt.errors import UserError
from video_chatgpt.train.report import NOT_RECORDED, main, moving_average, read_run, write_report


def train_flags(data, model, out, max_steps):
    return [
        "--model_name_or_path",
        str(model),
        "--data_path",
        str(data["data_path"]),
        "--video_folder",
        str(data["video_folder"]),
        "--output_dir",
        str(out),
        "--max_steps",
        str(max_steps),
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--tune_mm_mlp_adapter",
        "True",
        "--mm_use_vid_start_end",
        "--report_to",
        "none",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_world, tiny_llava):
    """Train 2 steps (a finished run, kept as a copy), then resume the same folder to 4 steps."""
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("report")
    data = make_training_data(sample_world["instructions"], tiny_llava, root / "data")
    out = root / "run"
    train(train_flags(data, tiny_llava, out, 2))
    finished = root / "finished"
    shutil.copytree(out, finished)
    train(train_flags(data, tiny_llava, out, 4))  # checkpoint-2 in the folder: resumes automatically
    return {"finished": finished, "resumed": out, "root": root}


def check_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # not a blank canvas: curves, axes and labels drawn


def test_finished_run(runs):
    out = runs["finished"]
    assert (out / "training_report.md").is_file() and (out / "loss.png").is_file()  # written by train() itself
    paths = write_report(out)
    assert paths == [out / "training_report.md", out / "loss.png"]
    check_png(out / "loss.png")
    text = (out / "training_report.md").read_text()
    info = json.loads((out / "run_info.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())

    assert "Trainer state: `trainer_state.json` (the run finished)" in text
    assert "| steps | 2 of 2 " in text
    assert "![loss and learning rate over steps](loss.png)" in text
    for entry in (e for e in state["log_history"] if "loss" in e):  # every logged step is in the table
        assert f"| {entry['step']} | " in text
    for p in info["trainable_parameters"]:  # the projector and the two start/end rows
        assert f"| `{p['name']}` | {p['count']:,} |" in text
    assert "mm_projector.weight" in text and "video_token_embeds" in text
    assert "| tokens/s | " in text and "| samples/s | " in text and "median over 2 logged intervals" in text
    assert f"| wall time | {info['runs'][0]['wall_time_s']:.1f} s |" in text
    assert f"{info['versions']['torch']}" in text and f"transformers {info['versions']['transformers']}" in text
    assert "--max_steps 2 --logging_steps 1" in text
    assert "| peak host memory (RSS) | " in text
    assert "## Data" in text


def test_resumed_run(runs):
    out = runs["resumed"]
    info = json.loads((out / "run_info.json").read_text())
    assert [r["resumed_from"] is not None for r in info["runs"]] == [False, True]
    write_report(out)
    check_png(out / "loss.png")
    text = (out / "training_report.md").read_text()
    assert "| steps | 4 of 4 " in text
    total = sum(r["wall_time_s"] for r in info["runs"])
    assert f"| wall time | {total:.1f} s, summed over 2 run segments" in text
    assert "| 1 | start | 2 | " in text and "| 2 | `checkpoint-2` | 4 | " in text
    for step in (1, 2, 3, 4):  # the resumed history carries the first segment's steps
        assert f"| {step} | " in text
    assert read_run(out).resume_steps == [(2, "checkpoint-2")]


def test_run_read_from_its_checkpoints(runs):
    out = runs["root"] / "from_checkpoints"
    shutil.copytree(runs["resumed"], out)
    for name in ("trainer_state.json", "training_report.md", "loss.png"):
        (out / name).unlink()
    assert main([str(out)]) == 0
    check_png(out / "loss.png")
    text = (out / "training_report.md").read_text()
    assert "`checkpoint-4/trainer_state.json`, **a run read from its checkpoints**" in text
    assert "| steps | 4 of 4 " in text

    (out / "run_info.json").unlink()  # an older run, or one killed before its first save of run_info
    shutil.rmtree(out / "checkpoint-4")
    assert write_report(out) == [out / "training_report.md", out / "loss.png"]
    text = (out / "training_report.md").read_text()
    assert "`checkpoint-2/trainer_state.json`" in text and "| steps | 2 of " in text
    assert f"Trainable parameters: {NOT_RECORDED}" in text and f"Command: {NOT_RECORDED}" in text
    assert f"| wall time | {NOT_RECORDED} |" in text


def test_missing_and_broken_pieces_never_crash(tmp_path, capsys):
    from video_chatgpt.cli import main as cli_main

    started = tmp_path / "started"
    started.mkdir()
    (started / "run_info.json").write_text(json.dumps({"command": ["train.py"]}))
    assert cli_main(["report", str(started)]) == 0
    assert capsys.readouterr().out.split() == [str(started / "training_report.md")]  # no loss, so no plot
    text = (started / "training_report.md").read_text()
    assert "Trainer state: not recorded" in text and "Loss: not recorded" in text
    assert "Notes: not recorded." in text

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{not json")
    (broken / "run_info.json").write_text(json.dumps({"runs": "??", "trainable_parameters": [1, {"name": "x"}]}))
    write_report(broken)
    assert "Warning: `trainer_state.json` could not be read" in (broken / "training_report.md").read_text()


@pytest.mark.parametrize("what", ["empty folder", "unrelated files", "missing", "a file"])
def test_a_folder_with_no_run_is_refused_and_nothing_is_written(tmp_path, capsys, what):
    """An empty folder (a typo'd --output_dir) used to get a report full of "not recorded" and exit 0."""
    from video_chatgpt.cli import main as cli_main

    folder = tmp_path / "run"
    if what in ("empty folder", "unrelated files"):
        folder.mkdir()
    if what == "unrelated files":
        (folder / "notes.txt").write_text("x")
        (folder / "checkpoints-old").mkdir()
    if what == "a file":
        folder.write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli_main(["report", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("video-chatgpt report: error: ") and str(folder) in err and "Traceback" not in err
    assert {
        "empty folder": "holds no training run",
        "unrelated files": "holds no training run",
        "missing": "no such folder",
        "a file": "is a file",
    }[what] in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    with pytest.raises(UserError):
        write_report(folder)


def test_notes_of_the_run_are_listed(tmp_path):
    notes = ["--bf16 True: this machine has no CUDA GPU, so training ran in fp32", "--is_multimodal has no effect"]
    (tmp_path / "run_info.json").write_text(json.dumps({"notes": notes}))
    write_report(tmp_path)
    text = (tmp_path / "training_report.md").read_text()
    section = text.split("## Notes\n\n", 1)[1].split("\n\n## ", 1)[0]
    assert section.splitlines() == [f"- {n}" for n in notes]
    (tmp_path / "run_info.json").write_text(json.dumps({"notes": []}))
    write_report(tmp_path)
    assert "## Notes\n\nNone:" in (tmp_path / "training_report.md").read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written through temporary files, none left


def test_long_run_is_smoothed_and_data_summary_is_shown(tmp_path):
    """300 logged steps (a synthetic state): the plot gets a moving average; the data summary keys are listed."""
    rng = np.random.default_rng(0)
    history = [
        {
            "step": s,
            "epoch": s / 100,
            "loss": 2.5 * math.exp(-s / 80) + 0.9 + rng.normal(0, 0.15),
            "learning_rate": 2e-5 * 0.5 * (1 + math.cos(math.pi * s / 300)),
            "grad_norm": 1.0,
        }
        for s in range(1, 301)
    ]
    history[150]["loss"] = float("nan")
    state = {"global_step": 300, "max_steps": 300, "log_history": history}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    data = {
        "num_records": 100010,
        "num_videos": 13303,
        "feature_shape": [356, 1024],
        "feature_dtype": "float16",
        "token_lengths": {
            "min": 400,
            "median": 480,
            "p95": 700,
            "max": 2300,
            "model_max_length": 2048,
            "num_truncated": 3,
        },
    }
    (tmp_path / "run_info.json").write_text(json.dumps({"data": data}))
    write_report(tmp_path)
    check_png(tmp_path / "loss.png")
    text = (tmp_path / "training_report.md").read_text()
    assert "25 of 300 logged steps, evenly spaced" in text
    assert "**non-finite loss** at 1 logged steps (first: step 151)" in text
    assert "| records | 100,010 |" in text and "| feature shape | (356, 1024) |" in text
    assert "| token lengths | min 400, median 480, p95 700, max 2,300 |" in text
    assert "| truncated samples (> model_max_length 2048) | 3 |" in text
    assert moving_average([1.0, float("nan"), 3.0], 3) == [1.0, 2.0, 3.0]
