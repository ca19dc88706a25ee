"""Training hardening (issue 16): exact saved frozen rows under bf16/fp16 and after a resume, NaN features and
non-finite losses stop the run, record paths outside --video_folder, checkpoint validation before resume, final
files that survive a kill while they are written (strace), and the accepted-but-ignored flags."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import ENV, REPO
from tests.helpers.train import TINY, base_state, train_paths
from video_chatgpt.constants import EMBED_TOKENS_KEY
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import load_features, save_features

BASE_ROWS = 32003  # the LLaVA base's vocabulary; 32003-32005 are the new video tokens


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_saved_frozen_rows_are_the_bases_bit_for_bit(precision, data, tiny_llava, tmp_path, monkeypatch):
    """The frozen backbone is loaded in bf16/fp16 (as on a GPU); mm_projector.bin must still carry the base's rows."""
    from video_chatgpt.train import arguments
    from video_chatgpt.train.train import train

    monkeypatch.setattr(arguments, "cpu_has_fast_bf16", lambda: True)  # act as a CPU/GPU with native bf16
    base = base_state(tiny_llava)[EMBED_TOKENS_KEY]
    assert base.dtype == torch.float16 and base.shape[0] == BASE_ROWS
    # The test can fail: bf16 rounding does change these rows (what the defect saved).
    assert not torch.equal(base.bfloat16().float(), base.float())
    out = tmp_path / "run"
    train(
        [*train_paths(data, tiny_llava, out), *TINY, f"--{precision}", "True", "--max_steps", "2", "--save_steps", "1"]
    )
    # A resumed run (from checkpoint-2, one more step) must save exact rows too.
    train(
        [*train_paths(data, tiny_llava, out), *TINY, f"--{precision}", "True", "--max_steps", "3", "--save_steps", "1"]
    )
    assert json.loads((out / "run_info.json").read_text())["runs"][-1]["resumed_from"].endswith("checkpoint-2")
    for folder in (out / "checkpoint-1", out / "checkpoint-3", out):
        emb = torch.load(folder / "mm_projector.bin", weights_only=True)[EMBED_TOKENS_KEY]
        assert emb.dtype == torch.float32 and emb.shape[0] == BASE_ROWS + 3
        assert torch.equal(emb[:BASE_ROWS], base.float()), (folder, (emb[:BASE_ROWS] - base.float()).abs().max())
    initial = base.float().mean(0)  # <vid_start>/<vid_end> start at the mean of the base rows and train
    assert (emb[32004] - initial).abs().max() > 1e-4 and (emb[32005] - initial).abs().max() > 1e-4


def _nan_copy(data, tmp_path):
    folder = tmp_path / "features"
    shutil.copytree(data["video_folder"], folder)
    victim = sorted(folder.glob("*.pkl"))[3]
    features = load_features(victim).copy()
    features[5, 7] = np.nan
    save_features(victim, features)
    return folder, victim


def test_dataset_refuses_nan_features_naming_the_file(data, tiny_llava, tmp_path):
    from video_chatgpt.data.dataset import SupervisedVideoDataset
    from video_chatgpt.data.tokenizer import SegmentEncoder, load_video_tokenizer

    folder, victim = _nan_copy(data, tmp_path)
    tokenizer, ids, _ = load_video_tokenizer(tiny_llava, True, 2048)
    records = data["records"]
    dataset = SupervisedVideoDataset(
        records, folder, SegmentEncoder(tokenizer), ids, feature_shape=(356, data["width"]), max_length=2048
    )
    index = next(i for i, r in enumerate(records) if r["video"] == victim.name)
    dataset[index - 1 if index else index + 1]  # a clean file still loads
    with pytest.raises(UserError, match=rf"{victim}: 1 non-finite value\(s\) \(first at row 5, column 7"):
        dataset[index]


