"""The shared guards of ``video_chatgpt.files`` (and the one error path), each with a table per mechanism.

1. Writers never destroy inputs: ``check_output`` (an output may not be, contain or sit inside an input, through
   links and hard links), and the staged folder replacement of ``--overwrite`` (``staged_folder``, recoverable
   after a kill). Commands: convert, data import, evaluate, predict, merge-lora.
2. Paths named by data stay inside their folder: ``inside`` (training's ``feature_path``, predict's ``video_name``,
   the demo's served files).
5. Every JSON a user hands us goes through the bounded reader: a 100,000-deep ``[[[...`` file is one line in each
   command; fields of the wrong type are refused with the record and key.
9. Errors name the file and the cause: an ``OSError`` raised with a message keeps it; torch's write failure while
   saving a checkpoint is "no space left on <folder>".

Each command row runs in-process through ``video_chatgpt.cli.main`` (the console command's error path): exit 1,
one ``error:`` line with the file or field named, and every file of the test's folder unchanged (bytes and mtimes).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers.data import make_training_data
from tests.helpers.train import TINY, train_paths
from video_chatgpt.cli import main as cli_main
from video_chatgpt.errors import UserError, error_message
from video_chatgpt.files import (
    check_output,
    inside,
    read_json,
    recover_killed_folder,
    staged_folder,
)

DEEP = "[" * 100_000


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """relative path -> (bytes, mtime_ns) of everything under ``folder`` (hidden files included)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (None if p.is_dir() else p.read_bytes(), st.st_mtime_ns)
    return out


def run_cli(argv: list, capsys) -> tuple[int, str]:
    status = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.err


def assert_one_error_line(status: int, err: str, *words: str) -> None:
    assert status == 1, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


