"""LoRA (issue 14): adapters on every linear layer of the LLM, never lm_head or the projector; training moves the
adapters and the projector and leaves every base weight bit-identical (with gradient checkpointing too); the
documented script saves peft's files; a run killed mid-run (and one whose last checkpoint was cut short) resumes to
the uninterrupted run's adapter; merging equals the unmerged model; --bits without CUDA is one line."""

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
from tests.helpers.train import LORA_FLAGS, tiny_video_model, train_paths
from video_chatgpt.errors import UserError
from video_chatgpt.model.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, load_adapter, merge_adapter
from video_chatgpt.train.lora import LoraSettings, add_lora, linear_names

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def video_batch(model, n=8, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (2, length), generator=g)
    ids[:, 3 : 3 + n] = model.config.video_patch_token_id
    labels = ids.clone()
    labels[:, : 3 + n] = -100
    feats = torch.randn(2, n, model.config.mm_hidden_size, generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, video_spatio_temporal_features=feats)


def test_targets_are_the_llm_linears_only(tiny_llava):
    model = tiny_video_model(tiny_llava)
    assert linear_names(model) == TARGETS  # not lm_head, not mm_projector
    add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert len(wrapped) == model.config.num_hidden_layers * len(TARGETS)
    assert not any("mm_projector" in n or "lm_head" in n for n in wrapped)
    with pytest.raises(UserError, match="lm_head: not linear layers"):
        add_lora(tiny_video_model(tiny_llava), LoraSettings(targets=("lm_head",)))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_adapters_and_projector_base_bit_identical(tiny_llava, checkpointing):
    model = tiny_video_model(tiny_llava)
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.05, targets=None))
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or "mm_projector" in n for n in trainable)
    assert any("base_layer" in n for n in frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        model(**video_batch(model, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    params = dict(model.named_parameters())
    changed = [n for n, before in trainable.items() if not torch.equal(params[n], before)]
    assert set(changed) == set(trainable)  # every adapter matrix (B started at zero) and the projector moved


def test_merged_equals_unmerged_and_adapter_round_trips(tiny_llava, tmp_path):
    from video_chatgpt.train.lora import save_adapter

    model = tiny_video_model(tiny_llava)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # a non-zero adapter, as after training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    batch = video_batch(model)
    save_adapter(model, tmp_path)
    assert (tmp_path / ADAPTER_WEIGHTS_FILE).is_file() and (tmp_path / ADAPTER_CONFIG_FILE).is_file()
    keys = load_file(str(tmp_path / ADAPTER_WEIGHTS_FILE))
    assert all(k.startswith("base_model.model.model.layers.") for k in keys)  # peft's names
    with torch.no_grad():
        unmerged = model(
            input_ids=batch["input_ids"], video_spatio_temporal_features=batch["video_spatio_temporal_features"]
        ).logits
        reloaded = tiny_video_model(tiny_llava)
        reloaded.load_state_dict(model.state_dict(), strict=False)  # same projector; adapter from the files
        load_adapter(reloaded, tmp_path)
        reloaded.eval()
        again = reloaded(
            input_ids=batch["input_ids"], video_spatio_temporal_features=batch["video_spatio_temporal_features"]
        ).logits
        merge_adapter(model)
        assert not any(".lora_" in n for n, _ in model.named_parameters())
        merged = model(
            input_ids=batch["input_ids"], video_spatio_temporal_features=batch["video_spatio_temporal_features"]
        ).logits
    assert torch.allclose(again, unmerged, atol=1e-5)
    assert torch.allclose(merged, unmerged, atol=1e-4), (merged - unmerged).abs().max()
    assert not torch.allclose(
        merged,
        tiny_video_model(tiny_llava)
        .eval()(input_ids=batch["input_ids"], video_spatio_temporal_features=batch["video_spatio_temporal_features"])
        .logits,
        atol=1e-3,
    )  # the adapter does change the answer


def run_train(data, model, out, *extra, timeout=600):
    cmd = [sys.executable, "video_chatgpt/train/train_mem.py", *train_paths(data, model, out), *LORA_FLAGS, *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


STEPS = ["--max_steps", "8", "--save_steps", "2", "--gradient_checkpointing", "True"]


@pytest.fixture(scope="module")
def lora_run(data, tiny_llava, tmp_path_factory):
    """The documented script with --lora_enable, 8 steps, gradient checkpointing, uninterrupted."""
    ref = tmp_path_factory.mktemp("lora") / "uninterrupted"
    run = run_train(data, tiny_llava, ref, *STEPS, "--save_strategy", "no")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "lora_A" in run.stdout  # the trainable summary names the adapters
    return ref


def test_documented_script_saves_adapter_and_resumes_after_kill(data, tiny_llava, lora_run, tmp_path):
    """Uninterrupted run vs a run SIGKILLed mid-run whose newest checkpoint is then cut short (as a kill while
    saving leaves it): the resumed run skips that checkpoint and ends with the same adapter and projector."""
    steps, ref = STEPS, lora_run
    for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, "mm_projector.bin", "trainable.safetensors"):
        assert (ref / name).is_file(), name
    adapter = load_file(str(ref / ADAPTER_WEIGHTS_FILE))
    assert len(adapter) == 2 * 2 * len(TARGETS)  # A and B for 7 linears in each of the 2 layers
    assert json.loads((ref / ADAPTER_CONFIG_FILE).read_text())["r"] == 4
    info = json.loads((ref / "run_info.json").read_text())
    assert any(".lora_A." in p["name"] for p in info["trainable_parameters"])
    report = (ref / "training_report.md").read_text()
    lora_row = next(line for line in report.splitlines() if line.startswith("| LoRA adapters"))
    assert "in 28 tensors on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj (r 4, alpha 8" in lora_row

    out = tmp_path / "killed"
    cmd = [sys.executable, "video_chatgpt/train/train_mem.py", *train_paths(data, tiny_llava, out), *LORA_FLAGS, *steps]
    with open(tmp_path / "first.log", "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and proc.poll() is None
            and not (out / "checkpoint-6" / "trainer_state.json").is_file()
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "checkpoint-6" / "trainer_state.json").is_file(), (tmp_path / "first.log").read_text()[-3000:]
    assert (out / "checkpoint-6" / ADAPTER_WEIGHTS_FILE).is_file()
    assert not (out / ADAPTER_WEIGHTS_FILE).exists()
    (out / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # cut short while being written
    resumed = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-6 cannot be resumed from" in resumed.stderr and "resuming from" in resumed.stderr
    got = load_file(str(out / ADAPTER_WEIGHTS_FILE))
    assert set(got) == set(adapter)
    for key, value in adapter.items():
        assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-6), (key, (got[key] - value).abs().max())
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # the adapter trained
    a = torch.load(ref / "mm_projector.bin", weights_only=True)
    b = torch.load(out / "mm_projector.bin", weights_only=True)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key


def test_bits_without_cuda_is_one_line(data, tiny_llava, tmp_path):
    assert not torch.cuda.is_available()
    run = run_train(data, tiny_llava, tmp_path / "q", "--bits", "4", "--max_steps", "1")
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("train_mem.py: error:")]
    assert len(errors) == 1 and errors[0].startswith("train_mem.py: error: --bits 4 (QLoRA)"), run.stderr[-2000:]
    assert "CUDA" in errors[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "q" / "run_info.json").exists()  # stopped before the model was loaded
    from types import SimpleNamespace

    from video_chatgpt.train.lora import check_flags

    flags = dict(bits=8, lora_enable=False, quant_type="nf4", lora_bias="none", lora_r=4, lora_dropout=0.0)
    with pytest.raises(UserError, match="--bits 8 quantises the base, which then cannot train"):
        check_flags(SimpleNamespace(**flags))
    with pytest.raises(UserError, match="--quant_type 'int3'"):
        check_flags(SimpleNamespace(**{**flags, "lora_enable": True, "quant_type": "int3"}))


def test_merge_lora_folder_answers_as_the_run(data, tiny_llava, lora_run, tmp_path):
    """merge-lora's folder (no adapter, no base needed) and the LoRA run folder itself (base + adapter + projector)
    and ``--lora_path`` on the base answer identically at temperature 0."""
    from video_chatgpt.cli import main
    from video_chatgpt.features.store import load_features
    from video_chatgpt.inference.engine import load_engine

    merged = tmp_path / "merged"
    assert main(["merge-lora", str(lora_run), str(merged), "--dtype", "fp32", "--max_shard_size", "2MB"]) == 0
    assert len(list(merged.glob("model-*.safetensors"))) > 1 and (merged / "model.safetensors.index.json").is_file()
    assert not (merged / ADAPTER_WEIGHTS_FILE).exists() and (merged / "mm_projector.bin").is_file()
    assert main(["merge-lora", str(lora_run), str(merged)]) == 1  # exists: refused
    (merged / "stale.txt").write_text("from the first merge")
    argv = ["merge-lora", str(lora_run), str(merged), "--dtype", "fp32", "--max_shard_size", "2MB", "--overwrite"]
    assert main(argv) == 0  # replaced whole, by rename: no old file, no hidden folder left beside it
    assert not (merged / "stale.txt").exists() and (merged / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert main(["merge-lora", str(tiny_llava), str(tmp_path / "x")]) == 1  # not a LoRA run

    engines = {
        "run": load_engine(lora_run, device="cpu", dtype=torch.float32),
        "merged": load_engine(merged, device="cpu", dtype=torch.float32),
        "lora_path": load_engine(
            tiny_llava, lora_run / "mm_projector.bin", device="cpu", dtype=torch.float32, lora_path=lora_run
        ),
    }
    assert not any(".lora_" in n for n, _ in engines["merged"].model.named_parameters())
    no_adapter = load_engine(tiny_llava, lora_run / "mm_projector.bin", device="cpu", dtype=torch.float32)
    files = sorted(data["video_folder"].glob("*.pkl"))[:3]
    question = "What colour is the moving object in the video?"
    for path in files:
        feats = load_features(path)
        answers = {k: e.answer(question, feats, temperature=0, max_new_tokens=12) for k, e in engines.items()}
        assert len(set(answers.values())) == 1, answers
        scores = {
            k: e.score_answers(question, feats, ["The object is red.", "The object is blue."])
            for k, e in engines.items()
        }
        for k in ("merged", "lora_path"):
            assert torch.allclose(torch.tensor(scores[k]), torch.tensor(scores["run"]), atol=1e-4), scores
        without = no_adapter.score_answers(question, feats, ["The object is red.", "The object is blue."])
        assert not torch.allclose(torch.tensor(without), torch.tensor(scores["run"]), atol=1e-4)  # it trained


@pytest.mark.slow
def test_lora_under_torchrun_two_processes(data, tiny_llava, tmp_path):
    """torchrun x2 (DDP on CPU): both ranks end with the same adapter, equal to one process with the same global
    batch (dropout 0, so both runs draw the same computation)."""
    flags = [*LORA_FLAGS, "--lora_dropout", "0", "--max_steps", "3", "--save_strategy", "no"]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "video_chatgpt/train/train_mem.py",
        *train_paths(data, tiny_llava, out),
        *flags,
    ]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    checksums = info["runs"][-1]["replica_checksums"]
    assert info["world_size"] == 2 and len(checksums) == 2 and checksums[0] == checksums[1], checksums
    single = tmp_path / "single"
    one = run_train(data, tiny_llava, single, *flags, "--per_device_train_batch_size", "4")
    assert one.returncode == 0, one.stderr[-3000:]
    ddp, ref = load_file(str(out / ADAPTER_WEIGHTS_FILE)), load_file(str(single / ADAPTER_WEIGHTS_FILE))
    assert set(ddp) == set(ref) and any(float(v.abs().max()) > 0 for k, v in ref.items() if "lora_B" in k)
    for key in ref:
        assert torch.allclose(ddp[key], ref[key], rtol=1e-4, atol=1e-6), (key, (ddp[key] - ref[key]).abs().max())


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_lora_on_other_bases_wraps_the_language_model(family, tmp_path):
    """Any causal LM base (VideoLanguageModel): the adapter sits on ``language_model`` (its own names, as peft's
    PeftModel would name them), the projector in ``model`` trains beside it, the base stays bit-identical."""
    from video_chatgpt.bases import open_base
    from video_chatgpt.data.tokenizer import VideoTokenIds
    from video_chatgpt.model.loading import load_model
    from video_chatgpt.sample.models import make_tiny_chat_lm
    from video_chatgpt.train.lora import adapter_state_dict

    base = open_base(make_tiny_chat_lm(tmp_path / family, family))
    assert base.kind == "causal_lm"
    model = load_model(
        base, VideoTokenIds(5, None, None), 0, dtype=torch.float32, mm_hidden_size=16, video_token_len=8,
        mm_use_vid_start_end=False,
    )  # fmt: skip
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(
        n.startswith("language_model.model.layers.") and ".lora_" in n or n.startswith("model.mm_projector.")
        for n in names
    ), names
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if ".lora_" in n} == set(TARGETS)
    assert all(k.startswith("base_model.model.model.layers.") for k in adapter_state_dict(model))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(2):
        model(**video_batch(model, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    assert any(float(params[n].abs().max()) > 0 for n in names if "lora_B" in n)


def test_chat_lora_path_adds_the_adapter_to_a_base(data, tiny_llava, lora_run, capsys):
    """``chat --lora_path`` on the base answers as ``chat --model-name <the LoRA run>``; a folder without an
    adapter is one line."""
    from video_chatgpt.cli import main

    feats = str(sorted(data["video_folder"].glob("*.pkl"))[0])
    common = [
        "--features_path",
        feats,
        "--question",
        "What colour is the moving object in the video?",
        "--temperature",
        "0",
        "--max_new_tokens",
        "12",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    assert main(["chat", "--model-name", str(lora_run), *common]) == 0
    from_run = capsys.readouterr().out
    assert (
        main(
            [
                "chat",
                "--model-name",
                str(tiny_llava),
                "--projection_path",
                str(lora_run / "mm_projector.bin"),
                "--lora_path",
                str(lora_run),
                *common,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == from_run and from_run.strip()
    assert main(["chat", "--model-name", str(tiny_llava), "--lora_path", str(tiny_llava), *common]) == 1
    assert "--lora_path" in capsys.readouterr().err


LAYERS_WITHOUT_TRAIN = ("model", "inference", "eval")  # STYLE.md: inference and eval never import train


def test_inference_and_model_never_import_the_training_package(lora_run):
    """Loading and merging an adapter lives in ``model/lora.py``: no module of model/, inference/ or eval/ names
    ``video_chatgpt.train`` (at top level or inside a function), and a fresh process that loads a LoRA run folder,
    answers with it and merges it has imported nothing of the training package."""
    import ast

    offenders = []
    for layer in LAYERS_WITHOUT_TRAIN:
        for path in sorted((REPO / "video_chatgpt" / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [
                    f"{path.relative_to(REPO)}:{node.lineno} {n}"
                    for n in names
                    if n == "video_chatgpt.train" or n.startswith("video_chatgpt.train.")
                ]
    assert not offenders, offenders
    code = (
        "import sys, numpy as np, torch\n"
        "from video_chatgpt.inference.engine import load_engine\n"
        "from video_chatgpt.model.lora import has_lora, merge_adapter\n"
        f"engine = load_engine({str(lora_run)!r}, device='cpu', dtype=torch.float32)\n"
        "assert has_lora(engine.model)\n"
        "rows, width = engine.model.config.video_token_len, engine.model.config.mm_hidden_size\n"
        "engine.answer('What is shown?', np.zeros((rows, width), np.float16), temperature=0, max_new_tokens=2)\n"
        "merge_adapter(engine.model)\n"
        "assert not has_lora(engine.model)\n"
        "print(sorted(m for m in sys.modules if m.startswith('video_chatgpt.train')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
