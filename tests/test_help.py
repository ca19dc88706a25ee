"""Every command's ``--help``: the right program name, the project's flags on the first screen, canonical names first.

One concept, one flag name across commands (the others stay as aliases, listed after it):
the feature folder is ``--features_dir``, a video folder ``--video_dir``, the model ``--model_name_or_path``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from video_chatgpt.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
FIRST_SCREEN = 80  # lines

# command -> (the canonical flag, the aliases it must come before) for each concept the command takes.
CANONICAL = {
    "train": [("--features_dir", ["--video_folder"]), ("--model_name_or_path", [])],
    "plan-memory": [("--model_name_or_path", [])],
    "extract-features": [("--features_dir", ["--clip_feat_path"]), ("--video_dir", ["--video_dir_path"])],
    "convert": [("--features_dir", ["--clip_feature_path"])],
    "data check": [("--features_dir", ["--video_folder"]), ("--model_name_or_path", [])],
    "data inspect": [("--features_dir", ["--video_folder"]), ("--model_name_or_path", [])],
    "chat": [("--model_name_or_path", ["--model-name"])],
    "demo": [("--model_name_or_path", ["--model-name"])],
    "predict": [("--model_name_or_path", ["--model-name"]), ("--features_dir", []), ("--video_dir", [])],
    "benchmark": [("--model_name_or_path", ["--model-name"]), ("--features_dir", []), ("--video_dir", [])],
    "evaluate": [("--judge_temperature", ["--temperature"]), ("--judge_model", [])],
    "apply-delta": [("--base-model-path", ["--base_model_path"]), ("--target-model-path", ["--target_model_path"])],
}
SUBCOMMANDS = {"data": ["check", "inspect", "import"]}  # `sample models|world` share one parser


def _all_commands() -> list[str]:
    names = []
    for name in COMMANDS:
        names += [f"{name} {sub}" for sub in SUBCOMMANDS[name]] if name in SUBCOMMANDS else [name]
    return names


def _help(command: str, capsys) -> str:
    try:
        status = main([*command.split(), "--help"])
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr().out
    assert status == 0, f"{command} --help exited {status}"
    return out


@pytest.mark.parametrize("command", _all_commands())
def test_help_is_one_screen_with_the_right_program_name(command, capsys):
    out = _help(command, capsys)
    lines = out.splitlines()
    assert lines[0].startswith(f"usage: video-chatgpt {command}"), lines[0]
    assert len(lines) <= FIRST_SCREEN, f"{command} --help: {len(lines)} lines"
    assert "video-chatgpt [" not in out and ".py" not in lines[0]
    for canonical, aliases in CANONICAL.get(command, []):
        assert canonical in out, f"{command} --help does not show {canonical}"
        for alias in aliases:
            assert alias in out and out.index(canonical) < out.index(alias), (command, canonical, alias)


def test_train_help_shows_the_document_flags_with_defaults_and_points_to_help_all(capsys):
    out = _help("train", capsys)
    for flag in ("--model_name_or_path", "--data_path", "--output_dir", "--tune_mm_mlp_adapter", "--bf16",
                 "--gradient_checkpointing", "--lazy_preprocess", "--lora_enable"):  # fmt: skip
        assert flag in out
    assert "(default: 512)" in out and "--help-all" in out
    assert "--adam_beta1" not in out  # Hugging Face's long tail is behind --help-all
    assert main(["train", "--help-all"]) == 0
    assert "--adam_beta1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "default"),
    [("demo", "(default: 7860)"), ("chat", "(default: 0.2)"), ("evaluate", "(default: gpt-3.5-turbo)")],
)
def test_help_shows_the_defaults(command, default, capsys):
    assert default in _help(command, capsys)


@pytest.mark.parametrize(
    ("script", "name"),
    [
        ("scripts/apply_delta.py", "apply_delta.py"),
        ("scripts/convert_instruction_json_to_training_format.py", "convert_instruction_json_to_training_format.py"),
        ("scripts/save_spatio_temporal_clip_features.py", "save_spatio_temporal_clip_features.py"),
        ("video_chatgpt/train/train_mem.py", "train_mem.py"),
    ],
)
def test_the_document_scripts_name_themselves(script, name):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {name}") or done.stdout.startswith(f"usage: scripts/{name}")


def test_train_without_flags_names_what_is_missing(capsys):
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert "missing --model_name_or_path, --data_path, --features_dir, --output_dir" in err
    assert "Traceback" not in err
    assert main(["train", "--model_name_or_path", "x", "--data_path", "d.json", "--video_folder", "f"]) == 1
    assert "missing --output_dir" in capsys.readouterr().err
