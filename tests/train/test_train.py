"""Training: the document's commands on the tiny sample (one process, torchrun x2, resume after a kill), what is
trained, what is saved, the arguments, and the model's video-token checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ENV, REPO, free_port
from tests.helpers.train import base_state, train_paths
from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_BIAS_KEY, PROJECTOR_WEIGHT_KEY

# The user's document's single-GPU command, flags unchanged (only the paths differ).
DOCUMENT_FLAGS = (
    "--version v1 --tune_mm_mlp_adapter True --mm_use_vid_start_end --bf16 True --num_train_epochs 3 "
    "--per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 "
    "--evaluation_strategy no --save_strategy steps --save_steps 3000 --save_total_limit 3 --learning_rate 2e-5 "
    "--weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 100 --tf32 True "
    "--model_max_length 2048 --gradient_checkpointing True --lazy_preprocess True"
).split()


def check_outputs(out, vocab=32006):
    art = torch.load(out / "mm_projector.bin", weights_only=True)
    assert set(art) == {PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY, EMBED_TOKENS_KEY}
    assert all(t.dtype == torch.float32 for t in art.values())
    assert art[EMBED_TOKENS_KEY].shape[0] == vocab
    config = json.loads((out / "config.json").read_text())
    assert config["video_token_len"] == 356 and config["video_start_token_id"] == 32004
    assert (out / "tokenizer.model").is_file() and (out / "video_chatgpt_base.json").is_file()
    return art


def test_document_command_single_process(data, tiny_llava, tmp_path):
    """``python video_chatgpt/train/train_mem.py`` with the document's flags: trains on CPU, saves, checkpoints."""
    out = tmp_path / "Video-ChatGPT_7B-1.1_Checkpoints"
    cmd = [sys.executable, "video_chatgpt/train/train_mem.py", *train_paths(data, tiny_llava, out), *DOCUMENT_FLAGS]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trainable: 2,240 of" in run.stdout  # projector (32x64 + 64) + 2 token rows of 64
    assert "--tf32 True needs a CUDA GPU" in run.stderr  # a warning, not a crash
    art = check_outputs(out)
    # Gradient checkpointing on a frozen backbone still trains the projector (at the document's 2e-5).
    assert not torch.equal(art[PROJECTOR_WEIGHT_KEY], base_state(tiny_llava)["model.mm_projector.weight"].float())
    steps = 3 * len(data["records"]) // 4
    assert (out / f"checkpoint-{steps}" / "trainable.safetensors").is_file()  # the final checkpoint
    # --logging_steps 100 > 24 steps: no loss was logged, so there is a report but no curve to plot.
    assert (out / "training_report.md").is_file() and not (out / "loss.png").exists()


@pytest.fixture(scope="module")
def trained(data, language_llava, tmp_path_factory):
    """An in-process run with a learning rate that moves the tiny model, 12 steps, logging every step."""
    from video_chatgpt.train.train import train

    out = tmp_path_factory.mktemp("trained")
    train(
        [
            *train_paths(data, language_llava, out),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            "12",
            "--learning_rate",
            "1e-2",
            "--logging_steps",
            "1",
            "--save_steps",
            "6",
            "--save_total_limit",
            "1",
            "--report_to",
            "none",
        ]
    )
    return out


def test_only_the_projector_and_two_rows_change(trained, language_llava):
    art = check_outputs(trained)
    base = base_state(language_llava)
    assert not torch.equal(art[PROJECTOR_WEIGHT_KEY], base["model.mm_projector.weight"].float())
    emb = art[EMBED_TOKENS_KEY]
    # All 32003 rows of the base are bit-identical; <vid_patch> (32003) is never trained.
    assert torch.equal(emb[:32003], base["model.embed_tokens.weight"].float())
    # <vid_start>/<vid_end> started at the mean of all earlier rows and moved.
    initial = emb[:32004].mean(0)
    assert (emb[32004] - initial).abs().max() > 1e-3 and (emb[32005] - initial).abs().max() > 1e-3
    saved = load_file(str(trained / "trainable.safetensors"))
    assert set(saved) == {"model.mm_projector.weight", "model.mm_projector.bias", "model.video_token_embeds"}
    assert saved["model.video_token_embeds"].shape == (2, 64)
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-12"]  # --save_total_limit 1


