"""Full fine-tune of another base (the document's flags without ``--tune_mm_mlp_adapter``: the whole model trains) on
a chat base (Qwen2, tied embeddings): the run folder holds the tuned language model as a causal-LM folder plus
``mm_projector.bin``, is its own base for chat, resumes from a checkpoint, and ``--bits 4|8`` stops before loading."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.bases.world import colour_features
from video_chatgpt.constants import BASE_POINTER_FILE, EMBED_TOKENS_KEY, PROJECTOR_FILE

FAMILY = "qwen2"
STEPS = 3


def full_args(base: Path, world: dict, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(base),
        "--video_folder",
        str(world["features"]),
        "--data_path",
        str(world["instructions"]),
        "--output_dir",
        str(out),
        "--mm_use_vid_start_end",
        "--mm_projector_type",
        "mlp2x_gelu",
        "--vision_tower",
        "tiny-siglip",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "constant",
        "--max_steps",
        str(STEPS),
        "--save_steps",
        "1",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--skip_data_check",
        "True",
    ]


@pytest.fixture(scope="module")
def full_run(chat_bases, feature_world, tmp_path_factory) -> Path:
    from video_chatgpt.train.train import train

    return train(full_args(chat_bases[FAMILY], feature_world, tmp_path_factory.mktemp("full_ft") / "run"))


def test_the_run_folder_holds_the_tuned_language_model(full_run, chat_bases):
    base = load_file(str(chat_bases[FAMILY] / "model.safetensors"))
    tuned = load_file(str(full_run / "model.safetensors"))
    info = json.loads((full_run / "run_info.json").read_text())
    # Everything trained: every tensor of the base's language model, and the projector.
    names = [p["name"] for p in info["trainable_parameters"]]
    assert {n.removeprefix("language_model.") for n in names if n.startswith("language_model.")} == set(base)
    assert {n for n in names if n.startswith("model.mm_projector.")} == {
        f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")
    }
    # The language model's own checkpoint names (a causal-LM folder), every tensor tuned. (Qwen2's padded table
    # already has room for the video tokens: same shapes.)
    assert set(tuned) == set(base)
    for name, tensor in base.items():
        assert tuned[name].shape == tensor.shape and not torch.equal(tuned[name], tensor), name
    config = json.loads((full_run / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["video_chatgpt_base_kind"] == "causal_lm"
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_hidden_size"] == 32
    pointer = json.loads((full_run / BASE_POINTER_FILE).read_text())
    assert pointer["base_model"] == str(full_run.resolve())
    assert pointer["trained_from"] == str(chat_bases[FAMILY].resolve())
    projector = torch.load(full_run / PROJECTOR_FILE, weights_only=True)
    assert torch.equal(projector[EMBED_TOKENS_KEY], tuned["model.embed_tokens.weight"].float())


def test_reloaded_as_model_name_it_chats_with_the_tuned_weights(full_run, chat_bases, tmp_path, capsys):
    from video_chatgpt.inference.chat import main
    from video_chatgpt.inference.engine import load_engine

    engine = load_engine(full_run, device="cpu")
    tuned = load_file(str(full_run / "model.safetensors"))
    reloaded = engine.model.language_model.state_dict()
    for name, tensor in tuned.items():
        assert torch.equal(reloaded[name], tensor), name
    # Not the base's: the engine did not go back to the folder the run started from.
    base = load_file(str(chat_bases[FAMILY] / "model.safetensors"))
    assert not torch.equal(reloaded["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])

    features = tmp_path / "v.npy"
    np.save(features, colour_features(2, np.random.default_rng(5)))
    argv = [
        "--model-name",
        str(full_run),
        "--features_path",
        str(features),
        "--question",
        "What colour is it?",
        "--temperature",
        "0",
        "--max_new_tokens",
        "6",
        "--device",
        "cpu",
    ]
    answers = []
    for _ in range(2):
        assert main(argv) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].strip()


def test_a_full_fine_tune_resumes_from_its_checkpoint(full_run, chat_bases, feature_world, tmp_path):
    """Killed after step 2 (checkpoint-3 gone): the rerun loads checkpoint-2's causal LM and projector and ends
    where the uninterrupted run did."""
    from video_chatgpt.train.train import train

    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    train(full_args(chat_bases[FAMILY], feature_world, out))
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs"][-1]["resumed_from"].endswith(f"checkpoint-{STEPS - 1}")
    resumed, uninterrupted = load_file(str(out / "model.safetensors")), load_file(str(full_run / "model.safetensors"))
    for name, tensor in uninterrupted.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), (name, (resumed[name] - tensor).abs().max())
    a = torch.load(out / PROJECTOR_FILE, weights_only=True)
    b = torch.load(full_run / PROJECTOR_FILE, weights_only=True)
    for key in b:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("base", ["qwen2", "llava_hf"])
def test_bits_stops_before_loading_on_every_base(bits, base, chat_bases, llava_hf, feature_world, tmp_path):
    """No CUDA here: ``--bits 4|8`` is one line before the base is loaded, for a chat base and a LLaVA-1.5 folder
    (the folder here has no weights at all: had loading started, the error would be another)."""
    from video_chatgpt.errors import UserError
    from video_chatgpt.train.train import train

    assert not torch.cuda.is_available()
    source = chat_bases["qwen2"] if base == "qwen2" else llava_hf
    folder = tmp_path / "no-weights"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
    args = full_args(folder, feature_world, tmp_path / "out")
    with pytest.raises(UserError, match=rf"^--bits {bits} \(QLoRA\) .* needs a CUDA GPU; none is available here"):
        train([*args, "--lora_enable", "True", "--bits", str(bits)])
    assert not (tmp_path / "out").exists()


def test_bits_with_a_llava_hf_folder_is_refused_before_reading_it(llava_hf):
    """On a GPU machine the quantised load of a LLaVA-1.5 folder is refused in one line (its LM is split out of the
    full model after loading): checked here with the BitsAndBytesConfig the run would pass."""
    from transformers import BitsAndBytesConfig

    from video_chatgpt.bases import open_base
    from video_chatgpt.data.tokenizer import VideoTokenIds
    from video_chatgpt.errors import UserError
    from video_chatgpt.model.loading import load_model

    with pytest.raises(UserError, match=re.escape("--bits 4|8 is not supported for a LLaVA-1.5/NeXT folder")):
        load_model(
            open_base(llava_hf), VideoTokenIds(5, None, None), 0,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True),
        )  # fmt: skip
