"""Bad input, per command: the exit status, the words of the one-line message, and what must survive on disk.

Each row of ``CASES`` is one mistake a user makes (from the issue's fault-and-bad-input probe): the command line
(``video-chatgpt <command> ...``), the exit status (1: a user error, 2: a usage error), words the message must
hold, and a check of the files afterwards (the input unchanged, no partial output, no hidden leftovers). Rows run
in-process through ``video_chatgpt.cli.main`` (the same ``errors.run_main`` path as the console command; fast);
``SUBPROCESS_ROWS`` also run as ``python -m video_chatgpt.cli`` to pin the real exit status and that no traceback
is printed. Read-only and full file systems are real: a tmpfs mounted in a private mount namespace
(``unshare -rm``), so nothing is mounted on the machine and no root is needed where user namespaces are allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from tests.helpers.weights import write_base
from video_chatgpt.cli import main as cli_main
from video_chatgpt.features.store import save_features

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4b6e4e8e0e8b2d1f1f0b3ad5e5d3ea3f5b1e2a3c4d5e6f708192a3b4c5d6e7f8\n"
    "size 499723\n"
)
ITEMS = [{"video_id": f"v_{i}", "q": f"What happens in {i}?", "a": f"Thing {i}."} for i in range(4)]


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (or "dir") of everything under ``folder``, hidden files included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llava) -> dict[str, Path]:
    """Every input the rows need, built once (tiny models, a few MB). Rows must not modify it; each row that
    needs a place to write gets its own ``tmp_path``."""
    from video_chatgpt.weights.make_delta import make_delta

    root = tmp_path_factory.mktemp("bad_input")
    w: dict[str, Path] = {"root": root, "llava": tiny_llava}
    w["base"] = write_base(root / "llama", "bin")
    w["delta"] = root / "delta"
    make_delta(w["base"], tiny_llava, w["delta"], max_shard_size="3MB")

    def variant(name: str, source: Path, change: Callable[[Path], None]) -> None:
        shutil.copytree(source, root / name)
        change(root / name)
        w[name] = root / name

    variant("delta_lfs_tokenizer", w["delta"], lambda f: (f / "tokenizer.model").write_text(LFS_POINTER))
    variant(
        "llava_no_tokenizer",
        tiny_llava,
        lambda f: [(f / n).unlink() for n in ("tokenizer.model", "tokenizer_config.json") if (f / n).exists()],
    )
    variant("llava_lfs_tokenizer", tiny_llava, lambda f: (f / "tokenizer.model").write_text(LFS_POINTER))
    variant(
        "llava_lfs_shard",
        tiny_llava,
        lambda f: (f / sorted(f.glob("pytorch_model-*.bin"))[0].name).write_text(LFS_POINTER),
    )

    # Training data: 4 records, features as the model reads them (356 rows = 100 frames + 256 patches; its width).
    config = json.loads((tiny_llava / "config.json").read_text())
    width = config["mm_hidden_size"]
    records = [
        {"id": f"v_{i}", "video": f"v_{i}.pkl",
         "conversations": [{"from": "human", "value": f"<video>\nq{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(4)
    ]  # fmt: skip
    w["data"] = root / "train.json"
    w["data"].write_text(json.dumps(records))
    w["features"] = root / "features"
    rng = np.random.default_rng(0)
    for r in records:
        save_features(w["features"] / r["video"], rng.standard_normal((356, width)).astype(np.float16))
    w["nan_features"] = root / "nan_features"
    shutil.copytree(w["features"], w["nan_features"])
    bad = rng.standard_normal((356, width)).astype(np.float16)
    bad[7, 3] = np.nan
    save_features(w["nan_features"] / "v_2.pkl", bad)
    w["unsafe_data"] = root / "unsafe.json"
    w["unsafe_data"].write_text(json.dumps(records + [dict(records[0], video="../train.json")]))
    w["rows_300"] = save_features(root / "rows_300.pkl", np.zeros((300, width), np.float16))
    w["wide_16"] = save_features(root / "wide_16.pkl", np.zeros((356, 16), np.float16))

    w["instructions"] = root / "VideoInstruct.json"
    w["instructions"].write_text(json.dumps(ITEMS))
    w["broken_json"] = root / "broken.json"
    w["broken_json"].write_text('[{"video_id": "v_0", "q": ')
    w["a_file"] = root / "a_file.txt"
    w["a_file"].write_text("I am a file")
    w["garbage"] = root / "garbage.bin"
    w["garbage"].write_bytes(b"garbage\n" * 10)
    w["projector_lfs"] = root / "mm_projector.bin"
    w["projector_lfs"].write_text(LFS_POINTER)
    w["not_a_video"] = root / "not_a_video.mp4"
    w["not_a_video"].write_bytes(b"\x00not a video" * 100)
    w["empty_dir"] = root / "empty_run"
    w["empty_dir"].mkdir()
    return w


@dataclass
class Case:
    """``argv(world, tmp)`` -> the command line; ``survives(world, tmp, before)`` checks the files afterwards."""

    argv: Callable[[dict, Path], list]
    status: int
    words: tuple[str, ...]
    survives: Callable[[dict, Path, dict], None] = field(default=lambda w, tmp, before: None)
    report: bool = False  # the findings are a report on stdout (check-weights, data check), not an error line


def unchanged(key: str):
    """The world's ``key`` file or folder is byte for byte what it was."""

    def check(w, tmp, before):
        assert snapshot(w[key]) == before[key], f"{key} changed"

    return check


