"""vit.VisionTower against transformers' CLIP / SigLIP vision models: the selected hidden state, bit for bit, from
each checkpoint layout (a tower saved by transformers 5, a whole CLIP checkpoint with ``vision_model.`` keys, the
tower inside a LLaVA folder); and the extraction command runs without importing transformers or torch._dynamo."""

import copy
import subprocess
import sys

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from video_chatgpt.errors import UserError
from video_chatgpt.features.towers import load_tower_model, resolve_tower

SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4}


def _save(tmp_path, name, model, **kwargs):
    folder = tmp_path / name
    model.save_pretrained(folder, **kwargs)
    return folder


def _save_bin(tmp_path, name, model):
    """The 2023 layout of the released towers: config.json + one ``pytorch_model.bin`` (torch.save of the state)."""
    folder = _save(tmp_path, name, model)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """name -> (folder, the transformers vision model whose hidden_states are the reference)."""
    tmp = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**SMALL, image_size=56, patch_size=14)).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(**SMALL, image_size=48, patch_size=16)).eval()
    whole = CLIPModel(CLIPConfig(vision_config={**SMALL, "image_size": 28, "patch_size": 14},
                                 text_config={**SMALL, "vocab_size": 64})).eval()  # fmt: skip
    text = LlamaConfig(**SMALL, num_key_value_heads=4, vocab_size=128)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**SMALL, image_size=42, patch_size=14), text_config=text, image_token_index=127,
    )).eval()  # fmt: skip
    return {
        "clip (transformers 5 layout)": (_save(tmp, "clip", clip), clip),
        "siglip": (_save(tmp, "siglip", siglip), siglip),
        "whole CLIP checkpoint (vision_model.*)": (_save(tmp, "whole", whole), whole.vision_model),
        "whole CLIP checkpoint, pytorch_model.bin": (_save_bin(tmp, "whole-bin", whole), whole.vision_model),
        "llava folder (vision_tower.*)": (_save(tmp, "llava", llava), llava.model.vision_tower),
        "llava folder, sharded with an index": (
            _save(tmp, "llava-sharded", llava, max_shard_size="40KB"),
            llava.model.vision_tower,
        ),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", [-2, -1, 1])
def test_the_selected_hidden_state_is_transformers_bit_for_bit(towers, layer, dtype):
    for name, (folder, reference) in towers.items():
        spec = resolve_tower(folder, select_layer=layer)
        ours = load_tower_model(spec, "cpu", dtype)
        assert len(ours.encoder.layers) == spec.layers_kept
        size = spec.image_size
        pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(layer + 5))
        with torch.inference_mode():
            model = copy.deepcopy(reference).to(dtype)  # (a cast back to float32 would round the reference's weights)
            expected = model(pixels.to(dtype), output_hidden_states=True).hidden_states[layer]
            got = ours(pixels.to(dtype))
        assert got.dtype == dtype and got.shape == expected.shape, name
        assert torch.equal(got, expected), (name, (got.float() - expected.float()).abs().max())


def test_bad_weights_and_configs_are_one_line(towers, tmp_path):
    folder, _ = towers["clip (transformers 5 layout)"]
    config = (folder / "config.json").read_text()
    cases = {
        "hidden_act": (config.replace('"quick_gelu"', '"swish"'), "hidden_act 'swish' is not one of"),
        "heads": (config.replace('"num_attention_heads": 4', '"num_attention_heads": 5'), "not a multiple of the 5"),
        "width": (config.replace('"hidden_size": 32', '"hidden_size": 16'), "do not fit its config.json"),
        "a string": (config.replace('"patch_size": 14', '"patch_size": "14"'), "patch_size '14' is not a positive"),
    }
    for case, (text, words) in cases.items():
        bad = tmp_path / case
        bad.mkdir()
        (bad / "config.json").write_text(text)
        (bad / "model.safetensors").symlink_to(folder / "model.safetensors")
        with pytest.raises(UserError, match=words):
            load_tower_model(resolve_tower(bad, check=False), "cpu", torch.float32)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(config.replace('"num_hidden_layers": 3', '"num_hidden_layers": 5'))
    (truncated / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(UserError, match="lack 16 tensors .*is the download complete"):
        load_tower_model(resolve_tower(truncated), "cpu", torch.float32)
    # Damaged weight files: one line naming the file (the project's one reader of model folders).
    weights = (folder / "model.safetensors").read_bytes()
    files = {
        "cut short": (weights[:-100], "model.safetensors"),
        "git lfs pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 9\n",
                            "Git LFS pointer"),
    }  # fmt: skip
    for case, (data, words) in files.items():
        bad = tmp_path / case
        bad.mkdir()
        (bad / "config.json").write_text(config)
        (bad / "model.safetensors").write_bytes(data)
        with pytest.raises(UserError, match=words):
            load_tower_model(resolve_tower(bad), "cpu", torch.float32)


def test_the_extraction_command_never_imports_transformers_or_dynamo(tiny_clip, awkward_videos, tmp_path):
    # Both are start-up cost of every run before the first video: transformers' import chain ~4.5 s, torch._dynamo
    # (imported by nn.init on meta tensors) ~1.5 s.
    code = f"""
import sys
from video_chatgpt.features.extract import main
status = main(["--video_dir_path", {str(next(iter(awkward_videos.values())).parent)!r}, "--clip_feat_path",
               {str(tmp_path / "feats")!r}, "--vision_tower", {str(tiny_clip)!r}, "--num_frames", "4",
               "--num_workers", "0", "--no_progress"])
heavy = ("transformers", "torch._dynamo")
print(status is not None, sorted(m for m in sys.modules if m in heavy or m.split(".")[0] == "transformers")[:3])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[-2] == "True []", out.stdout + out.stderr[-2000:]
    assert list((tmp_path / "feats").glob("*.pkl"))