def test_loss_falls(trained):
    losses = [e["loss"] for e in json.loads((trained / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05


def test_throughput_is_logged(trained):
    logs = [e for e in json.loads((trained / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert all(e["tokens_per_second"] > 0 and e["samples_per_second"] > 0 for e in logs)


def test_a_half_written_checkpoint_is_skipped(tmp_path):
    from safetensors.torch import save_file

    from video_chatgpt.train.checkpoints import last_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        save_file(
            {"model.mm_projector.bias": torch.zeros(4)}, str(tmp_path / f"checkpoint-{step}" / "trainable.safetensors")
        )
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_resume_after_kill(data, tiny_llava, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "video_chatgpt/train/train_mem.py",
        *train_paths(data, tiny_llava, out),
        "--tune_mm_mlp_adapter",
        "True",
        "--mm_use_vid_start_end",
        "--max_steps",
        "40",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--skip_data_check",
        "True",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (out / "checkpoint-6").is_dir():
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "checkpoint-4" / "trainer_state.json").is_file(), log.read_text()[-3000:]
    assert not (out / "mm_projector.bin").exists()  # killed before the end
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    first_logged = min(e["step"] for e in state["log_history"] if "loss" in e)
    assert first_logged == 1  # the history before the kill came back from the checkpoint
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"].split("checkpoint-")[1].isdigit()
    check_outputs(out)


def test_torchrun_two_processes(data, tiny_llava, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "video_chatgpt/train/train_mem.py",
        *train_paths(data, tiny_llava, out),
        "--tune_mm_mlp_adapter",
        "True",
        "--mm_use_vid_start_end",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
    ]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    check_outputs(out)
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert len(info["runs"]) == 1  # only the main process wrote
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (out / "checkpoint-4" / "trainable.safetensors").is_file()
    # Both ranks ended with the same trainable weights (each hashed its own copy; rank 0 saved) ...
    checksums = info["runs"][-1]["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums
    # ... and 2 processes x 2 samples equal 1 process x 4 samples (same global batch, same data order).
    single = tmp_path / "single"
    one = subprocess.run(
        [
            sys.executable,
            "video_chatgpt/train/train_mem.py",
            *train_paths(data, tiny_llava, single),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--max_steps",
            "4",
            "--save_strategy",
            "no",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = torch.load(out / "mm_projector.bin", weights_only=True)
    ref = torch.load(single / "mm_projector.bin", weights_only=True)
    base = base_state(tiny_llava)["model.mm_projector.weight"].float()
    assert not torch.equal(ref[PROJECTOR_WEIGHT_KEY], base)  # the comparison is between trained projectors
    for key in ref:
        assert torch.allclose(ddp[key], ref[key], rtol=1e-4, atol=1e-6), (key, (ddp[key] - ref[key]).abs().max())


def test_full_finetune_without_tuning_flag(data, tiny_llava, tmp_path):
    from video_chatgpt.train.train import train

    out = tmp_path / "full"
    train(
        [
            *train_paths(data, tiny_llava, out),
            "--mm_use_vid_start_end",
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
            "--skip_data_check",
            "True",
        ]
    )
    info = json.loads((out / "run_info.json").read_text())
    assert sum(p["count"] for p in info["trainable_parameters"]) > 4_000_000  # everything trains
    assert (out / "model.safetensors").is_file() and (out / "mm_projector.bin").is_file()


def test_report_to_tensorboard(data, tiny_llava, tmp_path):
    from video_chatgpt.train.train import train

    out = tmp_path / "tb"
    train(
        [
            *train_paths(data, tiny_llava, out),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "tensorboard",
            "--skip_data_check",
            "True",
        ]
    )
    assert list(out.rglob("events.out.tfevents.*"))


def test_pretrain_mm_mlp_adapter_starts_from_the_file(trained, data, language_llava, tmp_path):
    from video_chatgpt.train.train import train

    out = tmp_path / "from-adapter"
    train(
        [
            *train_paths(data, language_llava, out),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--pretrain_mm_mlp_adapter",
            str(trained / "mm_projector.bin"),
            "--learning_rate",
            "0",
            "--max_steps",
            "1",
            "--report_to",
            "none",
            "--skip_data_check",
            "True",
        ]
    )
    start = torch.load(trained / "mm_projector.bin", weights_only=True)
    end = torch.load(out / "mm_projector.bin", weights_only=True)
    for key in (PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY):
        assert torch.equal(start[key], end[key]), key
    rows = [*range(32003), 32004, 32005]  # all but <vid_patch>, which keeps its fresh init, as in the original
    assert torch.equal(start[EMBED_TOKENS_KEY][rows], end[EMBED_TOKENS_KEY][rows])


def test_data_check_stops_training_on_missing_features(data, tiny_llava, tmp_path):
    from video_chatgpt.train.train import train

    records = json.loads(data["data_path"].read_text())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(records + [{**records[0], "id": "v_missing", "video": "v_missing.pkl"}]))
    with pytest.raises(SystemExit, match="data check failed"):
        train(
            [
                "--model_name_or_path",
                str(tiny_llava),
                "--data_path",
                str(broken),
                "--video_folder",
                str(data["video_folder"]),
                "--output_dir",
                str(tmp_path / "o"),
                "--tune_mm_mlp_adapter",
                "True",
            ]
        )
    assert not (tmp_path / "o").exists()


def test_arguments_keep_the_documents_flags_working():
    from video_chatgpt.train.arguments import parse_arguments

    model, data_args, args = parse_arguments(
        [
            "--model_name_or_path",
            "m",
            "--data_path",
            "d",
            "--video_folder",
            "v",
            "--output_dir",
            "/tmp/x",
            "--evaluation_strategy",
            "no",
            "--warmup_ratio",
            "0.03",
            "--gradient_checkpointing",
            "True",
            "--tf32",
            "True",
            "--bf16",
            "True",
            "--mm_use_vid_start_end",
        ]
    )
    assert model.mm_use_vid_start_end is True and model.attn_implementation == "sdpa"
    assert str(args.eval_strategy.value if hasattr(args.eval_strategy, "value") else args.eval_strategy) == "no"
    assert args.warmup_steps == pytest.approx(0.03)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.model_max_length == 512 and model.version == "v0"  # the original's defaults


@pytest.mark.parametrize(
    "flags, mode, frozen",
    [
        ([], "full", False),
        (["--freeze_backbone", "True"], "full", True),  # the LLM body frozen inside the full mode
        (["--tune_mm_mlp_adapter", "True"], "projector", True),
        (["--stage", "pretrain"], "projector", True),  # stage 1: the projector alone, whatever the tuning flag says
        (["--stage", "finetune"], "full", False),
        (["--lora_enable", "True"], "lora", True),
        (["--lora_enable", "True", "--tune_mm_mlp_adapter", "True"], "lora", True),
    ],
)
def test_training_mode_is_one_setting_read_from_the_flags(flags, mode, frozen):
    from video_chatgpt.train.arguments import backbone_frozen, parse_arguments, training_mode

    argv = ["--model_name_or_path", "m", "--data_path", "d", "--video_folder", "v", "--output_dir", "/tmp/x", *flags]
    model_args, _, args = parse_arguments(argv)
    assert training_mode(model_args, args) == mode and backbone_frozen(model_args, args) == frozen
    assert model_args.tune_mm_mlp_adapter == ("--tune_mm_mlp_adapter" in flags)  # derived, the settings not rewritten


def test_model_checks_show_both_counts(tiny_llava):
    from video_chatgpt.bases import read_config
    from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM, video_config

    cfg = video_config(
        read_config(tiny_llava),
        mm_use_vid_start_end=True,
        video_patch_token_id=7,
        video_start_token_id=8,
        video_end_token_id=9,
    )
    model = VideoChatGPTForCausalLM(cfg)
    ids = torch.tensor([[1, 8, 7, 7, 7, 9, 5]])
    with pytest.raises(ValueError, match="has 3 <vid_patch> tokens but its video has 4 feature tokens"):
        model.decoder_inputs(ids, torch.zeros(1, 4, cfg.mm_hidden_size))
    with pytest.raises(ValueError, match="feature width 16 != config.mm_hidden_size 32"):
        model.decoder_inputs(ids, torch.zeros(1, 3, 16))
    feats = torch.randn(1, 3, cfg.mm_hidden_size)
    embeds = model.decoder_inputs(ids, feats)
    assert torch.allclose(embeds[0, 2:5], model.model.mm_projector(feats)[0])
    assert torch.equal(embeds[0, [0, 1, 5, 6]], model.get_input_embeddings()(ids)[0, [0, 1, 5, 6]])


def test_loss_on_supervised_positions_equals_full_vocabulary_loss(tiny_llava):
    from video_chatgpt.bases import read_config
    from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM, video_config

    torch.manual_seed(0)
    model = VideoChatGPTForCausalLM(video_config(read_config(tiny_llava))).eval()
    ids = torch.randint(3, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :7] = -100
    ours = model(input_ids=ids, labels=labels).loss
    logits = model(input_ids=ids).logits
    full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    assert torch.allclose(ours, full, atol=1e-5)
