"""Towers beyond the document's CLIP-L/14-224: SigLIP (no CLS), the tower inside a LLaVA-1.5/NeXT folder (its select
layer and strategy, both checkpoint layouts), --spatial_pool, and the token budget of each real tower's config."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.features.reference import assert_fp16_close, reference_indices
from video_chatgpt.errors import UserError
from video_chatgpt.features import VideoFeatureExtractor
from video_chatgpt.features.encoder import video_tokens
from video_chatgpt.features.extract import main
from video_chatgpt.features.store import load_features, read_manifest
from video_chatgpt.features.towers import resolve_tower
from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video, render_frames

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    """SiglipVisionModel, hidden 32, 32 px, patch 16 (a 2 x 2 grid, no CLS), with SigLIP's processor config."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    folder = tmp_path_factory.mktemp("towers") / "siglip-tiny"
    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=32, patch_size=16)  # fmt: skip
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _tiny_llava(folder, strategy="default", layer=-2):
    """LlavaForConditionalGeneration: tiny llama text_config + tiny CLIP vision_config (28 px, patch 14: 2 x 2)."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )  # fmt: skip

    torch.manual_seed(1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=14)  # fmt: skip
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=128)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=127, vision_feature_layer=layer,
                         vision_feature_select_strategy=strategy)  # fmt: skip
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                      image_mean=CLIP_MEAN, image_std=CLIP_STD)  # fmt: skip
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava_hf(tmp_path_factory):
    return _tiny_llava(tmp_path_factory.mktemp("towers") / "llava-1.5-tiny-hf")


def _frames(seed=0):
    return render_frames(VideoTruth(f"v_tower{seed}", "red", "circle", "left", 20, 64, 48))


def _reference(frames, processor, tower_forward, drop: int, num_frames=NUM_FRAMES) -> np.ndarray:
    """The straightforward computation: nearest resize, the processor on PIL images, the full tower's selected
    hidden state (``tower_forward``), drop the CLS token, float16, temporal and spatial means."""
    from PIL import Image

    picked = torch.from_numpy(frames[reference_indices(len(frames), num_frames)])
    size = processor.crop_size["height"] if getattr(processor, "do_center_crop", False) else processor.size["height"]
    x = torch.nn.functional.interpolate(picked.permute(0, 3, 1, 2).float(), size=(size, size))
    images = [Image.fromarray(f) for f in x.to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    pixels = processor.preprocess(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = tower_forward(pixels)[:, drop:].numpy().astype(np.float16)  # (T, P, C)
    temporal = np.pad(feats.mean(axis=1), ((0, num_frames - len(feats)), (0, 0)))
    return np.concatenate([temporal, feats.mean(axis=0)], axis=0)


def test_siglip_tower_has_no_cls_and_matches_the_reference(tiny_siglip):
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    extractor = VideoFeatureExtractor(tiny_siglip, num_frames=NUM_FRAMES)
    spec = extractor.spec
    assert (spec.kind, spec.has_cls, spec.grid, spec.select_layer, extractor.width) == ("siglip", False, 2, -2, 32)
    assert extractor.num_tokens == NUM_FRAMES + 4 and extractor.encoder.uses_table
    full = SiglipVisionModel.from_pretrained(tiny_siglip).eval()
    processor = SiglipImageProcessorPil.from_pretrained(tiny_siglip)
    frames = _frames()
    ours = extractor.features_from_frames(frames)
    assert ours.shape == (NUM_FRAMES + 4, 32)
    ref = _reference(frames, processor, lambda px: full(px, output_hidden_states=True).hidden_states[-2], drop=0)
    assert_fp16_close(ours, ref)
    # The normalisation table equals SigLIP's processor (mean 0.5, std 0.5) bit for bit.
    sample = frames[:3, :32, :32]
    from PIL import Image

    expected = processor.preprocess([Image.fromarray(f) for f in sample], return_tensors="pt")["pixel_values"]
    assert torch.equal(extractor.encoder.pixel_values(torch.from_numpy(np.ascontiguousarray(sample))), expected)
    # --select_layer -1: the last layer's output *before* SigLIP's post-layernorm (what LLaVA reads).
    last = VideoFeatureExtractor(tiny_siglip, num_frames=NUM_FRAMES, select_layer=-1)
    ref_last = _reference(frames, processor, lambda px: full(px, output_hidden_states=True).hidden_states[-1], drop=0)
    assert_fp16_close(last.features_from_frames(frames), ref_last)
    assert not np.array_equal(ref_last, ref)


@pytest.mark.parametrize("layout", ["transformers-5", "transformers-4"])
def test_llava_folder_tower_matches_the_llava_model_s_own_vision_tower(tiny_llava_hf, tmp_path, layout):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

    folder = tiny_llava_hf
    if layout == "transformers-4":  # the hub's llava-hf checkpoints: vision_tower.vision_model.*, language_model.*
        folder = tmp_path / "llava-4x-layout"
        shutil.copytree(tiny_llava_hf, folder)
        weights = load_file(folder / "model.safetensors")
        renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.")
                   else k: v for k, v in weights.items()}  # fmt: skip
        assert renamed.keys() != weights.keys()
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    extractor = VideoFeatureExtractor(folder, num_frames=NUM_FRAMES)
    spec = extractor.spec
    assert (spec.kind, spec.source, spec.grid, spec.has_cls) == ("clip", "llava", 2, True)
    assert spec.select_strategy == "default" and spec.select_layer == -2
    assert extractor.num_tokens == NUM_FRAMES + 4 and extractor.width == 32
    llava = LlavaForConditionalGeneration.from_pretrained(tiny_llava_hf).eval()
    tower = llava.model.vision_tower
    processor = CLIPImageProcessorPil.from_pretrained(tiny_llava_hf)
    frames = _frames(1)
    # LLaVA's own selection: hidden_states[vision_feature_layer], CLS dropped for the "default" strategy.
    ref = _reference(frames, processor, lambda px: tower(px, output_hidden_states=True).hidden_states[-2], drop=1)
    assert_fp16_close(extractor.features_from_frames(frames), ref)


def test_llava_full_strategy_keeps_the_cls_token_and_spatial_pool_leaves_it(tmp_path):
    folder = _tiny_llava(tmp_path / "llava-full", strategy="full", layer=-1)
    extractor = VideoFeatureExtractor(folder, num_frames=NUM_FRAMES)
    assert extractor.spec.select_layer == -1 and extractor.spec.keeps_cls
    assert extractor.num_tokens == NUM_FRAMES + 1 + 4
    frames = _frames(2)
    full = extractor.features_from_frames(frames)
    pooled = VideoFeatureExtractor(folder, num_frames=NUM_FRAMES, spatial_pool=2).features_from_frames(frames)
    assert pooled.shape == (NUM_FRAMES + 1 + 1, 32)
    np.testing.assert_array_equal(pooled[: NUM_FRAMES + 1], full[: NUM_FRAMES + 1])  # temporal rows and the CLS row
    grid = full[NUM_FRAMES + 1 :].astype(np.float32).mean(axis=0)  # the 2 x 2 grid's mean (one window)
    assert_fp16_close(pooled[-1:], grid[None].astype(np.float16))


def test_spatial_pool_averages_2x2_windows_of_the_patch_grid(tiny_clip):
    plain = VideoFeatureExtractor(tiny_clip, num_frames=NUM_FRAMES)
    pooled = VideoFeatureExtractor(tiny_clip, num_frames=NUM_FRAMES, spatial_pool=2)
    assert pooled.num_spatial_tokens == 64 and pooled.num_tokens == NUM_FRAMES + 64
    frames = _frames(3)
    sampled = frames[reference_indices(len(frames), NUM_FRAMES)]
    from video_chatgpt.features.decode import resize_nearest

    per_frame = plain.encode_frames(resize_nearest(sampled, 224)).float().numpy()  # (T, 256, C) float16 values
    spatial = per_frame.mean(axis=0).reshape(8, 2, 8, 2, -1).mean(axis=(1, 3)).reshape(64, -1)  # 2x2 windows
    ours = pooled.features_from_frames(frames)
    np.testing.assert_array_equal(ours[:NUM_FRAMES], plain.features_from_frames(frames)[:NUM_FRAMES])
    assert_fp16_close(ours[NUM_FRAMES:], spatial.astype(np.float16))


def test_extraction_with_siglip_writes_its_manifest(tiny_siglip, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_synthetic_video(videos / "v_sig01.mp4", VideoTruth("v_sig01", "blue", "square", "up", 15, 64, 48))
    out = tmp_path / "feats"
    args = ["--video_dir_path", str(videos), "--clip_feat_path", str(out), "--vision_tower", str(tiny_siglip),
            "--num_frames", str(NUM_FRAMES), "--num_workers", "0", "--no_progress"]  # fmt: skip
    assert main(args) == 0
    manifest = read_manifest(out)
    assert manifest["tower_kind"] == "siglip" and not manifest["has_cls"]
    assert manifest["feature_shape"] == [NUM_FRAMES + 4, 32] and manifest["image_size"] == 32
    assert load_features(out / "v_sig01.pkl").shape == (NUM_FRAMES + 4, 32)


# The real towers' configs (the fields that decide the geometry), to compute the README's token budget.
REAL_TOWERS = {
    "clip-vit-large-patch14": {"model_type": "clip_vision_model", "image_size": 224, "patch_size": 14,
                               "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "clip-vit-large-patch14-336": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14,
                                   "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "siglip-so400m-patch14-384": {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14,
                                  "hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16},
    "siglip-base-patch16-224": {"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 16,
                                "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "llava-1.5-7b-hf": {"model_type": "llava", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                        "vision_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14,
                                          "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}},
}  # fmt: skip
# (tokens for 100 frames, with --spatial_pool 2, width)
BUDGET = {
    "clip-vit-large-patch14": (356, 164, 1024),
    "clip-vit-large-patch14-336": (676, 244, 1024),
    "siglip-so400m-patch14-384": (829, 296, 1152),
    "siglip-base-patch16-224": (296, 149, 768),
    "llava-1.5-7b-hf": (676, 244, 1024),
}


def test_token_budget_per_tower_from_the_real_configs(tmp_path):
    for name, config in REAL_TOWERS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        spec = resolve_tower(folder)
        assert (video_tokens(spec, 100), video_tokens(spec, 100, 2), spec.width) == BUDGET[name], name


def test_towers_that_cannot_be_used_are_named(tmp_path, tiny_llava):
    folder = tmp_path / "llava-multi"
    folder.mkdir()
    multi_layer = {**REAL_TOWERS["llava-1.5-7b-hf"], "vision_feature_layer": [-2, -5]}
    (folder / "config.json").write_text(json.dumps(multi_layer))
    with pytest.raises(UserError, match="selects several layers"):
        resolve_tower(folder)
    with pytest.raises(UserError, match="original layout.*--vision_tower"):
        resolve_tower(tiny_llava)
    with pytest.raises(UserError, match="outside the 4 hidden states"):
        VideoFeatureExtractor(_tiny_llava(tmp_path / "llava-bad-layer", layer=-7))
