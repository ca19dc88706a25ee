"""Every bad input of the issue gives a clear error naming file and tensor, and leaves nothing at the target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import REPO
from tests.helpers.weights import load_folder
from video_chatgpt.cli import main as cli_main
from video_chatgpt.weights import delta as delta_module
from video_chatgpt.weights.apply_delta import apply_delta
from video_chatgpt.weights.checkpoint import WeightsError
from video_chatgpt.weights.delta import plan_delta
from video_chatgpt.weights.make_delta import make_delta

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4b6e4e8e0e8b2d1f1f0b3ad5e5d3ea3f5b1e2a3c4d5e6f708192a3b4c5d6e7f8\n"
    "size 9976634558\n"
)


def assert_nothing_written(target: Path) -> None:
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def fails(base: Path, delta: Path, target: Path, *needles: str) -> str:
    with pytest.raises(WeightsError) as exc:
        apply_delta(base, target, delta)
    message = str(exc.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert_nothing_written(target)
    return message


def rewrite_bin_tensor(folder: Path, name: str, value: torch.Tensor) -> Path:
    """Replace tensor ``name`` in the .bin shard that holds it. Returns that shard."""
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    shard = folder / index["weight_map"][name]
    state = torch.load(shard, weights_only=True)
    state[name] = value
    torch.save(state, shard)
    return shard


def rewrite_safetensors_tensor(folder: Path, name: str, value: torch.Tensor) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    state = load_file(shard)
    state[name] = value
    save_file(state, shard, metadata={"format": "pt"})
    return shard


def test_base_is_a_file(folders, delta_bin, tmp_path):
    """Users pass the trained projector video_chatgpt-7B.bin as the base."""
    file = tmp_path / "video_chatgpt-7B.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(4, 2)}, file)
    message = fails(
        file, delta_bin, tmp_path / "target", str(file), "is a file, not a model folder", "--projection_path"
    )
    assert "--base-model-path" in message


def test_base_folder_without_weights(delta_bin, tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "consolidated.00.pth").write_bytes(b"x")
    (tmp_path / "llama" / "params.json").write_text("{}")
    fails(tmp_path / "llama", delta_bin, tmp_path / "target", "has no model weights", "convert_llama_weights_to_hf")


def test_missing_shard(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    (base / "pytorch_model-00002-of-00003.bin").unlink()
    fails(
        base,
        delta_bin,
        tmp_path / "target",
        str(base / "pytorch_model-00002-of-00003.bin"),
        "is missing",
        "pytorch_model.bin.index.json",
        "incomplete",
    )


@pytest.mark.parametrize("which", ["delta_shard", "base_shard", "tokenizer"])
def test_git_lfs_pointer(folders, delta_bin, copy_of, tmp_path, which):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    pointer = {
        "delta_shard": delta / "model-00002-of-00004.safetensors",
        "base_shard": base / "pytorch_model-00001-of-00003.bin",
        "tokenizer": delta / "tokenizer.model",
    }[which]
    assert pointer.exists()
    pointer.write_text(LFS_POINTER)
    fails(base, delta, tmp_path / "target", str(pointer), "Git LFS pointer", "git lfs pull")


def test_shape_mismatch_on_a_non_vocabulary_tensor(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    name = "model.layers.1.mlp.up_proj.weight"
    shard = rewrite_bin_tensor(base, name, torch.zeros(100, 64, dtype=torch.float16))
    delta_shard = delta_bin / json.loads((delta_bin / "model.safetensors.index.json").read_text())["weight_map"][name]
    fails(base, delta_bin, tmp_path / "target", name, str(shard), str(delta_shard), "(172, 64)", "(100, 64)")


def test_vocabulary_tensor_with_fewer_rows_in_the_delta(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    rewrite_bin_tensor(base, "lm_head.weight", torch.zeros(32010, 64, dtype=torch.float16))
    fails(base, delta_bin, tmp_path / "target", "'lm_head.weight'", "(32003, 64)", "(32010, 64)", "more rows")


@pytest.mark.parametrize("side", ["delta", "base"])
def test_non_floating_dtype(folders, delta_bin, copy_of, tmp_path, side):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    name = "model.norm.weight"
    if side == "delta":
        shard = rewrite_safetensors_tensor(delta, name, torch.ones(64, dtype=torch.int64))
    else:
        shard = rewrite_bin_tensor(base, name, torch.ones(64, dtype=torch.int32))
    fails(base, delta, tmp_path / "target", str(shard), f"'{name}'", "floating point", "int")


def test_delta_tensor_missing_from_the_base(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    index_path = base / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.0.self_attn.o_proj.weight"
    shard = base / index["weight_map"].pop(name)
    state = torch.load(shard, weights_only=True)
    del state[name]
    torch.save(state, shard)
    index_path.write_text(json.dumps(index))
    fails(base, delta_bin, tmp_path / "target", name, "is not in the base", "not Vicuna")


def test_index_names_a_tensor_its_shard_lacks(folders, delta_bin, copy_of, tmp_path):
    base = copy_of(folders["base_bin"])
    index = json.loads((base / "pytorch_model.bin.index.json").read_text())
    name = "model.layers.0.mlp.down_proj.weight"
    shard = base / index["weight_map"][name]
    state = torch.load(shard, weights_only=True)
    del state[name]
    torch.save(state, shard)
    fails(base, delta_bin, tmp_path / "target", str(shard), name, "incomplete")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_shard(folders, delta_bin, copy_of, tmp_path, fmt):
    base, delta = copy_of(folders["base_bin"]), copy_of(delta_bin)
    if fmt == "safetensors":
        shard = delta / "model-00003-of-00004.safetensors"
    else:
        shard = base / "pytorch_model-00003-of-00003.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    fails(base, delta, tmp_path / "target", str(shard), "truncated")


def test_target_exists(folders, delta_bin, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not empty; remove it or pass --overwrite"):
        apply_delta(folders["base_bin"], target, delta_bin)
    assert (target / "keep.txt").read_text() == "mine"
    apply_delta(folders["base_bin"], target, delta_bin, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors.index.json").exists()
    with pytest.raises(WeightsError, match="is the input --delta-path"):
        apply_delta(folders["base_bin"], delta_bin, delta_bin, overwrite=True)


def test_failure_while_writing_leaves_nothing(folders, delta_bin, tmp_path, monkeypatch):
    """A failure after some shards are written (disk full, Ctrl-C, ...) removes the partial folder."""
    calls = []
    real = delta_module.combine

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(delta_module, "combine", flaky)
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        apply_delta(folders["base_bin"], target, delta_bin, max_shard_size="1MB")
    assert_nothing_written(target)


def test_cli_reports_the_error(folders, tmp_path, capsys):
    file = tmp_path / "video_chatgpt-7B.bin"
    file.write_bytes(b"\0" * 16)
    code = cli_main(
        [
            "apply-delta",
            "--base-model-path",
            str(file),
            "--target-model-path",
            str(tmp_path / "t"),
            "--delta-path",
            str(folders["target_bin"]),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "video-chatgpt apply-delta: error:" in err and "Traceback" not in err
    assert_nothing_written(tmp_path / "t")
    code = cli_main(
        [
            "apply-delta",
            "--base-model-path",
            "a",
            "--target-model-path",
            "b",
            "--delta-path",
            "c",
            "--max-shard-size",
            "lots",
        ]
    )
    assert code == 2 and "--max-shard-size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ wrong but silent
def test_base_that_already_has_a_projector_is_refused(folders, delta_bin, tmp_path):
    """A LLaVA folder passed as the base used to get the delta's projector added to its own, exit 0."""
    message = fails(
        folders["target_bin"],
        delta_bin,
        tmp_path / "target",
        "already a LLaVA model",
        "model.mm_projector.",
        "LLaMA-7B",
        str(folders["target_bin"]),
    )
    assert "has no model.mm_projector" not in message  # the old, wrong warning
    with pytest.raises(WeightsError, match="already a LLaVA model"):
        make_delta(folders["target_safetensors"], folders["target_bin"], tmp_path / "delta")
    assert_nothing_written(tmp_path / "delta")