def nothing_in(tmp_name: str = ""):
    """Nothing was written into the row's own folder (or the named place under it does not exist)."""

    def check(w, tmp, before):
        place = tmp / tmp_name if tmp_name else tmp
        assert not place.exists() or (place.is_dir() and not any(place.iterdir())), sorted(tmp.rglob("*"))
        assert not [p for p in tmp.rglob(".*")], sorted(tmp.rglob("*"))

    return check


def snapshot(path: Path):
    return tree(path) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


def both(*checks):
    def check(w, tmp, before):
        for c in checks:
            c(w, tmp, before)

    return check


def s(*parts) -> list[str]:
    return [str(p) for p in parts]


def apply_delta_argv(w, base, target) -> list[str]:
    return s("apply-delta", "--base-model-path", base, "--delta-path", w["delta"], "--target-model-path", target)


def make_delta_argv(w, base, target, out) -> list[str]:
    return s("make-delta", "--base-model-path", base, "--target-model-path", target, "--delta-path", out)


def chat_argv(w, *extra) -> list[str]:
    return s(
        "chat",
        "--model-name",
        w["llava"],
        "--question",
        "What colour?",
        "--temperature",
        "0",
        "--max_new_tokens",
        "2",
        "--device",
        "cpu",
        *extra,
    )


def check_argv(data, feats, *extra) -> list[str]:
    return s("data", "check", "--data_path", data, "--video_folder", feats, "--num_workers", "1", *extra)


def inspect_argv(w, *extra) -> list[str]:
    return s(
        "data", "inspect", "--data_path", w["data"], "--video_folder", w["features"], "--model_name_or_path", *extra
    )


