"""plan-memory: the plan's parts against hand computation and against what autograd really keeps; the largest
batch; the command; and (slow / gpu) the plan against measured peaks of real steps (bench/memory.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from video_chatgpt.errors import UserError
from video_chatgpt.train import memory
from video_chatgpt.train.memory import GIB, ModelShape, StepSettings, max_batch_size, plan_step

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

TINY = ModelShape(hidden=8, layers=2, heads=2, kv_heads=2, head_dim=4, intermediate=16, vocab=100, mm_hidden=4)
LLAMA_7B = {  # LLaVA-7B-Lightening-v1-1's config.json, written from the known LLaMA-7B shapes
    "model_type": "llava",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32003,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "mm_vision_tower": "openai/clip-vit-large-patch14",
    "mm_hidden_size": 1024,
    "mm_use_im_start_end": True,
    "use_mm_proj": True,
}


def part(plan, prefix: str) -> float:
    found = [p.bytes for p in plan.parts if p.name.startswith(prefix)]
    assert len(found) == 1, (prefix, [p.name for p in plan.parts])
    return found[0]


def test_plan_parts_equal_hand_computation():
    s = StepSettings(
        batch=2, tokens=10, supervised=3, video_tokens=5, compute="bf16", train="projector", token_rows=2, device="cpu"
    )
    plan = plan_step(TINY, s)
    # LLM: 2 layers x (4 attention 8x8 + 3 MLP 8x16) + 2 tables 100x8 + 5 norms of 8, in bf16
    llm = 2 * (4 * 64 + 3 * 128) + 2 * 800 + 5 * 8
    assert part(plan, "weights bf16") == 2 * llm
    trainable = 4 * 8 + 8 + 2 * 8  # projector weight + bias, two token rows
    assert plan.trainable_params == trainable
    assert part(plan, "trainable weights") == 4 * trainable
    assert part(plan, "AdamW") == 8 * trainable
    assert part(plan, "gradients") == 4 * trainable
    # per layer and token: 2 fp32 norm inputs (2*4*8), q/k/v/out bf16 (2*4*8), logsumexp (4*2 heads),
    # sdpa mask row (2*10 tokens), SwiGLU 3 x bf16 x 16
    layer = 2 * 4 * 8 + 2 * 4 * 8 + 4 * 2 + 2 * 10 + 3 * 2 * 16
    tokens = 2 * 10
    assert part(plan, "activations") == tokens * (2 * layer + 4 * 8)  # + the final norm's fp32 input
    assert part(plan, "loss") == 3 * 4 * (2 * 3) * 100  # M x V fp32, three of them
    assert part(plan, "backward working set") == tokens * 2 * (2 * 16 + 3 * 8)
    assert part(plan, "batch") == 3 * 8 * tokens + 6 * 4 * (2 * 5)
    # the optimizer step: weight + gradient + moments, 16 bytes each (CPU AdamW: a temporary of the largest trainable tensor, the 4x8 projector weight)
    assert plan.step_peak_bytes == 2 * llm + 16 * trainable + 4 * 32 + part(plan, "batch")
    assert plan.allocated_bytes == max(plan.backward_peak_bytes, plan.step_peak_bytes)
    assert plan.overhead == [] and plan.total_bytes == plan.allocated_bytes

    on = plan_step(TINY, replace(s, gradient_checkpointing=True))
    assert part(on, "activations") == tokens * (2 * 2 * 8 + 4 * 8)  # each layer's bf16 input + the final norm
    assert part(on, "backward working set") == tokens * (layer + 2 * 8)
    assert on.activation_bytes_no_checkpointing == part(plan, "activations")


def test_lora_and_bits_parts_equal_hand_computation():
    s = StepSettings(
        batch=1,
        tokens=4,
        supervised=2,
        video_tokens=2,
        compute="bf16",
        train="lora",
        token_rows=0,
        lora_r=2,
        lora_targets=("q_proj", "down_proj"),
        lora_dropout=0.0,
        bits=4,
        double_quant=False,
    )
    plan = plan_step(TINY, s)
    # LoRA: q (8 -> 8) and down (16 -> 8) in 2 layers, r=2: r*(in+out)
    lora = 2 * (2 * (8 + 8) + 2 * (16 + 8))
    assert plan.trainable_params == 4 * 8 + 8 + lora
    linear = 2 * (4 * 64 + 3 * 128)
    assert part(plan, "weights nf4") == linear * (0.5 + 4 / 64)
    assert part(plan, "weights bf16") == 2 * (2 * 800 + 5 * 8)
    # bf16 compute with fp32 adapters: one copy of the input per adapter (q: 8 wide, down: 16) + the r-wide A outputs
    lora_inputs = 2 * 8 + 2 * 16 + 2 * 2 * 2
    base_layer = memory.layer_activation_bytes(TINY, replace(s, train="projector", bits=16))
    assert memory.layer_activation_bytes(TINY, s) == base_layer + lora_inputs
    # CUDA: AdamW foreach temporary of all trainables; the allocator reserve and the context on top
    assert plan.step_peak_bytes == sum(
        p.bytes for p in plan.parts[:2]
    ) + 16 * plan.trainable_params + 4 * plan.trainable_params + part(plan, "batch")
    assert [p.bytes for p in plan.overhead] == [
        memory.ALLOCATOR_RESERVE * plan.allocated_bytes,
        memory.CUDA_CONTEXT_GIB * GIB,
    ]
    with pytest.raises(ValueError, match="--lora_enable"):
        StepSettings(train="projector", bits=4)
    with pytest.raises(ValueError, match="not linear layers"):
        StepSettings(train="lora", lora_targets=("lm_head",))


def test_llama_7b_numbers():
    shape = ModelShape.from_config(LLAMA_7B)
    # LLaMA-7B (6,738,415,616 with 32000 rows) + 3 x 2 rows of 4096 for LLaVA's image tokens
    assert shape.llm_params() == 6_738_415_616 + 3 * 2 * 4096
    s = StepSettings(batch=4, tokens=484, supervised=48, video_tokens=356, compute="bf16", train="projector")
    plan = plan_step(shape, s)
    assert plan.trainable_params == 1024 * 4096 + 4096 + 2 * 4096  # the README's 4,198,400 + the two rows
    assert 12.5 < part(plan, "weights bf16") / GIB < 12.6
    assert plan.activation_bytes_checkpointing < plan.activation_bytes_no_checkpointing / 10


def test_max_batch_size_is_the_largest_that_fits():
    shape = ModelShape.from_config(LLAMA_7B)
    for s in (
        StepSettings(train="projector", gradient_checkpointing=True),
        StepSettings(train="lora", lora_r=128, gradient_checkpointing=False),
        StepSettings(train="lora", bits=4, gradient_checkpointing=True),
    ):
        best = max_batch_size(shape, s, 24.0)
        brute = max(b for b in range(0, 200) if b == 0 or plan_step(shape, replace(s, batch=b)).total_gib <= 24.0)
        assert best == brute
        assert plan_step(shape, replace(s, batch=best + 1)).total_gib > 24.0
    assert max_batch_size(shape, StepSettings(train="full", compute="bf16"), 24.0) == 0  # 7B full FT: never


def saved_activation_bytes(model, batch) -> tuple[int, int]:
    """(bytes autograd keeps for backward that are not parameters or buffers, of which the loss's M x V)."""
    from common import loss_ours

    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}
    logits = [0]

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            storages[storage.data_ptr()] = storage.nbytes()
            if t.dim() == 2 and t.shape[-1] == model.config.vocab_size:
                logits[0] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_ours(model, batch)
    return sum(storages.values()), logits[0]


