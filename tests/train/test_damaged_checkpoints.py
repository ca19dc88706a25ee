"""Resume survives any damaged checkpoint (issue 23, item 6).

A garbage or forged ``optimizer.pt`` / ``rng_state.pth`` / ``scheduler.pt`` or a ``trainable.safetensors`` /
``adapter_model.safetensors`` with a hostile header is found before the Trainer loads it: the automatic resume
skips that checkpoint with one warning naming the file and the cause and resumes from the one before (or starts
fresh with a warning when none is whole); ``--resume_from_checkpoint <damaged>`` is one error line naming the file.
Torch's advice to load with ``weights_only=False`` is never shown.

One projector run (2 steps, a checkpoint per step) is trained per module; each case damages a copy of its
``checkpoint-2`` and asks ``checkpoint_problem`` (no training), and three cases run ``train`` for real.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers.train import LORA_FLAGS, TINY, train_paths
from video_chatgpt.cli import main as cli_main
from video_chatgpt.train.checkpoints import checkpoint_problem, last_complete_checkpoint

STEPS = ["--max_steps", "2", "--save_steps", "1"]


@pytest.fixture(scope="module")
def runs(data, tiny_llava, tmp_path_factory) -> dict[str, Path]:
    """A projector run and a LoRA run of 2 steps with checkpoint-1 and checkpoint-2 (read-only: cases copy them)."""
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("damaged")
    out = {"run": root / "run", "lora": root / "lora"}
    train([*train_paths(data, tiny_llava, out["run"]), *TINY, *STEPS])
    train([*train_paths(data, tiny_llava, out["lora"]), *LORA_FLAGS, *STEPS])
    return out


class Evil:
    """Pickles as a call of os.system: a torch file that would run code if loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _edit_first_tensor(path: Path, **changes) -> None:
    header, data = _header(path)
    name = next(k for k in header if k != "__metadata__")
    header[name].update(changes)
    _write_header(path, header, data)


def _offsets_out_of_range(path: Path) -> None:
    header, data = _header(path)
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    _edit_first_tensor(path, data_offsets=[start + 10**9, end + 10**9])


def _zip_with(path: Path, member_suffix: str, content: bytes, compress: int = zipfile.ZIP_STORED) -> None:
    """Rewrite the torch.save zip ``path`` with the member ending in ``member_suffix`` replaced by ``content``."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, raw in members:
            if info.filename.endswith(member_suffix):
                raw = content
            info.compress_type = compress
            zf.writestr(info, raw)


def _bigger_storage(path: Path) -> None:
    """The RNG state's cpu tensor claims 1 GiB (its storage holds 3 bytes)."""
    torch.save({"cpu": torch.zeros(3, dtype=torch.uint8)}, path)
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    huge = b"J\x00\x00\x00\x40"  # BININT 2**30
    _zip_with(
        path, "data.pkl", pkl.replace(b"h\x01K\x03t", b"h\x01" + huge + b"t").replace(b"K\x00K\x03", b"K\x00" + huge)
    )


