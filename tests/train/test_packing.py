"""--packing and --group_by_length (issue 24, training part): a packed row (the samples of a batch concatenated,
positions restarting per sample, no attention mask) gives the padded batch's loss and gradients within fp32
tolerance, for the document's base and a chat base, with LoRA too; a sample's first token is never predicted from
the sample before; the model fills several video spans of one row; training with --packing logs the same losses
as without, resumes as without, and its report shows the padding it removed; --group_by_length groups batches
of similar length, shuffled with the seed, and changes the padding as the benchmark says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import ENV, REPO
from tests.helpers.train import tiny_video_model, train_paths
from video_chatgpt.bases import open_base
from video_chatgpt.constants import IGNORE_INDEX
from video_chatgpt.data.dataset import PackedVideoDataCollator, VideoDataCollator, sample_lengths
from video_chatgpt.data.tokenizer import VideoTokenIds
from video_chatgpt.model.loading import load_model
from video_chatgpt.train.lora import LoraSettings, add_lora
from video_chatgpt.train.sampling import LengthGroupedSampler, grouped_indices, padding_fraction

SPAN = 8  # video tokens per sample in the model tests
WIDTH = 16  # feature width of the chat base's projector


def chat_video_model(folder):
    """A tiny Qwen2 causal LM with a fresh linear projector over ``WIDTH``-wide features, patch token id 5."""
    return load_model(
        open_base(folder), VideoTokenIds(5, None, None), 0, dtype=torch.float32, mm_hidden_size=WIDTH,
        video_token_len=SPAN, mm_use_vid_start_end=False,
    )  # fmt: skip


def samples(model, lengths=(23, 40, 17, 31), seed=0) -> list[dict[str, torch.Tensor]]:
    """Dataset items of ``lengths``: a video span at position 2, every other token supervised (the first one too,
    so that a shift across a sample boundary would change the loss)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for n in lengths:
        ids = torch.randint(10, 200, (n,), generator=g)
        ids[2 : 2 + SPAN] = model.config.video_patch_token_id
        labels = ids.clone()
        labels[2 : 2 + SPAN] = IGNORE_INDEX
        feats = torch.randn(SPAN, model.config.mm_hidden_size, generator=g)
        items.append({"input_ids": ids, "labels": labels, "video_spatio_temporal_features": feats})
    return items


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_same(model, items):
    padded = VideoDataCollator(pad_id=0)(items)
    packed = PackedVideoDataCollator()(items)
    assert packed["input_ids"].shape == (1, sum(len(x["input_ids"]) for x in items))
    assert padded["input_ids"].numel() > packed["input_ids"].numel()  # there was padding to remove
    loss_padded, grads_padded = loss_and_grads(model, padded)
    loss_packed, grads_packed = loss_and_grads(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    assert grads_padded.keys() == grads_packed.keys() and grads_padded
    for name in grads_padded:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-6, msg=name)
    return loss_padded


@pytest.fixture(scope="module")
def models(tiny_llava, chat_bases):
    return {"llava_v1": lambda: tiny_video_model(tiny_llava), "qwen2": lambda: chat_video_model(chat_bases["qwen2"])}


@pytest.mark.parametrize("base", ["llava_v1", "qwen2"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_packed_loss_and_gradients_equal_the_padded_batch(models, base, lora):
    torch.manual_seed(0)
    model = models[base]()
    if lora:
        add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
        for name, p in model.named_parameters():  # B starts at 0: give it values so A's gradient is not 0 too
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    assert_same(model, samples(model))


def test_the_shift_never_crosses_a_sample_boundary(tiny_llava):
    """Each sample's first label is ignored in the packed row; without it (and with positions running on, or an
    all-ones attention mask) the packed loss would differ from the padded one: each one is checked to matter."""
    model = tiny_video_model(tiny_llava)
    with torch.no_grad():  # confident predictions: each token's loss differs (random weights give ~log V for all)
        model.lm_head.weight.mul_(50)
    items = samples(model)
    packed = PackedVideoDataCollator()(items)
    starts = torch.tensor([0, 23, 63, 80])
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    assert packed["position_ids"][0, starts].tolist() == [0, 0, 0, 0]
    with torch.no_grad():
        reference = model(**VideoDataCollator(pad_id=0)(items)).loss
        torch.testing.assert_close(model(**packed).loss, reference, rtol=1e-5, atol=1e-6)
        crossing = {**packed, "labels": torch.cat([x["labels"] for x in items]).unsqueeze(0)}
        running = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)}
        masked = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
        for broken in (crossing, running, masked):
            assert abs(float(model(**broken).loss) - float(reference)) > 1e-4 * float(reference)  # 10x the tolerance