@pytest.mark.parametrize(
    "train,checkpointing,dropout",
    [
        ("projector", False, 0.0),
        ("projector", True, 0.0),
        ("lora", False, 0.0),
        ("lora", False, 0.05),
        ("lora", True, 0.05),
        ("full", False, 0.0),
    ],
)
def test_activations_match_what_autograd_keeps(train, checkpointing, dropout):
    """The plan's activation part against the tensors autograd really saves in a real forward (fp32, CPU)."""
    import common

    from video_chatgpt.train.lora import LoraSettings, add_lora

    sizes = dict(hidden_size=96, num_hidden_layers=2, intermediate_size=256, num_attention_heads=4)
    common.LLAMA_SIZES["memory-test"] = sizes
    shapes = replace(common.Shapes(), batch=2, num_frames=12, num_patches=64, mm_hidden=32)
    batch = common.make_batch(shapes)
    model = common.build_model(common.model_config("memory-test", shapes), "cpu", torch.float32)
    if train == "full":
        model.requires_grad_(True)
    else:
        common.setup_ours(model)
    if train == "lora":
        add_lora(model, LoraSettings(r=8, alpha=16, dropout=dropout))
    common.set_checkpointing(model, checkpointing)
    saved, logits = saved_activation_bytes(model, batch)

    shape = ModelShape(
        hidden=96, layers=2, heads=4, kv_heads=4, head_dim=24, intermediate=256, vocab=common.VOCAB, mm_hidden=32
    )
    s = StepSettings(
        batch=2,
        tokens=batch.input_ids.shape[1],
        supervised=batch.supervised / 2,
        video_tokens=shapes.video_tokens,
        compute="fp32",
        gradient_checkpointing=checkpointing,
        train=train,
        lora_r=8,
        lora_dropout=dropout,
        device="cpu",
    )
    planned = memory.activation_bytes(ModelShape(**{**shape.__dict__}), s, checkpointing)
    assert logits == 4 * batch.supervised * common.VOCAB  # log-softmax output at the supervised positions only
    kept = saved - logits
    assert abs(planned - kept) / kept < 0.10, (planned, kept)