CASES: dict[str, Case] = {
    # ---- apply-delta
    "apply-delta: base is a LLaVA folder": Case(
        lambda w, t: apply_delta_argv(w, w["llava"], t / "target"),
        1,
        ("already a LLaVA model", "model.mm_projector", "LLaMA-7B"),
        both(nothing_in(), unchanged("llava")),
    ),
    "apply-delta: base is the delta": Case(
        lambda w, t: apply_delta_argv(w, w["delta"], t / "target"), 1, ("are the same folder",), nothing_in()
    ),
    "apply-delta: base missing": Case(
        lambda w, t: apply_delta_argv(w, t / "nope", t / "target"), 1, ("--base-model-path", "nope"), nothing_in()
    ),
    "apply-delta: base is a file": Case(
        lambda w, t: apply_delta_argv(w, w["a_file"], t / "target"), 1, ("is a file, not a model folder",), nothing_in()
    ),
    "apply-delta: target is a file": Case(
        lambda w, t: apply_delta_argv(w, w["base"], w["a_file"]), 1, ("exists and is a file",), unchanged("a_file")
    ),
    "apply-delta: target's folder is a file": Case(
        lambda w, t: apply_delta_argv(w, w["base"], w["a_file"] / "target"),
        1,
        (str(Path("a_file.txt")),),
        unchanged("a_file"),
    ),
    "apply-delta: target inside the delta": Case(
        lambda w, t: apply_delta_argv(w, w["base"], w["delta"] / "out"),
        1,
        ("is inside the input --delta-path", "would destroy an input"),
        unchanged("delta"),
    ),
    "apply-delta: tokenizer is an LFS pointer": Case(
        lambda w, t: s(
            "apply-delta",
            "--base-model-path",
            w["base"],
            "--delta-path",
            w["delta_lfs_tokenizer"],
            "--target-model-path",
            t / "target",
        ),
        1,
        ("Git LFS pointer", "git lfs pull"),
        nothing_in(),
    ),
    "apply-delta: bad --max-shard-size": Case(
        lambda w, t: apply_delta_argv(w, w["base"], t / "target") + ["--max-shard-size", "lots"],
        2,
        ("--max-shard-size",),
        nothing_in(),
    ),
    "apply-delta: missing flag": Case(lambda w, t: s("apply-delta", "--base-model-path", w["base"]), 2, ("required",)),
    # ---- make-delta
    "make-delta: base == target": Case(
        lambda w, t: make_delta_argv(w, w["llava"], w["llava"], t / "d"),
        1,
        ("are the same folder", "all zeros"),
        both(nothing_in(), unchanged("llava")),
    ),
    "make-delta: base is a LLaVA folder": Case(
        lambda w, t: make_delta_argv(w, w["llava_lfs_tokenizer"], w["llava"], t / "d"),
        1,
        ("already a LLaVA model",),
        nothing_in(),
    ),
    "make-delta: output is the target": Case(
        lambda w, t: make_delta_argv(w, w["base"], w["llava"], w["llava"]) + ["--overwrite"],
        1,
        ("is the input --target-model-path", "would destroy an input"),
        unchanged("llava"),
    ),
    # ---- check-weights
    "check-weights: missing folder": Case(
        lambda w, t: s("check-weights", t / "nope"), 1, ("does not exist",), report=True
    ),
    "check-weights: a file": Case(lambda w, t: s("check-weights", w["a_file"]), 1, ("is a file",), report=True),
    "check-weights: shard is an LFS pointer": Case(
        lambda w, t: s("check-weights", w["llava_lfs_shard"], "--no-vision-tower"), 1, ("Git LFS pointer",), report=True
    ),
    "check-weights: hub id not in the cache": Case(
        lambda w, t: s("check-weights", "nobody-here/no-such-model"), 1, ("nobody-here/no-such-model", "hf download")
    ),
    "check-weights: no tokenizer": Case(
        lambda w, t: s("check-weights", w["llava_no_tokenizer"], "--no-vision-tower"), 1, ("no tokenizer",), report=True
    ),
    # ---- convert
    "convert: output is the input": Case(
        lambda w, t: s("convert", "--input_json_file", w["instructions"], "--output_json_file", w["instructions"]),
        1,
        ("is the input --input_json_file", "nothing was written"),
        unchanged("instructions"),
    ),
    "convert: output's folder is a file": Case(
        lambda w, t: s("convert", "--input_json_file", w["instructions"], "--output_json_file", w["a_file"] / "o.json"),
        1,
        ("a_file.txt", "nothing was written"),
        unchanged("a_file"),
    ),
    "convert: broken JSON": Case(
        lambda w, t: s("convert", "--input_json_file", w["broken_json"], "--output_json_file", t / "o.json"),
        1,
        ("broken.json", "not valid JSON", "line 1"),
        nothing_in(),
    ),
    "convert: missing input": Case(
        lambda w, t: s("convert", "--input_json_file", t / "nope.json", "--output_json_file", t / "o.json"),
        1,
        ("nope.json", "cannot read"),
        nothing_in(),
    ),
    # ---- data check
    "data check: one NaN in one file": Case(
        lambda w, t: check_argv(w["data"], w["nan_features"]),
        1,
        ("non_finite", "v_2.pkl", "NaN or inf"),
        unchanged("nan_features"),
        report=True,
    ),
    "data check: a record climbs out of the folder": Case(
        lambda w, t: check_argv(w["unsafe_data"], w["features"]),
        1,
        ("unsafe_path", "climbs out", "record 4"),
        report=True,
    ),
    "data check: video folder missing": Case(
        lambda w, t: check_argv(w["data"], t / "nope"), 1, ("missing_feature", "does not exist"), report=True
    ),
    "data check: training JSON missing": Case(
        lambda w, t: check_argv(t / "nope.json", w["features"]),
        1,
        ("data_file", "nope.json", "cannot read"),
        report=True,
    ),
    "data check: model without tokenizer": Case(
        lambda w, t: check_argv(w["data"], w["features"], "--model_name_or_path", w["llava_no_tokenizer"]),
        1,
        ("no tokenizer (tokenizer.model or tokenizer.json)",),
    ),
    "data check: tokenizer is an LFS pointer": Case(
        lambda w, t: check_argv(w["data"], w["features"], "--model_name_or_path", w["llava_lfs_tokenizer"]),
        1,
        ("Git LFS pointer", "tokenizer.model"),
    ),
    "data check: model folder missing": Case(
        lambda w, t: check_argv(w["data"], w["features"], "--model_name_or_path", t / "nope"), 1, ("no such folder",)
    ),
    # ---- data inspect
    "data inspect: index out of range": Case(
        lambda w, t: inspect_argv(w, w["llava"], "--index", "9"), 2, ("out of range",)
    ),
    "data inspect: model without tokenizer": Case(
        lambda w, t: inspect_argv(w, w["llava_no_tokenizer"]), 1, ("no tokenizer (tokenizer.model or tokenizer.json)",)
    ),
    "data inspect: tokenizer is an LFS pointer": Case(
        lambda w, t: inspect_argv(w, w["llava_lfs_tokenizer"]), 1, ("Git LFS pointer",)
    ),
    "data inspect: a record climbs out of the folder": Case(
        lambda w, t: s(
            "data",
            "inspect",
            "--data_path",
            w["unsafe_data"],
            "--video_folder",
            w["features"],
            "--model_name_or_path",
            w["llava"],
            "--index",
            "4",
        ),
        1,
        ("climbs out of --video_folder",),
    ),
    "data inspect: training JSON missing": Case(
        lambda w, t: s(
            "data",
            "inspect",
            "--data_path",
            t / "nope.json",
            "--video_folder",
            w["features"],
            "--model_name_or_path",
            w["llava"],
        ),
        1,
        ("nope.json",),
    ),
    # ---- report
    "report: folder with no run": Case(
        lambda w, t: s("report", w["empty_dir"]), 1, ("holds no training run",), unchanged("empty_dir")
    ),
    "report: a file": Case(lambda w, t: s("report", w["a_file"]), 1, ("is a file",), unchanged("a_file")),
    "report: missing": Case(lambda w, t: s("report", t / "nope"), 1, ("no such folder",), nothing_in()),
    # ---- chat
    "chat: model folder missing": Case(
        lambda w, t: s("chat", "--model-name", t / "nope", "--features_path", w["rows_300"], "--question", "q"),
        1,
        ("no such folder",),
    ),
    "chat: model is a file": Case(
        lambda w, t: s("chat", "--model-name", w["a_file"], "--features_path", w["rows_300"], "--question", "q"),
        1,
        ("--projection_path",),
    ),
    "chat: base without tokenizer": Case(
        lambda w, t: s(
            "chat", "--model-name", w["llava_no_tokenizer"], "--features_path", w["rows_300"], "--question", "q"
        ),
        1,
        ("no tokenizer",),
    ),
    "chat: base shard is an LFS pointer": Case(
        lambda w, t: s(
            "chat", "--model-name", w["llava_lfs_shard"], "--features_path", w["rows_300"], "--question", "q"
        ),
        1,
        ("Git LFS pointer",),
    ),
    "chat: projector missing": Case(
        lambda w, t: chat_argv(w, "--projection_path", t / "nope.bin", "--features_path", w["rows_300"]),
        1,
        ("--projection_path", "no such file"),
    ),
    "chat: projector is garbage": Case(
        lambda w, t: chat_argv(w, "--projection_path", w["garbage"], "--features_path", w["rows_300"]),
        1,
        ("cannot be read as a PyTorch projector",),
    ),
    "chat: projector is an LFS pointer": Case(
        lambda w, t: chat_argv(w, "--projection_path", w["projector_lfs"], "--features_path", w["rows_300"]),
        1,
        ("Git LFS pointer",),
    ),
    "chat: video missing": Case(
        lambda w, t: chat_argv(w, "--video_path", t / "nope.mp4"), 1, ("--video_path", "no such")
    ),
    "chat: video is not a video": Case(
        lambda w, t: chat_argv(w, "--video_path", w["not_a_video"]), 1, ("--video_path", "not a video")
    ),
    "chat: features missing": Case(lambda w, t: chat_argv(w, "--features_path", t / "nope.pkl"), 1, ("no such file",)),
    "chat: features are garbage": Case(
        lambda w, t: chat_argv(w, "--features_path", w["garbage"]), 1, ("cannot be read as a feature array",)
    ),
    "chat: features with another row count": Case(
        lambda w, t: chat_argv(w, "--features_path", w["rows_300"]), 1, ("300 feature rows", "takes 356 video tokens")
    ),
    "chat: features of another width": Case(
        lambda w, t: chat_argv(w, "--features_path", w["wide_16"]), 1, ("(356, 16)", "projector reads (tokens, 32)")
    ),
    "chat: no video flag": Case(lambda w, t: s("chat", "--model-name", w["llava"]), 2, ("required",)),
}

