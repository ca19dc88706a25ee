"""``video-chatgpt export-lm``: the exported folder is a plain causal LM (``AutoModelForCausalLM`` loads it as it is)
that gives the run's logits on text, LoRA merged and the trained video-token rows in, for the document's base and a
chat base and a LLaVA-1.5 folder; its tokenizer holds the video tokens at the run's ids; bad runs and outputs are one line, nothing written."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers.train import LORA_FLAGS, train_paths
from video_chatgpt.bases import open_base
from video_chatgpt.cli import main as cli_main
from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_FILE
from video_chatgpt.model.export import EXPORT_INFO_FILE, PromptEmbedder, export_lm, read_export_info
from video_chatgpt.model.loading import load_projector, load_trained_model, read_projector_file

TEXT = "A chat about a video. USER: What colour is the square? ASSISTANT: It is red and it moves left."


def text_ids(tokenizer, video_ids) -> torch.Tensor:
    """Text ids with <vid_start> and <vid_end> in them (their rows were trained), no <vid_patch> (no features)."""
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    return torch.tensor([[*ids[:5], video_ids.start, video_ids.end, *ids[5:]]])


@torch.no_grad()
def test_exported_folder_gives_the_runs_logits_on_text(run_and_export):
    run, out = run_and_export
    base = open_base(run)
    model, tokenizer, video_ids = load_trained_model(base, torch.float32)  # LoRA not merged: peft's layers
    model.eval()
    ids = text_ids(tokenizer, video_ids)
    ours = model(input_ids=ids).logits

    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    info = read_export_info(out)
    assert (
        type(plain).__name__ == info.architecture == json.loads((out / "config.json").read_text())["architectures"][0]
    )
    assert info.architecture in ("LlamaForCausalLM", "Qwen2ForCausalLM")
    theirs = plain(input_ids=ids).logits
    assert theirs.shape == ours.shape
    # Every column but the video tokens': their *output* rows are not part of a run (mm_projector.bin holds the
    # input table) and a load that grows the table draws <vid_patch>'s at random (start/end: the mean, over it too),
    # so two loads of the run differ there as well; a generated answer never holds them.
    words = [i for i in range(ours.shape[-1]) if i not in (video_ids.patch, video_ids.start, video_ids.end)]
    torch.testing.assert_close(theirs[..., words], ours[..., words], atol=1e-4, rtol=1e-4)  # merged vs peft's layers

    # The adapter mattered (without it the logits differ), and the exported LM holds it merged.
    bare, _, _ = load_trained_model(dataclasses.replace(base, adapter=None), torch.float32)
    assert (bare.eval()(input_ids=ids).logits - ours).abs().max() > 1e-3
    # The trained <vid_start>/<vid_end> rows are the run's projector file's rows.
    table = plain.get_input_embeddings().weight
    trained = read_projector_file(run / PROJECTOR_FILE)[EMBED_TOKENS_KEY]
    rows = [video_ids.start, video_ids.end]
    assert torch.equal(table[rows], trained[rows])

    # The tokenizer holds the video tokens at the run's ids; nothing of the video model is left in the folder.
    exported_tok = AutoTokenizer.from_pretrained(str(out))
    assert exported_tok.convert_tokens_to_ids(["<vid_patch>", "<vid_start>", "<vid_end>"]) == [
        video_ids.patch, video_ids.start, video_ids.end
    ]  # fmt: skip
    assert (info.patch_token_id, info.start_token_id, info.end_token_id) == (video_ids.patch, *rows)
    config = json.loads((out / "config.json").read_text())
    assert not [k for k in config if k.startswith(("mm_", "video_")) or k in ("conv_template", "tune_mm_mlp_adapter")]
    names = []
    for shard in out.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            names += list(f.keys())
    assert set(names) <= set(plain.state_dict()) and not [n for n in names if "mm_projector" in n or "lora" in n]
    projector = torch.load(out / PROJECTOR_FILE, weights_only=True)
    assert projector and all(k.startswith("model.mm_projector.") for k in projector)
    assert info.video_token_len == base.video_token_len and info.feature_width == model.config.mm_hidden_size


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_runs_and_outputs_are_one_line_and_write_nothing(llava_lora_run, tiny_llava, tmp_path, capsys):
    run = llava_lora_run
    before = _listing(run)
    cases = [
        ([str(run), str(run / "lm")], "is inside the input <run>"),
        ([str(run), str(run)], "is the input <run>"),
        ([str(run), str(run.parent)], "contains the input <run>"),
        ([str(tiny_llava), str(tmp_path / "a")], "not a training output folder (no video_chatgpt_base.json)"),
        ([str(tmp_path / "nothing"), str(tmp_path / "b")], "no such folder"),
    ]
    for argv, words in cases:
        status = cli_main(["export-lm", *argv])
        err = capsys.readouterr().err
        assert status == 1 and words in err and "Traceback" not in err, (argv, err)
        assert len([line for line in err.splitlines() if line.startswith("video-chatgpt export-lm: error:")]) == 1
    with pytest.raises(SystemExit):  # argparse's usage error (status 2)
        cli_main(["export-lm", str(run), str(tmp_path / "c"), "--dtype", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    assert _listing(run) == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "stale.txt").write_text("old")
    assert cli_main(["export-lm", str(run), str(taken)]) == 1
    assert "exists; choose another folder or pass --overwrite" in capsys.readouterr().err
    assert _listing(taken) == ["stale.txt"]
    (tmp_path / "file").write_text("x")
    assert cli_main(["export-lm", str(run), str(tmp_path / "file"), "--overwrite"]) == 1
    assert "is a file; name a folder" in capsys.readouterr().err

    assert cli_main(["export-lm", str(run), str(taken), "--overwrite", "--dtype", "fp16"]) == 0
    assert not (taken / "stale.txt").exists() and (taken / EXPORT_INFO_FILE).is_file()
    assert read_export_info(taken).dtype == "float16"
    # An fp16 export's prompt embeddings: the fp32 model's decoder input rounded to fp16, nothing else.
    model, tokenizer, video_ids = load_trained_model(open_base(run), torch.float32)
    n, width = model.config.video_token_len, model.config.mm_hidden_size
    ids = [1, *tokenizer("a question", add_special_tokens=False).input_ids, video_ids.start]
    ids += [video_ids.patch] * n + [video_ids.end, 5]
    feats = torch.randn(n, width).half()
    with torch.no_grad():
        want = model.eval().decoder_inputs(torch.tensor([ids]), feats.unsqueeze(0))[0].half()
    got = PromptEmbedder.load(taken)(ids, feats)
    assert got.dtype == torch.float16 and torch.equal(got, want)
    load_projector(model, read_projector_file(taken / PROJECTOR_FILE), "exported", [])  # the usual reader takes it
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging folder left
    assert _listing(run) == before


def test_an_export_info_file_that_is_not_ours_is_one_line(tmp_path):
    from video_chatgpt.errors import UserError

    with pytest.raises(UserError, match="no video_chatgpt_export.json; name a folder written by"):
        read_export_info(tmp_path)
    (tmp_path / EXPORT_INFO_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError, match="not an export-lm file of format 1"):
        read_export_info(tmp_path)


def test_a_llava_1_5_run_exports_its_language_model(llava_hf, tmp_path):
    """The third kind of base: a LoRA run on a LLaVA-1.5 folder exports its Vicuna as a plain LlamaForCausalLM that
    gives the run's logits; the export's prompt embeddings are the run's decoder input."""
    from tests.bases.world import make_world
    from video_chatgpt.train.train import train

    world = make_world(tmp_path / "world", num_videos=8)
    data = {"data_path": world["instructions"], "video_folder": world["features"]}
    run = train([*train_paths(data, llava_hf, tmp_path / "run"), *LORA_FLAGS, "--max_steps", "2",
                 "--save_strategy", "no"])  # fmt: skip
    check_export(run, export_lm(run, tmp_path / "lm", dtype="fp32"))


@torch.no_grad()
def check_export(run, out):
    model, tokenizer, video_ids = load_trained_model(open_base(run), torch.float32)
    model.eval()
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    ids = text_ids(tokenizer, video_ids)
    words = [i for i in range(plain.config.vocab_size) if i not in (video_ids.patch, video_ids.start, video_ids.end)]
    ours, theirs = model(input_ids=ids).logits[..., words], plain(input_ids=ids).logits[..., words]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    n = model.config.video_token_len
    text = tokenizer("What colour is it?", add_special_tokens=False).input_ids
    prompt = [*text, video_ids.start, *[video_ids.patch] * n, video_ids.end, *text]
    feats = torch.randn(n, model.config.mm_hidden_size)
    assert torch.equal(
        PromptEmbedder.load(out)(prompt, feats), model.decoder_inputs(torch.tensor([prompt]), feats[None])[0]
    )