def write_config(folder: Path, raw: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_plan_memory_command(tmp_path, capsys):
    from video_chatgpt.cli import main

    folder = write_config(tmp_path / "LLaVA-7B", LLAMA_7B)
    common = [
        "plan-memory",
        "--model_name_or_path",
        str(folder),
        "--video_tokens",
        "356",
        "--bf16",
        "True",
        "--mm_use_vid_start_end",
        "--gradient_checkpointing",
        "True",
        "--per_device_train_batch_size",
        "4",
    ]
    assert main(common + ["--tune_mm_mlp_adapter", "True"]) == 0
    out = capsys.readouterr().out
    assert "weights bf16 (frozen LLM, 6,738,464,768 params)" in out  # 32006 rows after the three video tokens
    assert "= planned peak of the device" in out and "largest --per_device_train_batch_size that fits" in out
    assert main(common + ["--lora_enable", "True", "--bits", "4", "--lora_target_modules", "q_proj,v_proj"]) == 0
    out = capsys.readouterr().out
    assert "nf4" in out and "q_proj,v_proj" in out and "4-bit base" in out

    assert main(["plan-memory", "--model_name_or_path", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such model folder" in capsys.readouterr().err
    assert main(["plan-memory", "--model_name_or_path", str(folder)]) == 1  # tower unknown offline
    assert "--video_tokens" in capsys.readouterr().err
    assert main(["plan-memory", "--model_name_or_path", str(folder), "--video_tokens", "356", "--bits", "4"]) == 1
    assert "--lora_enable" in capsys.readouterr().err
    assert main(["plan-memory", "--no_such_flag"]) == 2


def test_plan_memory_plans_the_mode_training_runs(tmp_path):
    """plan-memory reads the training mode as train.py does (--stage pretrain: the projector alone)."""
    from video_chatgpt.train.arguments import parse_arguments, training_mode

    folder = write_config(tmp_path / "LLaVA-7B", LLAMA_7B)
    common = ["--model_name_or_path", str(folder), "--data_path", "d", "--video_folder", "v", "--output_dir", "o"]
    for flags, mode in [
        ([], "full"),
        (["--tune_mm_mlp_adapter", "True"], "projector"),
        (["--stage", "pretrain"], "projector"),
        (["--lora_enable", "True"], "lora"),
    ]:
        _, settings, _ = memory.settings_from_flags([*common, "--video_tokens", "356", *flags])
        model_args, _, args = parse_arguments(common + flags)
        assert settings.train == training_mode(model_args, args) == mode, flags


def test_plan_memory_plans_the_lora_targets_training_uses(tmp_path):
    """--lora_target_modules read as training reads it (LoraSettings): no name given (",") means every linear."""
    folder = write_config(tmp_path / "LLaVA-7B", LLAMA_7B)
    common = ["--model_name_or_path", str(folder), "--video_tokens", "356", "--lora_enable", "True"]
    for given, planned in [(",", memory.LLM_LINEARS), (" q_proj, ,v_proj ", ("q_proj", "v_proj"))]:
        _, settings, _ = memory.settings_from_flags([*common, "--lora_target_modules", given])
        assert settings.lora_targets == planned


def test_from_config_reads_other_layouts():
    nested = {
        "text_config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 500,
        },
        "vision_config": {"hidden_size": 32},
    }
    shape = ModelShape.from_config(nested)
    assert (shape.kv_heads, shape.mm_hidden, shape.projector_type) == (2, 32, "mlp2x_gelu")
    assert shape.projector_params() == 32 * 64 + 64 + 64 * 64 + 64
    with pytest.raises(UserError, match="hidden_size"):
        ModelShape.from_config({"model_type": "bert"})


@pytest.mark.slow
def test_plan_within_bound_of_measured_cpu_peaks():
    """Real steps on CPU, one child process per configuration: |plan - measured RSS growth| < 20% for each."""
    import memory as bench_memory  # bench/memory.py

    rows = bench_memory.measure(["h64", "h128"], ["projector", "projector-gc", "lora"], batch=4, device="cpu")
    bad = [r for r in rows if abs(r["error_pct"]) >= 20]
    assert not bad, bench_memory.render(rows)


@pytest.mark.gpu
def test_plan_within_bound_of_cuda_max_memory_allocated():
    import memory as bench_memory

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    rows = bench_memory.measure(["h256", "h512"], ["projector", "projector-gc", "lora-gc"], batch=4, device="cuda")
    bad = [r for r in rows if abs(r["error_pct"]) >= 20]
    assert not bad, bench_memory.render(rows)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--lora_enable", "True", "--lora_r", "-64"], "--lora_r -64"),
        (["--lora_enable", "True", "--lora_dropout", "1.5"], "--lora_dropout 1.5"),
        (["--gpu_memory", "nan"], "--gpu_memory nan"),
        (["--gpu_memory", "-24"], "--gpu_memory -24"),
        (["--gpu_memory", "inf"], "--gpu_memory inf"),
        (["--tokens_per_sample", "0"], "--tokens_per_sample 0"),
        (["--video_tokens", "-5"], "--video_tokens -5"),
        (["--supervised_tokens", "-1"], "--supervised_tokens -1"),
        (["--tokens_per_sample", "100"], "video tokens 356"),  # the video alone is longer than the sample
        # what train refuses (train.arguments.check_model_flags), plan-memory refuses (it planned them as linear)
        (["--mm_projector_type", "mlp3x"], "--mm_projector_type 'mlp3x'"),
        (["--stage", "stage2"], "--stage 'stage2'"),
    ],
)
def test_plan_memory_refuses_values_that_plan_nonsense(tmp_path, capsys, extra, words):
    """Values of the wrong sign or not finite are one line naming the flag (before: negative GiB rows, a plan for
    --gpu_memory nan), as training validates them."""
    from video_chatgpt.cli import main

    folder = write_config(tmp_path / "LLaVA-7B", LLAMA_7B)
    argv = ["plan-memory", "--model_name_or_path", str(folder), "--video_tokens", "356", "--bf16", "True"]
    if "--video_tokens" in extra:
        argv = argv[:3] + argv[5:]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 2, err