# ------------------------------------------------------------------------------------ 1. check_output (shared)
def _relations(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    data = folder / "data.json"
    data.write_text("[]")
    (tmp_path / "link.json").symlink_to(data)
    os.link(data, tmp_path / "hard.json")
    (tmp_path / "folder_link").symlink_to(folder)
    return {
        "is": (data, data),
        "is (through a symlink)": (tmp_path / "link.json", data),
        "is (a hard link)": (tmp_path / "hard.json", data),
        "is (folder through a link)": (tmp_path / "folder_link", folder),
        "contains": (tmp_path, folder),
        "contains (a file)": (folder, data),
        "is inside": (folder / "sub" / "out", folder),
        "is inside (through a link)": (tmp_path / "folder_link" / "out", folder),
    }


@pytest.mark.parametrize(
    "relation",
    [
        "is",
        "is (through a symlink)",
        "is (a hard link)",
        "is (folder through a link)",
        "contains",
        "contains (a file)",
        "is inside",
        "is inside (through a link)",
    ],
)
def test_check_output_refuses_every_overlap(tmp_path, relation):
    output, input_ = _relations(tmp_path)[relation]
    with pytest.raises(UserError) as info:
        check_output(output, {"--input": input_}, "--output")
    message = str(info.value)
    assert message.startswith(f"--output {output} {relation.split(' (')[0]} the input --input {input_}")
    assert "\n" not in message


def test_check_output_lets_unrelated_paths_and_siblings_through(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text("[]")
    check_output(tmp_path / "b", {"--input": tmp_path / "a", "--none": None}, "--output")
    check_output(tmp_path / "a" / "y.json", {"--input": tmp_path / "a" / "x.json"}, "--output")
    check_output(tmp_path / "ab", {"--input": tmp_path / "a"}, "--output")  # a name prefix is not a parent


# -------------------------------------------------------------------------- 1. staged folder replacement (shared)
def test_staged_folder_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").read_text() == "old"
    with staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_a_kill_between_the_renames_is_undone_at_the_next_start(tmp_path):
    """What SIGKILL leaves between ``os.replace(out, old/out)`` and ``os.replace(tmp, out)``: the old folder moved
    aside, the new one complete but hidden, ``out`` gone. The next run puts the old folder back."""
    out = tmp_path / "out"
    (tmp_path / ".out.old-abc" / "out").mkdir(parents=True)
    (tmp_path / ".out.old-abc" / "out" / "weights").write_text("the previous model")
    (tmp_path / ".out.partial-def").mkdir()
    (tmp_path / ".out.partial-def" / "weights").write_text("the new model")
    actions = recover_killed_folder(out)
    assert (out / "weights").read_text() == "the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert any("restored" in a for a in actions)


# ---------------------------------------------------------------------------------- 2. inside (shared)
@pytest.mark.parametrize(
    "name, words",
    [
        ("v_1", None),
        ("sub/v_1", None),
        ("../secret", "climbs out of --video_dir"),
        ("sub/../../secret", "climbs out of --video_dir"),
        ("..\\secret", "climbs out of --video_dir"),
        ("/etc/passwd", "is an absolute path"),
        ("C:\\videos\\v", "is an absolute path"),
        ("", "is not a file name"),
        (["v_1"], "is not a file name"),
        (3, "is not a file name"),
        ("v\x00.mp4", "NUL"),
    ],
)
def test_inside_keeps_names_from_data_in_their_folder(tmp_path, name, words):
    if words is None:
        path = inside(tmp_path, name, "item 0 video_name", "--video_dir")
        assert tmp_path in path.parents
        return
    with pytest.raises(UserError) as info:
        inside(tmp_path, name, "item 7 video_name", "--video_dir")
    assert str(info.value).startswith(f"item 7 video_name {name!r}") and words in str(info.value)
    assert f"(--video_dir {tmp_path})" in str(info.value)


def test_training_uses_the_same_containment(tmp_path):
    from video_chatgpt.data.paths import feature_path

    with pytest.raises(UserError, match=r"record video '\.\./x\.pkl' climbs out of --video_folder"):
        feature_path(tmp_path, "../x.pkl")


# ------------------------------------------------------------------------- 5. the bounded JSON reader (shared)
def test_read_json_turns_any_nesting_into_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(UserError) as info:
        read_json(deep)
    assert str(info.value) == f"{deep}: JSON nested too deeply to read"


# ------------------------------------------------------------------------ 9. the error path names the file
def test_os_errors_keep_their_path_or_their_own_message():
    assert error_message(FileNotFoundError("model folder /m/llava not found")) == "model folder /m/llava not found"
    assert error_message(FileNotFoundError(errno.ENOENT, "No such file", "/m/x")) == "no such file or folder: /m/x"
    assert "/a -> /b" in error_message(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"))


def test_a_full_disk_while_saving_a_checkpoint_names_the_folder(tmp_path, monkeypatch):
    from video_chatgpt.train.trainer import disk_full_as_user_error

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1792 vs 1680")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as info, disk_full_as_user_error(tmp_path / "run" / "checkpoint-2"):
        torch.save({"w": torch.zeros(2)}, tmp_path / "run" / "checkpoint-2" / "optimizer.pt")
    message = str(info.value)
    assert message.startswith(f"no space left on {tmp_path / 'run' / 'checkpoint-2'}") and "GiB free" in message
    assert "inline_container" not in message
    with pytest.raises(RuntimeError, match="another failure"), disk_full_as_user_error(tmp_path):
        raise RuntimeError("another failure")  # only torch's write failure is mapped


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_world, tiny_llava) -> dict:
    return make_training_data(sample_world["instructions"], tiny_llava, tmp_path_factory.mktemp("guards-data"))


def test_the_trainers_save_maps_the_full_disk(data, tiny_llava, tmp_path, monkeypatch, capsys):
    """A real training run whose checkpoint save hits torch's write failure: one line, exit 1."""

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1792 vs 1680")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    status, err = run_cli(
        ["train", *train_paths(data, tiny_llava, out), *TINY, "--max_steps", "1", "--save_steps", "1"], capsys
    )
    assert_one_error_line(status, err, "no space left on", str(out))


# ------------------------------------------------------------------------------------ the commands, per guard
QUESTIONS = [{"video_name": "v0", "Q": "What happens?", "A": "A dog runs."}]
PREDICTIONS = [{"video_name": "v0", "Q": "What happens?", "A": "A dog runs.", "pred": "A dog runs."}]
INSTRUCTIONS = [{"video_id": "v_0", "q": "What happens?", "a": "A dog runs."}]


def _files(folder: Path) -> dict[str, Path]:
    """The inputs every row may use, written fresh into the row's own folder."""
    f = {}
    for name, value in (
        ("questions", QUESTIONS),
        ("preds", PREDICTIONS),
        ("instructions", INSTRUCTIONS),
        ("q_list", [{"video_name": "v0", "Q": ["What", "happens?"], "A": "a"}]),
        ("q_number", [{"video_name": 7, "Q": "What happens?", "A": "a"}]),
        ("p_list", [{**PREDICTIONS[0], "pred": ["A dog", "runs."]}]),
        ("p_number", [{**PREDICTIONS[0], "A": 3.5}]),
    ):
        f[name] = folder / f"{name}.json"
        f[name].write_text(json.dumps(value))
    f["deep"] = folder / "deep.json"
    f["deep"].write_text(DEEP)
    (folder / "model").mkdir()
    f["deep_model"] = folder / "deep_model"
    f["deep_model"].mkdir()
    (f["deep_model"] / "config.json").write_text(DEEP)
    (folder / "links").mkdir()
    (folder / "links" / "instructions.json").symlink_to(f["instructions"])
    f["instructions_link"] = folder / "links" / "instructions.json"
    return f


def predict_argv(f, gt, out_dir, name, model, *extra):
    return ["predict", "--gt_file", gt, "--features_dir", out_dir, "--output_dir", out_dir, "--output_name", name,
            "--model-name", model, *extra]  # fmt: skip


def evaluate_argv(f, pred, out_dir, *extra):
    return ["evaluate", "--task", "correctness", "--pred_path", pred, "--output_dir", out_dir,
            "--api_base", "http://127.0.0.1:9", "--max_retries", "0", *extra]  # fmt: skip


def _model_row(command: str, *flags):
    return lambda f, t: _model_command(command, f, t, *flags)


def _config_row(key: str, value):
    return lambda f, t: ["plan-memory", "--model_name_or_path", _config_variant(f, t, key, value)]


ROWS = {
    # 1. writers never destroy inputs
    "convert: output is the input through a link": (
        lambda f, t: ["convert", "--input_json_file", f["instructions"], "--output_json_file", f["instructions_link"]],
        ("--output_json_file", "is the input --input_json_file", "nothing was written"),
    ),
    "data import: output is the input": (
        lambda f, t: [
            "data",
            "import",
            "--format",
            "llava",
            "--input",
            f["instructions"],
            "--output_json",
            f["instructions_link"],
        ],  # fmt: skip
        ("--output_json", "is the input --input", "nothing was written"),
    ),
    "evaluate: --output_json is the --pred_path file": (
        lambda f, t: evaluate_argv(f, f["preds"], t / "eval", "--output_json", f["preds"]),
        ("--output_json", "is the input --pred_path", "preds.json"),
    ),
    "evaluate: --output_dir's combined file is the --pred_path file": (
        lambda f, t: evaluate_argv(f, t / "correctness_combined.json", t),
        ("--output_dir file", "correctness_combined.json", "is the input --pred_path"),
    ),
    "predict: the output is the question file": (
        lambda f, t: predict_argv(f, f["questions"], t, "questions", t / "model", "--overwrite"),
        ("--output_dir/--output_name", "is the input --gt_file", "questions.json"),
    ),
    "predict --overwrite: a mistyped --model-name deletes nothing": (
        lambda f, t: predict_argv(f, f["questions"], t, "preds", t / "modle", "--overwrite"),
        ("--model_name_or_path", "modle", "no such folder"),
    ),
    # 5. every JSON through the bounded reader; wrong types refused with the record and key
    "convert: a 100,000-deep input": (
        lambda f, t: ["convert", "--input_json_file", f["deep"], "--output_json_file", t / "out.json"],
        ("deep.json", "nested too deeply", "nothing was written"),
    ),
    "data import: a 100,000-deep input": (
        lambda f, t: [
            "data",
            "import",
            "--format",
            "llava",
            "--input",
            f["deep"],
            "--output_json",
            t / "o.json",
        ],
        ("deep.json", "nested too deeply"),
    ),
    "evaluate: a 100,000-deep prediction file": (
        lambda f, t: evaluate_argv(f, f["deep"], t / "eval"),
        ("deep.json", "nested too deeply"),
    ),
    "evaluate: pred is a list": (
        lambda f, t: evaluate_argv(f, f["p_list"], t / "eval"),
        ("p_list.json: record 0 'pred' is a list, expected text",),
    ),
    "evaluate: A is a number": (
        lambda f, t: evaluate_argv(f, f["p_number"], t / "eval"),
        ("p_number.json: record 0 'A' is a float, expected text",),
    ),
    "predict: a 100,000-deep question file": (
        lambda f, t: predict_argv(f, f["deep"], t, "p", t / "model"),
        ("--gt_file", "deep.json", "nested too deeply"),
    ),
    "predict: Q is a list": (
        lambda f, t: predict_argv(f, f["q_list"], t, "p", t / "model"),
        ("q_list.json: item 0 'Q' is a list, expected text",),
    ),
    "predict: video_name is a number": (
        lambda f, t: predict_argv(f, f["q_number"], t, "p", t / "model"),
        ("q_number.json: item 0 'video_name' is a int, expected text",),
    ),
    "plan-memory: a 100,000-deep config.json": (
        lambda f, t: ["plan-memory", "--model_name_or_path", f["deep_model"]],
        ("config.json", "nested too deeply"),
    ),
    "train: a 100,000-deep training JSON": (
        lambda f, t: [
            "train",
            "--model_name_or_path",
            f["llava"],
            "--data_path",
            f["deep"],
            "--video_folder",
            t,
            "--output_dir",
            t / "run",
        ],  # fmt: skip
        ("deep.json", "nested too deeply"),
    ),
    # 8. limits and values: the shared model flags, predict's output name, evaluate's judge flags, plan-memory's config
    **{
        f"{command}: {' '.join(flag)}": (
            _model_row(command, *flag),
            words,
        )
        for command in ("chat", "predict", "benchmark")
        for flag, words in (
            (("--device", "tpu"), ("--device tpu", "not a device")),
            (("--device", "cuda"), ("--device cuda", "no CUDA GPU")),
            (("--max_new_tokens", "0"), ("--max_new_tokens 0", "at least 1")),
            (("--temperature", "nan"), ("--temperature nan", "finite")),
            (("--num_frames", "0"), ("--num_frames 0", "at least 1 frame")),
        )
    },
    "predict: --output_name climbs out of --output_dir": (
        lambda f, t: _model_command("predict", f, t, "--output_name", "../escaped"),
        ("--output_name '../escaped'", "without folders"),
    ),
    "evaluate: --api_base is not http(s)": (
        lambda f, t: evaluate_argv(f, f["preds"], t / "eval", "--api_base", "ftp://judge"),
        ("--api_base ftp://judge", "http://"),
    ),
    "evaluate: --temperature nan": (
        lambda f, t: evaluate_argv(f, f["preds"], t / "eval", "--temperature", "nan"),
        ("--temperature", "finite", "nan"),
    ),
    "evaluate: --backoff -1": (
        lambda f, t: evaluate_argv(f, f["preds"], t / "eval", "--backoff", "-1"),
        ("--backoff", "finite number >= 0"),
    ),
    **{
        f"plan-memory: config.json {key} {value!r}": (
            _config_row(key, value),
            ("config.json", f"{key} is", "whole number >= 1"),
        )
        for key, value in (
            ("hidden_size", "4096"),
            ("num_attention_heads", 0),
            ("hidden_size", 1e309),
            ("num_hidden_layers", -2),
            ("vocab_size", True),
        )
    },
    "plan-memory: --deepspeed is not JSON": (
        lambda f, t: [
            "plan-memory",
            "--model_name_or_path",
            f["llava"],
            "--deepspeed",
            f["deep_model"] / "config.json",
        ],
        ("--deepspeed", "config.json", "nested too deeply"),
    ),
}


def _model_command(command: str, f: dict, t: Path, *flags) -> list:
    """chat / predict / benchmark on the tiny LLaVA with ``flags`` (checked before any model file is read)."""
    model = ["--model-name", f["llava"], "--device", "cpu"]
    if command == "chat":
        return ["chat", *model, "--question", "What?", "--features_path", f["questions"], *flags]
    if command == "predict":
        return [*predict_argv(f, f["questions"], t, "p", f["llava"], "--device", "cpu"), *flags]
    return ["benchmark", "--benchmark_dir", t, "--features_dir", t, "--output_dir", t / "bench", *model,
            "--api_base", "http://127.0.0.1:9", *flags]  # fmt: skip


def _config_variant(f: dict, t: Path, key: str, value) -> Path:
    """A copy of the tiny LLaVA's config and tokenizer files (no weights: plan-memory reads none) with one value."""
    folder = t / f"config-{key}"
    shutil.copytree(f["llava"], folder, ignore=shutil.ignore_patterns("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    return folder


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, capsys, tiny_llava, name):
    f = {**_files(tmp_path), "llava": tiny_llava}
    argv, words = ROWS[name]
    argv = argv(f, tmp_path)
    if name.startswith("predict --overwrite"):  # an earlier run's outputs, which --overwrite would delete
        for suffix in (".json", ".predict.json", ".progress.jsonl"):
            (tmp_path / f"preds{suffix}").write_text('{"made_from": {}}' if "predict" in suffix else "[]")
    before = snapshot(tmp_path)
    status, err = run_cli(argv, capsys)
    assert_one_error_line(status, err, *words)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- merge-lora
def _lora_run(root: Path) -> tuple[Path, Path]:
    """A LoRA run folder as merge-lora checks it (the files, a pointer to its base) and its base (a config.json);
    every check happens before a weight is read, so the files need not hold weights."""
    base, run = root / "base", root / "work" / "run"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    run.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "adapter_config.json", "mm_projector.bin"):
        (run / name).write_bytes(b"not read")
    (run / "video_chatgpt_base.json").write_text(json.dumps({"base_model": str(base), "projector": "mm_projector.bin"}))
    (root / "work" / "notes.txt").write_text("a sibling of the run")
    return run, base


@pytest.mark.parametrize(
    "out, words",
    [
        (lambda run, base: base, ("<out>", "is the input the run's base", "base")),
        (lambda run, base: run.parent, ("<out>", "contains the input <run>")),
        (lambda run, base: run, ("<out>", "is the input <run>")),
        (lambda run, base: run / "merged", ("<out>", "is inside the input <run>")),
    ],
    ids=["out is the base", "out holds the run", "out is the run", "out inside the run"],
)
def test_merge_lora_never_replaces_its_inputs(tmp_path, capsys, out, words):
    run, base = _lora_run(tmp_path)
    before = snapshot(tmp_path)
    status, err = run_cli(["merge-lora", run, out(run, base), "--overwrite"], capsys)
    assert_one_error_line(status, err, *words)
    assert snapshot(tmp_path) == before


def test_merge_lora_gives_back_the_folder_a_killed_overwrite_moved_aside(tmp_path, capsys):
    """A merge killed between its two renames left the previous <out> in ``.merged.old-*``: the next run puts it
    back before anything else, so without --overwrite it is refused as any existing folder."""
    run, _ = _lora_run(tmp_path)
    kept = tmp_path / ".merged.old-x1" / "merged"
    kept.mkdir(parents=True)
    (kept / "model.safetensors").write_bytes(b"the previous merge")
    (tmp_path / ".merged.partial-y2").mkdir()  # the new one, complete or not: never trusted
    status, err = run_cli(["merge-lora", run, tmp_path / "merged"], capsys)
    assert_one_error_line(status, err, "<out>", "merged exists", "--overwrite")
    assert (tmp_path / "merged" / "model.safetensors").read_bytes() == b"the previous merge"
    assert not list(tmp_path.glob(".merged.*"))


def test_merge_lora_with_a_moved_base_names_the_pointer(tmp_path, capsys):
    run, base = _lora_run(tmp_path)
    base.rename(tmp_path / "moved")
    status, err = run_cli(["merge-lora", run, tmp_path / "merged"], capsys)
    assert_one_error_line(status, err, "video_chatgpt_base.json", str(base), "not a folder here")


# ------------------------------------------------------------------------------ predict: names from the file
def test_predict_never_opens_a_video_name_outside_its_folder(tmp_path, tiny_llava, tiny_clip, capsys):
    """``../secret`` and an absolute path are recorded as errors naming the item; the rest is answered; exit 1."""
    import numpy as np

    from video_chatgpt.features.store import save_features

    width = read_json(tiny_llava / "config.json")["mm_hidden_size"]
    feats = tmp_path / "feats"
    feats.mkdir()
    save_features(feats / "v0.pkl", np.zeros((356, width), np.float16))
    save_features(tmp_path / "secret.pkl", np.zeros((356, width), np.float16))  # beside the folder: never read
    questions = [
        {"video_name": "v0", "Q": "What?", "A": "a"},
        {"video_name": "../secret", "Q": "What?", "A": "a"},
        {"video_name": str(tmp_path / "secret"), "Q": "What?", "A": "a"},
    ]
    gt = tmp_path / "q.json"
    gt.write_text(json.dumps(questions))
    argv = ["predict", "--gt_file", gt, "--features_dir", feats, "--output_dir", tmp_path / "out", "--output_name",
            "p", "--model-name", tiny_llava, "--vision_tower", tiny_clip, "--max_new_tokens", "2", "--device", "cpu"]  # fmt: skip
    status, err = run_cli(argv, capsys)
    assert status == 1, err
    errors = read_json(tmp_path / "out" / "p.errors.json")
    assert [e["video_name"] for e in errors] == ["../secret", str(tmp_path / "secret")]
    assert "item 1 video_name '../secret' climbs out of --features_dir" in errors[0]["reason"]
    assert "item 2 video_name" in errors[1]["reason"] and "is an absolute path" in errors[1]["reason"]
    assert [r["video_name"] for r in read_json(tmp_path / "out" / "p.json")] == ["v0"]


# ------------------------------------------------------------------------------------- demo: served files
def test_the_demo_serves_the_example_files_not_their_folder(tmp_path):
    gradio_utils = pytest.importorskip("gradio.utils")
    from video_chatgpt.inference.demo import find_examples, served_paths

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(b"a video")
    (tmp_path / "videos" / "secret.txt").write_text("private")
    (tmp_path / "previews").mkdir()
    examples = find_examples([str(tmp_path / "videos" / "clip.mp4")])
    allowed = served_paths(examples, tmp_path / "previews")

    def served(path: Path) -> bool:
        return gradio_utils.is_allowed_file(path, blocked_paths=[], allowed_paths=allowed, created_paths=[])[0]

    assert served(tmp_path / "videos" / "clip.mp4") and served(tmp_path / "previews" / "clip.webm")
    assert not served(tmp_path / "videos" / "secret.txt") and not served(tmp_path / "videos")


def test_data_check_reports_a_deep_file_as_one_problem(tmp_path, tiny_llava, capsys):
    (tmp_path / "feats").mkdir()
    (tmp_path / "deep.json").write_text(DEEP)
    before = snapshot(tmp_path)
    status = cli_main(["data", "check", "--data_path", str(tmp_path / "deep.json"), "--video_folder",
                       str(tmp_path / "feats"), "--num_workers", "1"])  # fmt: skip
    out = capsys.readouterr()
    assert status == 1 and "Traceback" not in out.err
    assert "deep.json" in out.out + out.err and "nested too deeply" in out.out + out.err
    assert snapshot(tmp_path) == before


def test_a_deep_trainer_state_is_a_damaged_checkpoint(tmp_path):
    from video_chatgpt.train.checkpoints import checkpoint_problem

    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text(DEEP)
    assert "nested too deeply" in checkpoint_problem(tmp_path / "checkpoint-1")


def test_the_dataset_reads_through_the_bounded_reader(tmp_path):
    from video_chatgpt.data.dataset import load_records

    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(UserError, match="nested too deeply"):
        load_records(tmp_path / "deep.json")


def test_a_deep_line_in_the_judge_cache_is_one_line(tmp_path, capsys):
    """The judge cache is evaluate's own file, but a damaged one is still a one-line refusal."""
    (tmp_path / "preds.json").write_text(json.dumps(PREDICTIONS))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "correctness.cache.jsonl").write_text(DEEP + "\n")
    before = snapshot(tmp_path)
    status, err = run_cli(evaluate_argv({}, tmp_path / "preds.json", tmp_path / "eval"), capsys)
    assert_one_error_line(status, err, "correctness.cache.jsonl", "not a judge cache")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------- 6. damaged checkpoints; train's own flags (issue 23)