def test_no_projector_warning_only_when_the_delta_has_none(folders, delta_bin):
    from video_chatgpt.weights.checkpoint import find_checkpoint, read_tensor_infos

    base = read_tensor_infos(find_checkpoint(folders["base_bin"]))
    delta = read_tensor_infos(find_checkpoint(delta_bin))
    assert not any("no model.mm_projector" in w for w in plan_delta(delta, base).warnings)
    without = {k: v for k, v in delta.items() if not k.startswith("model.mm_projector.")}
    assert any("no model.mm_projector" in w for w in plan_delta(without, base).warnings)


@pytest.mark.parametrize("how", ["same path", "symlink", "trailing ./"])
def test_make_delta_with_base_equal_to_target_is_refused(folders, tmp_path, how):
    target = folders["target_bin"]
    base = {"same path": target, "symlink": tmp_path / "link", "trailing ./": Path(f"{target}/./")}[how]
    if how == "symlink":
        base.symlink_to(target, target_is_directory=True)
    with pytest.raises(WeightsError, match="are the same folder") as exc:
        make_delta(base, target, tmp_path / "delta")
    assert "all zeros" in str(exc.value)
    assert_nothing_written(tmp_path / "delta")
    with pytest.raises(WeightsError, match="are the same folder"):
        apply_delta(base, tmp_path / "t", target)
    assert_nothing_written(tmp_path / "t")