def test_a_packed_row_gets_each_video_in_its_own_span(tiny_llava):
    model = tiny_video_model(tiny_llava)
    items = samples(model, lengths=(15, 12, 20))
    packed = PackedVideoDataCollator()(items)
    with torch.no_grad():
        embeds = model.decoder_inputs(packed["input_ids"], packed["video_spatio_temporal_features"])[0]
        projected = model.model.mm_projector(packed["video_spatio_temporal_features"])
    for k, begin in enumerate((0, 15, 27)):
        torch.testing.assert_close(embeds[begin + 2 : begin + 2 + SPAN], projected[k])
    with pytest.raises(ValueError, match="3 <vid_patch> spans but 2 videos"):
        model.decoder_inputs(packed["input_ids"], packed["video_spatio_temporal_features"][:2])
    short = packed["input_ids"].clone()
    short[0, 15 + 3] = 7  # sample 1's span cut in two
    with pytest.raises(ValueError, match="4 <vid_patch> spans but 3 videos"):
        model.decoder_inputs(short, packed["video_spatio_temporal_features"])


def test_flash_attention_boundaries_and_lengths():
    items = [{"input_ids": torch.arange(n), "labels": torch.arange(n)} for n in (3, 5, 2)]
    packed = PackedVideoDataCollator(flash_attn_kwargs=True)(items)
    assert packed["cu_seq_lens_q"].tolist() == [0, 3, 8, 10] and packed["max_length_k"] == 5
    assert packed["cu_seq_lens_q"].dtype == torch.int32
    assert sample_lengths(packed) == [3, 5, 2] == sample_lengths(VideoDataCollator(pad_id=0)(items))