def test_load_torch_data_refuses_what_plain_torch_load_would_take(tmp_path):
    """The bounded loader of the Trainer's state files: with its checks bypassed (a plain ``torch.load``), each of
    these loads, allocates past the file or shows torch's ``weights_only=False`` advice."""
    from video_chatgpt.weights.torchzip import TorchFileError, load_torch_data

    big = tmp_path / "big.pt"
    torch.save({"x": torch.zeros(2**20)}, big)  # 4 MiB: over a 1 MiB bound
    bomb = tmp_path / "bomb.pt"
    torch.save({"x": torch.zeros(2**18)}, bomb)
    with zipfile.ZipFile(bomb) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # 1 MiB of zeros in a few kB
        for info, raw in members:
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, raw)
    evil = tmp_path / "evil.pt"
    torch.save({"a": _RunsCode()}, evil)
    cases = [(big, "more than the 1,048,576"), (bomb, "compressed"), (evil, "asks for posix.system")]
    for path, words in cases:
        with pytest.raises(TorchFileError) as caught:
            load_torch_data(path, 2**20)
        assert words in str(caught.value) and "weights_only" not in str(caught.value), (path, caught.value)
    assert load_torch_data(big, 2**23)["x"].shape == (2**20,)  # within its bound, the same file loads


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, data, tiny_llava) -> Path:
    """A projector run of 2 steps with checkpoint-1 and checkpoint-2 (rows copy it before damaging it)."""
    from video_chatgpt.train.train import train

    out = tmp_path_factory.mktemp("resumable") / "run"
    train([*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "2", "--save_steps", "1"])
    return out