# The controls: the same world with good inputs succeeds (so each row fails because of its one mistake).
GOOD = {
    "apply-delta": lambda w, t: apply_delta_argv(w, w["base"], t / "target"),
    "convert": lambda w, t: s("convert", "--input_json_file", w["instructions"], "--output_json_file", t / "o.json"),
    "data check": lambda w, t: check_argv(w["data"], w["features"], "--model_name_or_path", w["llava"]),
    "data inspect": lambda w, t: inspect_argv(w, w["llava"], "--index", "1"),
    "chat": lambda w, t: chat_argv(w, "--features_path", w["features"] / "v_0.pkl"),
    "chat --prompt_ids original": lambda w, t: chat_argv(
        w, "--features_path", w["features"] / "v_0.pkl", "--prompt_ids", "original"
    ),
}

# Run as real processes too (the exit status the shell sees, no traceback): one or two per command.
SUBPROCESS_ROWS = [
    "apply-delta: base is a LLaVA folder",
    "make-delta: base == target",
    "check-weights: shard is an LFS pointer",
    "convert: output is the input",
    "data check: one NaN in one file",
    "data inspect: tokenizer is an LFS pointer",
    "report: folder with no run",
    "chat: projector missing",  # refused before the model loads (the row-count rows need it: in-process only)
]