def test_training_on_a_nan_feature_exits_1_and_saves_nothing(data, tiny_llava, tmp_path):
    folder, victim = _nan_copy(data, tmp_path)
    out = tmp_path / "run"
    argv = [*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "8", "--save_strategy", "no"]
    argv[argv.index("--video_folder") + 1] = str(folder)
    run = subprocess.run(
        [sys.executable, "video_chatgpt/train/train_mem.py", *argv],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"train_mem.py: error: {victim}: 1 non-finite value(s)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (out / "mm_projector.bin").exists() and not (out / "trainable.safetensors").exists()


def test_a_non_finite_loss_stops_training_before_saving(data, tiny_llava, tmp_path, monkeypatch):
    """If a NaN gets past the dataset (here the dataset check is switched off), the trainer stops at that step."""
    from video_chatgpt.data import dataset
    from video_chatgpt.train.train import train

    folder, _ = _nan_copy(data, tmp_path)
    monkeypatch.setattr(dataset, "check_finite", lambda features, path: features)
    out = tmp_path / "run"
    argv = [*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "8", "--save_steps", "1"]
    argv[argv.index("--video_folder") + 1] = str(folder)
    with pytest.raises(UserError, match=r"training stopped at step \d: the (loss|gradient norm) is nan \(not finite\)"):
        train(argv)
    assert not (out / "mm_projector.bin").exists()
    for ckpt in out.glob("checkpoint-*"):  # checkpoints before the bad step are clean
        art = torch.load(ckpt / "mm_projector.bin", weights_only=True)
        assert all(torch.isfinite(t).all() for t in art.values()), ckpt


def test_grad_norm_check_refuses_nan(tiny_llava):
    from video_chatgpt.train.trainer import VideoChatGPTTrainer

    trainer = VideoChatGPTTrainer.__new__(VideoChatGPTTrainer)
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float("nan"))
    trainer.state = type("S", (), {"global_step": 4})()
    trainer.args = type("A", (), {"output_dir": "out"})()
    trainer.accelerator = type(
        "Acc",
        (),
        {"scaler": None, "distributed_type": None, "clip_grad_norm_": staticmethod(torch.nn.utils.clip_grad_norm_)},
    )()
    trainer._has_mixed_mesh_grads = lambda model: False
    with pytest.raises(UserError, match="training stopped at step 5: the gradient norm is nan"):
        trainer._get_grad_norm(model)


@pytest.mark.parametrize(
    "video, words",
    [
        ("/etc/passwd", "is an absolute path"),
        ("../outside.pkl", "climbs out of --video_folder"),
        ("sub/../../x.pkl", "climbs out of --video_folder"),
        ("C:\\features\\x.pkl", "is an absolute path"),
    ],
)
def test_record_paths_outside_the_folder_are_refused(video, words, data, tiny_llava, tmp_path):
    from video_chatgpt.data.paths import feature_path
    from video_chatgpt.train.train import train

    with pytest.raises(UserError, match=words):
        feature_path(data["video_folder"], video)
    records = json.loads(data["data_path"].read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records[:2] + [{**records[0], "id": "evil", "video": video}]))
    with pytest.raises(UserError, match=rf"{bad}: record 2 \(id 'evil'\): .*{words}"):
        train(
            [
                "--model_name_or_path",
                str(tiny_llava),
                "--data_path",
                str(bad),
                "--video_folder",
                str(data["video_folder"]),
                "--output_dir",
                str(tmp_path / "o"),
                "--tune_mm_mlp_adapter",
                "True",
            ]
        )
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_record_paths_inside_the_folder_are_fine(tmp_path):
    """Names in subfolders, with "./" or doubled slashes, and links inside the folder (to a shared disk) name the
    file they lead to, and its features are read (any ".." is refused: test_record_paths_outside_...)."""
    from video_chatgpt.data.paths import feature_path

    folder, disk = tmp_path / "features", tmp_path / "shared-disk"
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    real = save_features(folder / "sub" / "v_1.pkl", array)
    save_features(disk / "v_2.pkl", array + 1)
    (folder / "v_2.pkl").symlink_to(disk / "v_2.pkl")
    for video in ("sub/v_1.pkl", "./sub/v_1.pkl", "sub//v_1.pkl", "sub/./v_1.pkl"):
        assert feature_path(folder, video) == real, video
        assert np.array_equal(load_features(feature_path(folder, video)), array), video
    assert np.array_equal(load_features(feature_path(folder, "v_2.pkl")), array + 1)