def _damage(file: str, how):
    def damage(run: Path) -> Path:
        how(run / "checkpoint-2" / file)
        return run / "checkpoint-2"

    return damage


# name -> (damage the copied run and give the checkpoint to name, or None; extra flags; exit status; words)
TRAIN_ROWS = {
    "--resume_from_checkpoint: optimizer.pt runs code": (
        _damage("optimizer.pt", lambda p: torch.save({"a": _RunsCode()}, p)), [], 1,
        ("--resume_from_checkpoint", "checkpoint-2", "optimizer.pt", "posix.system"),
    ),
    "--resume_from_checkpoint: rng_state.pth is garbage": (
        _damage("rng_state.pth", lambda p: p.write_bytes(b"junk")), [], 1,
        ("checkpoint-2", "rng_state.pth", "not a torch.save zip"),
    ),
    "--resume_from_checkpoint: scheduler.pt is a list": (
        _damage("scheduler.pt", lambda p: torch.save([1], p)), [], 1, ("checkpoint-2", "scheduler.pt", "not a state"),
    ),
    "--resume_from_checkpoint: a 1 TB safetensors header": (
        _damage("trainable.safetensors", lambda p: p.write_bytes((10**12).to_bytes(8, "little") + b"{}")), [], 1,
        ("checkpoint-2", "trainable.safetensors", "header length"),
    ),
    "--resume_from_checkpoint: a header that is not JSON": (
        _damage("trainable.safetensors", lambda p: p.write_bytes((4).to_bytes(8, "little") + b"oops")), [], 1,
        ("checkpoint-2", "trainable.safetensors", "not valid JSON"),
    ),
    "--resume_from_checkpoint: trainer_state.json cut short": (
        _damage("trainer_state.json", lambda p: p.write_text(p.read_text()[:40])), [], 1,
        ("checkpoint-2", "trainer_state.json is empty or cut short"),
    ),
    "--resume_from_checkpoint: no such folder": (
        lambda run: run / "checkpoint-9", [], 1, ("--resume_from_checkpoint", "checkpoint-9", "no trainer_state"),
    ),
    "--fsdp in one process": (None, ["--fsdp", "full_shard auto_wrap"], 1, ("--fsdp", "torchrun")),
    "--fsdp with --deepspeed": (
        None, ["--fsdp", "full_shard", "--deepspeed", "configs/zero2.json"], 1, ("--fsdp and --deepspeed",),
    ),
    "--deepspeed: no such file": (None, ["--deepspeed", "nope.json"], 1, ("--deepspeed nope.json", "no such file")),
    "--deepspeed: not JSON": (None, ["--deepspeed", "{file}"], 1, ("--deepspeed", "garbage.json", "not valid JSON")),
    "--deepspeed: 100,000 deep": (None, ["--deepspeed", "{deep}"], 1, ("--deepspeed", "deep.json", "nested too")),
    "--stage bogus": (None, ["--stage", "bogus"], 1, ("--stage 'bogus'", "pretrain or finetune")),
    "--mm_projector_type bogus": (None, ["--mm_projector_type", "bogus"], 1, ("--mm_projector_type 'bogus'",)),
    "--learning_rate nan": (None, ["--learning_rate", "nan"], 1, ("--learning_rate nan", "finite")),
    "--per_device_train_batch_size 0": (None, ["--per_device_train_batch_size", "0"], 1, ("batch_size 0", ">= 1")),
    "--num_train_epochs inf": (None, ["--num_train_epochs", "inf"], 1, ("--num_train_epochs inf",)),
    "--lora_r -4": (None, ["--lora_enable", "True", "--lora_r", "-4"], 1, ("--lora_r -4", "r >= 1")),
    "--pretrain_mm_mlp_adapter is garbage": (
        None, ["--pretrain_mm_mlp_adapter", "{file}"], 1, ("garbage.json", "cannot be read as a PyTorch projector"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAIN_ROWS))
def test_train_bad_input_is_one_line_and_changes_nothing(resumable, data, tiny_llava, tmp_path, capsys, name):
    damage, extra, status, words = TRAIN_ROWS[name]
    run = tmp_path / "run"
    shutil.copytree(resumable, run)
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "deep.json").write_text(DEEP)
    extra = [a.format(file=tmp_path / "garbage.json", deep=tmp_path / "deep.json") for a in extra]
    if damage is not None:
        extra += ["--resume_from_checkpoint", damage(run)]
    before = snapshot(tmp_path)
    argv = ["train", *train_paths(data, tiny_llava, run), *TINY, "--max_steps", "3", *extra]
    got, err = run_cli(argv, capsys)
    assert got == status
    assert_one_error_line(got, err, *words)
    assert "weights_only" not in err
    assert snapshot(tmp_path) == before


def test_merge_lora_bad_shard_size_is_a_usage_error(tmp_path, capsys):
    run, _ = _lora_run(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli_main(["merge-lora", str(run), str(tmp_path / "merged"), "--max_shard_size", "lots"])
    assert exited.value.code == 2 and "--max_shard_size" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