def _before(world: dict) -> dict:
    return {k: snapshot(v) for k, v in world.items() if isinstance(v, Path) and k != "root"}


def _check_message(out: str, err: str, case: Case, name: str) -> None:
    assert "Traceback" not in out + err, err
    message = out + err if case.report else err
    for word in case.words:
        assert word in message, f"{word!r} not in the message of {name!r}:\n{message}"
    if case.status == 1 and not case.report:
        command = name.split(":")[0]
        # "data check" errors are the console command's "video-chatgpt data" (or the subcommand's own name)
        progs = {f"video-chatgpt {command}", f"video-chatgpt {command.split()[0]}"}
        assert any(f"{prog}: error: " in err for prog in progs), err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(world, tmp_path, capsys, name):
    case = CASES[name]
    before = _before(world)
    status = cli_main(case.argv(world, tmp_path))
    captured = capsys.readouterr()
    assert status == case.status, f"{name}: exit {status}\n{captured.out}\n{captured.err}"
    _check_message(captured.out, captured.err, case, name)
    case.survives(world, tmp_path, before)


@pytest.mark.parametrize("name", list(GOOD))
def test_good_input_succeeds(world, tmp_path, capsys, name):
    assert cli_main(GOOD[name](world, tmp_path)) == 0, capsys.readouterr().err
    assert "error" not in capsys.readouterr().err


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "video_chatgpt.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
        **kwargs,
    )


