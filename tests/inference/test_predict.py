"""``video-chatgpt predict`` hardening: identity-keyed resume after a real kill equals an uninterrupted run, an output
made from another question file (or other settings) is refused, bad inputs are one-line errors.

The model is the tiny base without a trained projector and the videos are random feature files: what is checked is
the bookkeeping, under sampling (temperature 1), where a sample's seed decides its answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from tests.helpers.data import make_training_data
from tests.helpers.train import LORA_FLAGS, train_paths
from video_chatgpt.cli import main as cli_main
from video_chatgpt.features.store import save_features

NUM_VIDEOS = 4
TEMPORAL_PLUS_SPATIAL = 100 + 256  # 100 frames + the tiny tower's 16x16 patches (its real ViT-L/14 geometry)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, tiny_llava):
    width = json.loads((tiny_llava / "config.json").read_text())["mm_hidden_size"]
    folder = tmp_path_factory.mktemp("feats")
    rng = np.random.default_rng(0)
    for i in range(NUM_VIDEOS):
        save_features(folder / f"v{i}.pkl", rng.standard_normal((TEMPORAL_PLUS_SPATIAL, width)).astype(np.float16))
    return folder


def question_file(path: Path, n: int, offset: int = 0) -> Path:
    items = [
        {"video_name": f"v{i % NUM_VIDEOS}", "Q": f"Question number {i + offset}?", "A": f"answer {i}"}
        for i in range(n)
    ]
    items.append(dict(items[0]))  # a repeated record: its own key (occurrence 1), its own seed
    path.write_text(json.dumps(items))
    return path


def argv(gt, out, name, tiny_llava, tiny_clip, features_dir, *extra):
    return [
        "predict",
        "--task",
        "general",
        "--gt_file",
        str(gt),
        "--features_dir",
        str(features_dir),
        "--output_dir",
        str(out),
        "--output_name",
        name,
        "--model-name",
        str(tiny_llava),
        "--vision_tower",
        str(tiny_clip),
        "--temperature",
        "1.0",
        "--max_new_tokens",
        "12",
        "--device",
        "cpu",
        *extra,
    ]


def test_killed_run_resumes_to_exactly_the_uninterrupted_output(tmp_path, tiny_llava, tiny_clip, features_dir):
    gt = question_file(tmp_path / "generic_qa.json", 40)
    out = tmp_path / "preds"
    assert cli_main(argv(gt, out, "full", tiny_llava, tiny_clip, features_dir)) == 0
    full = json.loads((out / "full.json").read_text())
    assert len(full) == 41 and len({r["pred"] for r in full}) > 20  # sampled answers differ from sample to sample

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "video_chatgpt.cli", *argv(gt, out, "part", tiny_llava, tiny_clip, features_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    progress = out / "part.progress.jsonl"
    try:
        deadline = time.monotonic() + 180
        while child.poll() is None and time.monotonic() < deadline:
            if progress.is_file() and progress.read_text().count("\n") >= 3:
                break
            time.sleep(0.005)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    answered = progress.read_text().count("\n")
    assert 3 <= answered < 41 and not (out / "part.json").exists()  # killed mid-run; no final file yet
    assert cli_main(argv(gt, out, "part", tiny_llava, tiny_clip, features_dir)) == 0
    assert (out / "part.json").read_bytes() == (out / "full.json").read_bytes()  # seeds by question index
    keys = [json.loads(line)["key"] for line in progress.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 41  # each sample answered once


def test_output_of_another_question_file_or_settings_is_refused(tmp_path, tiny_llava, tiny_clip, features_dir, capsys):
    out = tmp_path / "preds"
    gt = question_file(tmp_path / "a.json", 3)
    assert cli_main(argv(gt, out, "generic", tiny_llava, tiny_clip, features_dir)) == 0
    before = (out / "generic.json").read_bytes()
    sidecar = json.loads((out / "generic.predict.json").read_text())["made_from"]
    assert (
        sidecar["question_files"][0]["path"] == str(gt.resolve()) and len(sidecar["question_files"][0]["sha256"]) == 64
    )
    other = question_file(tmp_path / "b.json", 3, offset=100)  # other questions, same videos and count
    capsys.readouterr()
    assert cli_main(argv(other, out, "generic", tiny_llava, tiny_clip, features_dir)) == 1
    err = capsys.readouterr().err
    assert "was made from another question file" in err and "b.json" in err and "Traceback" not in err
    assert cli_main(argv(gt, out, "generic", tiny_llava, tiny_clip, features_dir, "--temperature", "0")) == 1
    assert "other settings (temperature 1.0 -> 0.0)" in capsys.readouterr().err
    assert (out / "generic.json").read_bytes() == before  # nothing lost
    assert cli_main(argv(other, out, "generic", tiny_llava, tiny_clip, features_dir, "--overwrite")) == 0
    assert [r["Q"] for r in json.loads((out / "generic.json").read_text())][0] == "Question number 100?"


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_llava, tiny_clip, features_dir, capsys):
    out = tmp_path / "preds"
    good = question_file(tmp_path / "q.json", 2)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"video_name": "v0", "Q": ')
    wrong_rows = tmp_path / "wrong_rows"
    wrong_rows.mkdir()
    save_features(wrong_rows / "v0.pkl", np.zeros((TEMPORAL_PLUS_SPATIAL - 6, 32), dtype=np.float16))
    garbage = tmp_path / "mm_projector.bin"
    garbage.write_bytes(b"<html>not a checkpoint</html>")
    cases = [
        (argv(broken, out, "a", tiny_llava, tiny_clip, features_dir), "not valid JSON"),
        (argv(tmp_path / "nope.json", out, "b", tiny_llava, tiny_clip, features_dir), "no such file"),
        (
            argv(good, out, "c", tiny_llava, tiny_clip, features_dir, "--projection_path", str(tmp_path / "x.bin")),
            "--projection_path",
        ),
        (
            argv(good, out, "d", tiny_llava, tiny_clip, features_dir, "--projection_path", str(garbage)),
            "cannot be read as a PyTorch projector file",
        ),
        (argv(good, out, "e", tmp_path / "no_base", tiny_clip, features_dir), "--model_name_or_path"),
        (argv(good, out, "f", tiny_llava, tiny_clip, wrong_rows), "350 feature rows, but the model takes 356"),
    ]
    for args, words in cases:
        capsys.readouterr()
        assert cli_main(args) == 1, words
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("video-chatgpt predict: error: ")]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err


def test_missing_and_unreadable_videos_are_listed_and_filled_in_later(tmp_path, tiny_llava, tiny_clip, features_dir):
    feats = tmp_path / "feats"
    feats.mkdir()
    for name in ("v0", "v1"):
        (feats / f"{name}.pkl").write_bytes((features_dir / f"{name}.pkl").read_bytes())
    (feats / "v2.pkl").write_bytes(b"\x80\x04garbage")
    gt = question_file(tmp_path / "q.json", 4)  # v0 v1 v2 v3 (+ v0 again)
    out = tmp_path / "preds"
    assert cli_main(argv(gt, out, "g", tiny_llava, tiny_clip, feats)) == 1
    errors = {e["video_name"]: e["reason"] for e in json.loads((out / "g.errors.json").read_text())}
    assert set(errors) == {"v2", "v3"} and errors["v3"] == "video not found" and errors["v2"].startswith("unreadable")
    assert [r["video_name"] for r in json.loads((out / "g.json").read_text())] == ["v0", "v1", "v0"]
    for name in ("v2", "v3"):
        (feats / f"{name}.pkl").write_bytes((features_dir / f"{name}.pkl").read_bytes())
    assert cli_main(argv(gt, out, "g", tiny_llava, tiny_clip, feats)) == 0
    assert [r["video_name"] for r in json.loads((out / "g.json").read_text())] == ["v0", "v1", "v2", "v3", "v0"]
    assert not (out / "g.errors.json").exists()


# ----------------------------------------------------------------------------------------------- LoRA (issue 14)
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, sample_world, tiny_llava):
    """A 3-step LoRA run (adapter + projector) on the tiny base, its training features, and its merge-lora folder."""
    from video_chatgpt.train.train import train

    work = tmp_path_factory.mktemp("predict-lora")
    data = make_training_data(sample_world["instructions"], tiny_llava, work / "data")
    run = work / "run"
    train(
        [
            *train_paths(data, tiny_llava, run),
            *LORA_FLAGS,
            "--learning_rate",
            "1e-2",
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
        ]
    )
    merged = work / "merged"
    assert cli_main(["merge-lora", str(run), str(merged), "--dtype", "fp32"]) == 0
    return {
        "run": run,
        "merged": merged,
        "features": data["video_folder"],
        "videos": sorted(p.stem for p in data["video_folder"].glob("*.pkl"))[:3],
    }


def test_predict_on_a_lora_run_equals_its_merged_folder(tmp_path, tiny_llava, lora_run, capsys):
    """``predict --model-name <LoRA run>`` (base + adapter + projector), ``--model-name <merge-lora folder>`` and
    ``--model-name <base> --lora_path <run>`` write the same predictions file at temperature 0; the base with the
    run's projector and no adapter does not; a --lora_path without an adapter is one line."""
    items = [
        {"video_name": v, "Q": f"What happens in the video? ({i})", "A": "x"} for i, v in enumerate(lora_run["videos"])
    ]
    gt = tmp_path / "q.json"
    gt.write_text(json.dumps(items))

    def predict(name, model, *extra, status=0):
        out = tmp_path / "preds"
        assert (
            cli_main(
                [
                    "predict",
                    "--task",
                    "general",
                    "--gt_file",
                    str(gt),
                    "--features_dir",
                    str(lora_run["features"]),
                    "--output_dir",
                    str(out),
                    "--output_name",
                    name,
                    "--model-name",
                    str(model),
                    "--temperature",
                    "0",
                    "--max_new_tokens",
                    "8",
                    "--device",
                    "cpu",
                    *extra,
                ]
            )
            == status
        )
        return (out / f"{name}.json").read_bytes() if status == 0 else None

    from_run = predict("run", lora_run["run"])
    assert predict("merged", lora_run["merged"]) == from_run
    preds = [r["pred"] for r in json.loads(from_run)]
    assert len(preds) == len(items) and all(preds), preds
    projector = ["--projection_path", str(lora_run["run"] / "mm_projector.bin")]
    assert predict("lora_path", tiny_llava, *projector, "--lora_path", str(lora_run["run"])) == from_run
    without = predict("base", tiny_llava, *projector)
    assert without != from_run  # the adapter changes the answers: the equalities above are not two bases agreeing
    capsys.readouterr()
    predict("no_adapter", tiny_llava, *projector, "--lora_path", str(tiny_llava), status=1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("video-chatgpt predict: error: --lora_path")]
    assert len(lines) == 1 and "Traceback" not in err, err