def _optimizer_edit(change):
    def edit(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return edit


def _first_state(state: dict) -> dict:
    return state["state"][next(iter(state["state"]))]


# name -> (run, file, how it is damaged, words of the cause)
CASES = {
    "optimizer.pt: garbage": ("run", "optimizer.pt", lambda p: p.write_bytes(b"\x00garbage" * 50), "not a torch.save"),
    "optimizer.pt: empty": ("run", "optimizer.pt", lambda p: p.write_bytes(b""), "not a torch.save"),
    "optimizer.pt: cut short": ("run", "optimizer.pt", lambda p: p.write_bytes(p.read_bytes()[:-200]), "not a torch"),
    "optimizer.pt: a pickle that runs code": ("run", "optimizer.pt", lambda p: torch.save({"a": Evil()}, p), "system"),
    "optimizer.pt: a plain pickle, not a zip": (
        "run",
        "optimizer.pt",
        lambda p: p.write_bytes(pickle.dumps({"state": {}})),
        "not a torch.save",
    ),  # fmt: skip
    "optimizer.pt: a list": ("run", "optimizer.pt", lambda p: torch.save([1, 2], p), "not an optimizer state"),
    "optimizer.pt: param_groups a string": (
        "run",
        "optimizer.pt",
        _optimizer_edit(lambda s: s.update(param_groups="x")),
        "param_groups",
    ),  # fmt: skip
    "optimizer.pt: a state of another shape": (
        "run",
        "optimizer.pt",
        _optimizer_edit(lambda s: _first_state(s).update(exp_avg=torch.zeros(7, 7))),
        "has shape (7, 7)",
    ),  # fmt: skip
    "optimizer.pt: more parameters than weights": (
        "run",
        "optimizer.pt",
        _optimizer_edit(lambda s: s["param_groups"][0]["params"].extend(range(100, 140))),
        "state of 4",
    ),  # fmt: skip
    "optimizer.pt: a compressed member (zip bomb)": (
        "run",
        "optimizer.pt",
        lambda p: _zip_with(p, "data.pkl", b"\x00" * 10**6, zipfile.ZIP_DEFLATED),
        "compressed",
    ),  # fmt: skip
    "optimizer.pt: far larger than its weights": (
        "run",
        "optimizer.pt",
        lambda p: p.write_bytes(b"\x00" * (20 * 2**20)),
        "more than the",
    ),  # fmt: skip
    "rng_state.pth: garbage": ("run", "rng_state.pth", lambda p: p.write_bytes(os.urandom(3000)), "not a torch.save"),
    "rng_state.pth: a pickle that runs code": ("run", "rng_state.pth", lambda p: torch.save(Evil(), p), "system"),
    "rng_state.pth: no python state": ("run", "rng_state.pth", lambda p: torch.save({"cpu": 1}, p), "'python'"),
    "rng_state.pth: a storage larger than its bytes": ("run", "rng_state.pth", _bigger_storage, "storage"),
    "rng_state.pth: a cpu state of the wrong size": (
        "run",
        "rng_state.pth",
        lambda p: torch.save({**torch.load(p, weights_only=False), "cpu": torch.zeros(3, dtype=torch.uint8)}, p),
        "a generator refuses its state",
    ),  # fmt: skip
    "scheduler.pt: garbage": ("run", "scheduler.pt", lambda p: p.write_bytes(b"PK\x03\x04junk"), "not a torch.save"),
    "scheduler.pt: a list": ("run", "scheduler.pt", lambda p: torch.save([1], p), "not a state"),
    "scheduler.pt: one rate too many": (
        "run",
        "scheduler.pt",
        lambda p: torch.save({**torch.load(p, weights_only=True), "base_lrs": [0.1, 0.1, 0.1]}, p),
        "3 learning rates",
    ),  # fmt: skip
    "trainable.safetensors: a huge header length": (
        "run",
        "trainable.safetensors",
        lambda p: p.write_bytes((10**15).to_bytes(8, "little") + b"{}"),
        "header length",
    ),  # fmt: skip
    "trainable.safetensors: a header that is not JSON": (
        "run",
        "trainable.safetensors",
        lambda p: p.write_bytes((5).to_bytes(8, "little") + b"hello"),
        "not valid JSON",
    ),  # fmt: skip
    "trainable.safetensors: a 100,000-deep header": (
        "run",
        "trainable.safetensors",
        lambda p: p.write_bytes((100_000).to_bytes(8, "little") + b"[" * 100_000),
        "nested too deeply",
    ),  # fmt: skip
    "trainable.safetensors: offsets out of range": (
        "run",
        "trainable.safetensors",
        _offsets_out_of_range,
        "the file holds",
    ),  # fmt: skip
    "trainable.safetensors: dtype does not match the bytes": (
        "run",
        "trainable.safetensors",
        lambda p: _edit_first_tensor(p, dtype="F64"),
        "needs",
    ),  # fmt: skip
    "trainable.safetensors: shape does not match the bytes": (
        "run",
        "trainable.safetensors",
        lambda p: _edit_first_tensor(p, shape=[3, 5]),
        "needs",
    ),  # fmt: skip
    "trainable.safetensors: a negative size": (
        "run",
        "trainable.safetensors",
        lambda p: _edit_first_tensor(p, shape=[-64]),
        "unreadable",
    ),  # fmt: skip
    "adapter_model.safetensors: a huge header length": (
        "lora",
        "adapter_model.safetensors",
        lambda p: p.write_bytes((2**63).to_bytes(8, "little") + b"{}"),
        "adapter_model.safetensors: header length",
    ),  # fmt: skip
    "trainer_state.json: a field the Trainer does not know": (
        "run",
        "trainer_state.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "evil": 1})),
        "evil",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_file_is_named_with_its_cause(runs, tmp_path, name):
    kind, file, damage, words = CASES[name]
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(runs[kind] / "checkpoint-2", ckpt)
    assert checkpoint_problem(ckpt) is None  # whole before the damage
    damage(ckpt / file)
    problem = checkpoint_problem(ckpt)
    assert problem is not None and file in problem and words in problem, problem
    assert "weights_only" not in problem and "\n" not in problem


def _copy_run(runs: dict, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(runs["run"], out)
    return out


def test_the_automatic_resume_skips_a_forged_checkpoint_with_one_warning(runs, data, tiny_llava, tmp_path, caplog):
    from video_chatgpt.train.train import train

    out = _copy_run(runs, tmp_path)
    torch.save({"a": Evil()}, out / "checkpoint-2" / "optimizer.pt")
    with caplog.at_level(logging.WARNING, logger="video_chatgpt.train"):
        train([*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "3", "--save_steps", "1"])
    warnings = [r.getMessage() for r in caplog.records if "cannot be resumed from" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint-2" in warnings[0] and "optimizer.pt" in warnings[0], warnings
    assert "posix.system" in warnings[0] and "weights_only" not in caplog.text
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"] == str(out / "checkpoint-1") and info["runs"][-1]["global_step"] == 3


def test_no_whole_checkpoint_starts_fresh_with_a_warning(runs, data, tiny_llava, tmp_path, caplog):
    from video_chatgpt.train.train import train

    out = _copy_run(runs, tmp_path)
    for n in (1, 2):
        (out / f"checkpoint-{n}" / "rng_state.pth").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="video_chatgpt.train"):
        assert last_complete_checkpoint(out) is None
    assert "training starts from step 0" in caplog.text and caplog.text.count("rng_state.pth: not a torch") == 2
    train([*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "1", "--save_strategy", "no"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"] is None and info["runs"][-1]["global_step"] == 1


def test_resume_from_a_damaged_checkpoint_is_one_line_naming_the_file(runs, data, tiny_llava, tmp_path, capsys):
    out = _copy_run(runs, tmp_path)
    ckpt = out / "checkpoint-2"
    _edit_first_tensor(ckpt / "trainable.safetensors", dtype="F64")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = ["train", *train_paths(data, tiny_llava, out), *TINY, "--max_steps", "3", "--resume_from_checkpoint", ckpt]
    status = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert status == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert (
        f"--resume_from_checkpoint {ckpt}" in lines[0] and "trainable.safetensors" in lines[0] and "needs" in lines[0]
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