@pytest.mark.parametrize("name", SUBPROCESS_ROWS)
def test_bad_input_as_a_process(world, tmp_path, name):
    case = CASES[name]
    before = _before(world)
    proc = _run(case.argv(world, tmp_path))
    assert proc.returncode == case.status, proc.stderr
    _check_message(proc.stdout, proc.stderr, case, name)
    case.survives(world, tmp_path, before)


def test_debug_shows_the_traceback(world, tmp_path):
    case = CASES["convert: output is the input"]
    debug = _run(case.argv(world, tmp_path) + ["--debug"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "is the input --input_json_file" in debug.stderr


# ----------------------------------------------------------------------------- real read-only and full disks
def _in_small_filesystem(mount_point: Path, options: str, argv: list[str], prepare: str = ""):
    """Run ``video-chatgpt argv`` with a fresh tmpfs (``options``, e.g. "size=64k" or "ro") at ``mount_point``, in a
    private mount namespace, after the shell command ``prepare`` (``$dir`` is the mount point). Returns (exit
    status, stderr, the names left in the tmpfs, hidden ones included)."""
    if shutil.which("unshare") is None:
        pytest.fail("these tests need util-linux's unshare (apt-get install -y util-linux)")
    mount_point.mkdir()
    script = (
        'dir="$2"; mount -t tmpfs -o "$1" tmpfs "$dir" || exit 99; shift 2; '
        + (prepare + " || exit 98; " if prepare else "")
        + '"$@"; rc=$?; echo "LEFT: $(ls -A "$dir" | tr "\\n" " ")" >&2; exit $rc'
    )
    cmd = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        script,
        "sh",
        options,
        str(mount_point),
        sys.executable,
        "-m",
        "video_chatgpt.cli",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode not in (98, 99), f"cannot set up a tmpfs in a user namespace here: {proc.stderr}"
    err, left = proc.stderr.rsplit("LEFT:", 1)
    return proc.returncode, err, left.split()


def test_disk_full_while_converting_leaves_no_partial_file(world, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"video_id": f"v_{i}", "q": "q" * 100, "a": "a" * 100} for i in range(2000)]))
    disk = tmp_path / "disk"
    status, err, left = _in_small_filesystem(
        disk, "size=64k", s("convert", "--input_json_file", big, "--output_json_file", disk / "train.json")
    )
    assert status == 1 and "no space left on the device" in err and "nothing was written" in err, err
    assert "Traceback" not in err and left == []