def _strace_kill_at_rename(nth: int, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` under strace, SIGKILLed at its ``nth`` rename (before the rename happens).

    Without ``-P``: strace matches ``-P`` against a rename's first path only, and the second rename's first path
    is a random temporary name. With bytecode writing off, apply-delta's only renames are its own two.
    """
    if shutil.which("strace") is None:
        pytest.fail("strace is needed for this test: apt-get install -y strace")
    renames = "rename,renameat,renameat2"
    cmd = [
        "strace",
        "-f",
        "-o",
        "/dev/null",
        "-e",
        f"trace={renames}",
        "-e",
        f"inject={renames}:signal=KILL:when={nth}",
        *argv,
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_overwrite_killed_between_its_renames_is_recovered_by_rerunning(folders, delta_bin, tmp_path):
    """``--overwrite`` moves the old target aside, then the new one in; a SIGKILL between the two renames left no
    target and two hidden folders. The rerun puts the old target back (so --overwrite decides again) and cleans up."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    argv = [
        sys.executable,
        "-m",
        "video_chatgpt.cli",
        "apply-delta",
        "--base-model-path",
        str(folders["base_bin"]),
        "--target-model-path",
        str(target),
        "--delta-path",
        str(delta_bin),
        "--overwrite",
        "--quiet",
    ]
    killed = _strace_kill_at_rename(2, argv)
    assert killed.returncode != 0, killed.stderr
    # Killed exactly between the renames: the old target moved aside, the complete new one not yet in place.
    assert not target.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".target."))
    assert [n.split("-")[0] for n in leftovers] == [".target.old", ".target.partial"], leftovers

    # A rerun without --overwrite restores the old target and refuses, as the first run would have.
    with pytest.raises(WeightsError, match="pass --overwrite"):
        apply_delta(folders["base_bin"], target, delta_bin)
    assert (target / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".target.")]

    # Killed again, then rerun as the user first asked: the result equals an uninterrupted run.
    assert _strace_kill_at_rename(2, argv).returncode != 0
    apply_delta(folders["base_bin"], target, delta_bin, overwrite=True)
    apply_delta(folders["base_bin"], tmp_path / "clean", delta_bin)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not (target / "keep.txt").exists()
    got, want = load_folder(target), load_folder(tmp_path / "clean")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_half_written_folder_of_a_killed_run_is_removed(folders, delta_bin, tmp_path):
    """A SIGKILL while the shards are written (first rename never reached) leaves a .partial folder: the rerun
    deletes it and writes the target."""
    target = tmp_path / "target"
    partial = tmp_path / ".target.partial-abc123"
    partial.mkdir()
    (partial / "model-00001-of-00002.safetensors").write_bytes(b"half")
    lines = []
    apply_delta(folders["base_bin"], target, delta_bin, log=lines.append)
    assert not partial.exists() and (target / "model.safetensors.index.json").is_file()
    assert any("removed" in line and str(partial) in line for line in lines)