def test_damaged_checkpoints_are_not_resumed_from(data, tiny_llava, tmp_path, caplog):
    from video_chatgpt.train.checkpoints import last_complete_checkpoint
    from video_chatgpt.train.train import train

    out = tmp_path / "run"
    train(
        [*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "5"]
    )
    good = out / "checkpoint-1"
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")
    (out / "checkpoint-4" / "trainer_state.json").write_text("")  # killed while writing the state: empty
    text = (out / "checkpoint-3" / "trainer_state.json").read_text()
    (out / "checkpoint-3" / "trainer_state.json").write_text(text[: len(text) // 2])  # cut short
    trainables = (out / "checkpoint-2" / "trainable.safetensors").read_bytes()
    (out / "checkpoint-2" / "trainable.safetensors").write_bytes(trainables[:-100])  # cut short
    with caplog.at_level(logging.WARNING, logger="video_chatgpt.train"):
        assert last_complete_checkpoint(out) == str(good)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-4 cannot be resumed from (trainer_state.json is empty or cut short" in messages
    assert "checkpoint-3 cannot be resumed from (trainer_state.json is empty or cut short" in messages
    assert "checkpoint-2 cannot be resumed from (its weights cannot be read" in messages and "truncated" in messages
    # And the run resumes from checkpoint-1 to the end.
    train(
        [*train_paths(data, tiny_llava, out), *TINY, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "5"]
    )
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"] == str(good) and info["runs"][-1]["global_step"] == 4
    with pytest.raises(UserError, match="--resume_from_checkpoint .*checkpoint-9.*no trainer_state.json"):
        (out / "checkpoint-9").mkdir()
        train(
            [
                *train_paths(data, tiny_llava, out),
                *TINY,
                "--max_steps",
                "4",
                "--resume_from_checkpoint",
                str(out / "checkpoint-9"),
            ]
        )


def test_final_files_survive_a_kill_while_written(data, tiny_llava, tmp_path):
    """strace kills the run at its first write of the temporary projector: the previous good file must survive;
    a kill aimed at the final name itself never fires (nothing writes there in place); the next run cleans up."""
    if shutil.which("strace") is None:
        pytest.fail("strace is needed for this test: apt-get install -y strace")
    from video_chatgpt.files import temporary_path

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "video_chatgpt/train/train_mem.py",
        *train_paths(data, tiny_llava, out),
        *TINY,
        "--save_strategy",
        "no",
    ]
    first = subprocess.run([*cmd, "--max_steps", "1"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    final = out / "mm_projector.bin"
    good = final.read_bytes()
    for victim in (final,):
        tmp = temporary_path(victim)
        killed = subprocess.run(
            [
                "strace",
                "-f",
                "-o",
                "/dev/null",
                "-P",
                str(tmp),
                "-e",
                "trace=write",
                "-e",
                "inject=write:signal=KILL:when=1",
                *cmd,
                "--max_steps",
                "2",
            ],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert killed.returncode != 0, killed.stderr[-2000:]
        assert tmp.exists(), victim  # the kill hit the temporary file ...
        assert final.read_bytes() == good  # ... and the previous projector is intact
    # Aimed at the final name: a writer in place would be killed mid-file; ours renames, so the run completes.
    whole = subprocess.run(
        [
            "strace",
            "-f",
            "-o",
            "/dev/null",
            "-P",
            str(final),
            "-e",
            "trace=write",
            "-e",
            "inject=write:signal=KILL:when=1",
            *cmd,
            "--max_steps",
            "2",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not list(out.glob(".*.tmp"))  # the next run removed the leftovers of the killed ones
    art = torch.load(final, weights_only=True)
    assert art[EMBED_TOKENS_KEY].shape[0] == BASE_ROWS + 3


def test_ignored_flags_and_the_cpu_fallback_are_logged_and_noted(data, tiny_llava, tmp_path, caplog, monkeypatch):
    from video_chatgpt.train import arguments
    from video_chatgpt.train.train import train

    monkeypatch.setattr(arguments, "cpu_has_fast_bf16", lambda: False)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        train(
            [
                *train_paths(data, tiny_llava, out),
                *TINY,
                "--max_steps",
                "1",
                "--save_strategy",
                "no",
                "--bf16",
                "True",
                "--is_multimodal",
                "True",
                "--video_token_len",
                "356",
                "--frame_aspect_ratio=square",
                "--force_fsdp",
                "True",
            ]
        )
    notes = json.loads((out / "run_info.json").read_text())["notes"]
    logged = [r.getMessage() for r in caplog.records if r.name == "video_chatgpt.train"]
    for flag in ("is_multimodal", "video_token_len", "frame_aspect_ratio", "force_fsdp"):
        (line,) = [n for n in notes if n.startswith(f"--{flag} has no effect: ")]
        assert line in logged
    (fallback,) = [n for n in notes if n.startswith("--bf16 True:")]
    assert "training ran in fp32" in fallback and fallback in logged
    # Without those flags there is nothing to note.
    train([*train_paths(data, tiny_llava, tmp_path / "plain"), *TINY, "--max_steps", "1", "--save_strategy", "no",
           "--logging_steps", "1"])  # fmt: skip
    assert json.loads((tmp_path / "plain" / "run_info.json").read_text())["notes"] == []


def test_feature_manifest_is_checked_against_the_model_before_step_1(data, tiny_llava, tmp_path, caplog):
    from video_chatgpt.features.store import MANIFEST_NAME
    from video_chatgpt.train.train import train

    folder = tmp_path / "features"
    shutil.copytree(data["video_folder"], folder)
    tower = json.loads((tiny_llava / "config.json").read_text())["mm_vision_tower"]
    manifest = {
        "vision_tower": "someone/other-clip",
        "num_frames": 100,
        "spatial_pool": "mean",
        "feature_shape": [356, data["width"]],
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    argv = [*train_paths(data, tiny_llava, tmp_path / "run"), *TINY, "--max_steps", "1", "--save_strategy", "no"]
    argv[argv.index("--video_folder") + 1] = str(folder)
    with caplog.at_level(logging.WARNING, logger="video_chatgpt.train"):
        train(argv)
    assert any(
        "made with vision tower someone/other-clip" in r.getMessage() and str(tower) in r.getMessage()
        for r in caplog.records
    )
    (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "feature_shape": [356, data["width"] * 2]}))
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "wide")
    with pytest.raises(UserError, match=rf"features are {data['width'] * 2} wide but the model's projector reads"):
        train(argv)
    assert not (tmp_path / "wide" / "trainer_state.json").exists()