def test_report_on_a_full_disk_leaves_no_partial_file(world, tmp_path):
    """The run folder is the tmpfs: run_info.json fits, then a filler takes the rest, and the report cannot."""
    disk = tmp_path / "disk"
    prepare = (
        f"echo '{json.dumps({'notes': ['a note']})}' > \"$dir/run_info.json\" && "
        '(head -c 100000 /dev/zero > "$dir/fill" || true)'
    )
    status, err, left = _in_small_filesystem(disk, "size=64k", s("report", disk), prepare)
    assert status == 1 and "no space left on the device" in err and "Traceback" not in err, err
    assert sorted(left) == ["fill", "run_info.json"]  # no report, no .training_report.md.tmp


@pytest.mark.parametrize("command", ["apply-delta", "convert"])
def test_read_only_output_folder(world, tmp_path, command):
    disk = tmp_path / "ro"
    argv = (
        apply_delta_argv(world, world["base"], disk / "target")
        if command == "apply-delta"
        else s("convert", "--input_json_file", world["instructions"], "--output_json_file", disk / "train.json")
    )
    status, err, left = _in_small_filesystem(disk, "ro", argv)
    assert status == 1 and "Traceback" not in err, err
    assert ("read-only" in err) and str(disk) in err, err
    assert left == []


# ----------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_is_one_line_and_exit_130(world, tmp_path):
    """``data check`` blocked reading its training JSON from a FIFO: SIGINT -> "interrupted", exit 130, no
    traceback. The FIFO tells when the command is really waiting: a writer can open it only once the reader has."""
    fifo = tmp_path / "train.json"
    os.mkfifo(fifo)
    argv = [
        sys.executable,
        "-m",
        "video_chatgpt.cli",
        "data",
        "check",
        "--data_path",
        str(fifo),
        "--video_folder",
        str(world["features"]),
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    writer = None
    try:
        deadline = time.monotonic() + 120
        while writer is None:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the command opens it
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        os.write(writer, b'[{"id": ')  # part of the JSON: the command now waits in read() for the rest
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 130, err
    assert err.strip() == "video-chatgpt data: interrupted" and out == "", err


def test_disk_full_while_applying_the_delta_leaves_no_partial_folder(world, tmp_path):
    """The free-space check passes (the tmpfs holds the tensors' bytes), then the shard headers, the index and the
    4 KB page of each file do not fit: ENOSPC in the middle of writing. One line, and the tmpfs is left empty."""
    from video_chatgpt.weights.checkpoint import find_checkpoint, read_tensor_infos
    from video_chatgpt.weights.delta import SIDE_FILES

    infos = read_tensor_infos(find_checkpoint(world["delta"]))
    tensor_bytes = sum(math.prod(i.shape) * 2 for i in infos.values())  # fp16 output
    side = sum((world["delta"] / n).stat().st_size for n in SIDE_FILES if (world["delta"] / n).is_file())
    disk = tmp_path / "disk"
    argv = apply_delta_argv(world, world["base"], disk / "target") + ["--max-shard-size", "300KB"]
    status, err, left = _in_small_filesystem(disk, f"size={tensor_bytes + side + 4096}", argv)
    assert status == 1 and "no space left on the device" in err and "Traceback" not in err, err
    assert left == []


def test_report_on_a_read_only_run_folder(world, tmp_path):
    disk = tmp_path / "run"
    prepare = f'echo \'{json.dumps({"notes": []})}\' > "$dir/run_info.json" && mount -o remount,ro "$dir"'
    status, err, left = _in_small_filesystem(disk, "size=1m", s("report", disk), prepare)
    assert status == 1 and "read-only file system" in err and "Traceback" not in err, err
    assert left == ["run_info.json"]