# ------------------------------------------------------------------------------------------- group_by_length
def test_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    lengths = [int(x) for x in torch.randint(380, 760, (400,), generator=torch.Generator().manual_seed(0))]
    order = grouped_indices(lengths, batch_size=4, world_size=2, seed=7)
    assert sorted(order) == list(range(400))
    assert order == grouped_indices(lengths, 4, 2, seed=7) != grouped_indices(lengths, 4, 2, seed=8)
    assert max(lengths[i] for i in order[:8]) == max(lengths)  # the longest step first
    random = padding_fraction(lengths, torch.randperm(400).tolist(), 4)
    assert padding_fraction(lengths, order, 4) < random / 5
    sampler = LengthGroupedSampler(lengths, 4, 2, seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    assert first == order and list(sampler) != first and sorted(sampler) == list(range(400))


# ------------------------------------------------------------------------------------------------- training
PACK_FLAGS = [
    "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "--per_device_train_batch_size", "4",
    "--learning_rate", "1e-2", "--logging_steps", "1", "--report_to", "none", "--skip_data_check", "True",
    "--max_steps", "4", "--save_steps", "2", "--seed", "3",
]  # fmt: skip


def logged(out) -> list[dict]:
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def runs(data, tiny_llava, tmp_path_factory):
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("packing")
    return {
        name: train(train_paths(data, tiny_llava, root / name) + PACK_FLAGS + extra)
        for name, extra in (("padded", []), ("packed", ["--packing", "True"]))
    }


def test_training_with_packing_logs_the_same_losses_and_saves_the_same_projector(runs):
    padded, packed = logged(runs["padded"]), logged(runs["packed"])
    assert [e["step"] for e in packed] == [e["step"] for e in padded] == [1, 2, 3, 4]
    for a, b in zip(padded, packed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # fp32: the same sums in another layout
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert a["padding_fraction"] > 0 and a["padding_removed"] == 0
        assert b["padding_fraction"] == 0 and b["padding_removed"] == pytest.approx(a["padding_fraction"], abs=1e-4)
    assert sum(e["padding_removed"] for e in packed) > 0.04  # the sample's answers are short and alike: ~1-3%
    ours, theirs = (torch.load(r / "mm_projector.bin", weights_only=True) for r in (runs["packed"], runs["padded"]))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
    report = (runs["packed"] / "training_report.md").read_text()
    assert "| padding removed by --packing |" in report
    assert "| padding (computed positions) | 0.0%" in report


def test_packing_resumes_to_the_uninterrupted_run(data, tiny_llava, runs, tmp_path):
    """The packed run's checkpoint-2, alone in a new folder, resumes to the same steps 3 and 4 and projector."""
    from video_chatgpt.train.train import train

    out = tmp_path / "resumed"
    shutil.copytree(runs["packed"] / "checkpoint-2", out / "checkpoint-2")
    train(train_paths(data, tiny_llava, out) + PACK_FLAGS + ["--packing", "True"])
    assert [e["step"] for e in logged(out)] == [1, 2, 3, 4]
    assert [e["loss"] for e in logged(out)] == pytest.approx([e["loss"] for e in logged(runs["packed"])], rel=1e-5)
    ours, theirs = (torch.load(r / "mm_projector.bin", weights_only=True) for r in (out, runs["packed"]))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key])


def test_group_by_length_trains_with_less_padding(data, tiny_llava, runs, tmp_path):
    from video_chatgpt.train.train import train

    out = train(train_paths(data, tiny_llava, tmp_path / "grouped") + PACK_FLAGS + ["--group_by_length", "True"])
    grouped = sum(e["padding_fraction"] for e in logged(out))
    assert grouped < sum(e["padding_fraction"] for e in logged(runs["padded"]))


def test_plan_memory_accepts_the_flags(tiny_llava, capsys):
    from video_chatgpt.cli import main

    argv = ["plan-memory", "--model_name_or_path", str(tiny_llava), "--video_tokens", "356"]
    assert main(argv + ["--packing", "True", "--group_by_length", "True", "--tune_mm_mlp_adapter", "True"]) == 0
    assert "planned peak" in capsys.readouterr().out


def test_gpu_benchmark_packing_rows_run(tmp_path):
    """bench/gpu.py's packing section (bench/packing.py's rows) in its small CPU mode: every row, the same loss."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu.py", "--small", "--sections", "packing", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = [r for r in json.loads(out.read_text())["training"]["packing"] if r["status"] == "ok"]
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["padded", "grouped", "packed", "per-sample"]
    assert rows["packed"]["padding_fraction"] == 0 < rows["padded"]["padding_fraction"]
    assert rows["packed"]["max_loss_diff"] < 1e-4 and rows["per-sample"]["max_loss_diff"] < 1e-4
    assert result["padding_population"]["grouped"] < result["padding_population"]["padded"] / 5
    assert "packing: padded / grouped / packed / per-sample" in proc.stdout


def test_grouped_batches_are_shared_out_evenly_across_processes():
    """Under torchrun accelerate gives process p every world-th batch of the sampler's order (BatchSamplerShard):
    at each step the processes get batches of about the same length, and together every sample once."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    lengths = [int(x) for x in torch.randint(380, 760, (800,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=0)
    shards = [
        list(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), num_processes=2, process_index=p))
        for p in (0, 1)
    ]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(800))
    for a, b in zip(*shards):  # the same step on the two processes: within a few tokens of each other
        assert abs(max(lengths[i] for i in a) - max(lengths[i] for i in b)) <= 20
