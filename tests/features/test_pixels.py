"""The tower's pixel settings read from preprocessor_config.json as JSON: the same normalisation as transformers'
processor (bit for bit), without importing transformers' image processing; the config validated after the decode
workers fork, a bad one still stopping the run before anything is written."""

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

from video_chatgpt.errors import UserError
from video_chatgpt.features.encoder import normalisation_table, processor_is_identity_at
from video_chatgpt.features.extract import ExtractArgs, run
from video_chatgpt.features.towers import PIXEL_DEFAULTS, PixelSettings, pixel_settings, resolve_tower

CLIP_VISION = {"model_type": "clip_vision_model", "image_size": 224, "patch_size": 14, "hidden_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "num_channels": 3,
               "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}  # fmt: skip
SIGLIP_VISION = {**CLIP_VISION, "model_type": "siglip_vision_model", "image_size": 384}
RELEASED_VIT_L14 = {  # openai/clip-vit-large-patch14's preprocessor_config.json: no do_rescale / rescale_factor
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}  # fmt: skip
# (tower config, preprocessor config, read as JSON without transformers?)
CASES = {
    "released ViT-L/14": (CLIP_VISION, RELEASED_VIT_L14, True),
    "CLIP-336, dict sizes": (
        {**CLIP_VISION, "image_size": 336},
        {"do_resize": True, "size": {"shortest_edge": 336}, "do_center_crop": True,
         "crop_size": {"height": 336, "width": 336}, "do_rescale": True, "rescale_factor": 0.00392156862745098,
         "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711]},
        True,
    ),
    "CLIP, every field left to the defaults": (CLIP_VISION, {}, True),
    "CLIP, crop differs from the image size": (CLIP_VISION, {"crop_size": 200}, True),
    "CLIP, no normalisation": (CLIP_VISION, {"do_normalize": False, "rescale_factor": 0.5}, True),
    "SigLIP so400m": (
        SIGLIP_VISION,
        {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
         "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
         "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}},
        True,
    ),
    "SigLIP, every field left to the defaults": (SIGLIP_VISION, {}, True),
    "CLIP, do_resize null (left to transformers)": (CLIP_VISION, {"do_resize": None}, False),
}  # fmt: skip


def _tower(folder, vision, preprocessor):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(vision))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_pixel_settings_equal_the_processors(case, tmp_path):
    vision, preprocessor, as_json = CASES[case]
    folder = _tower(tmp_path / "tower", vision, preprocessor)
    spec = resolve_tower(folder)
    processor_class = CLIPImageProcessorPil if spec.kind == "clip" else SiglipImageProcessorPil
    processor = processor_class.from_pretrained(str(folder), local_files_only=True)
    settings = pixel_settings(spec)
    assert isinstance(settings, PixelSettings)
    # The (3, 256) table is the processor's rescale + normalise, bit for bit; the resize / crop decision the same.
    np.testing.assert_array_equal(normalisation_table(settings), normalisation_table(processor))
    for size in (200, 224, 336, 384):
        assert processor_is_identity_at(settings, size) == processor_is_identity_at(processor, size), size
    mean_from_json = preprocessor.get("image_mean") is not None and len(preprocessor["image_mean"]) == 3
    if as_json and mean_from_json:
        assert settings.image_mean == tuple(preprocessor["image_mean"])


def test_a_processor_saved_by_transformers_5_is_read_where_transformers_reads_it(tmp_path):
    # transformers 5 writes a processor's settings as the image_processor block of processor_config.json and reads
    # that block before preprocessor_config.json: a folder with both follows the nested one, a folder with only it
    # works, a bad block is one line.
    nested = {**RELEASED_VIT_L14, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1]}
    both = _tower(tmp_path / "both", CLIP_VISION, RELEASED_VIT_L14)
    only = _tower(tmp_path / "only", CLIP_VISION, {})
    (only / "preprocessor_config.json").unlink()
    for folder in (both, only):
        (folder / "processor_config.json").write_text(json.dumps({"image_processor": nested}))
        processor = CLIPImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
        settings = pixel_settings(resolve_tower(folder))
        assert settings.image_mean == (0.1, 0.2, 0.3) == tuple(processor.image_mean), folder.name
        np.testing.assert_array_equal(normalisation_table(settings), normalisation_table(processor))
    (only / "processor_config.json").write_text(json.dumps({"image_processor": [1, 2]}))
    with pytest.raises(UserError, match="image_processor is not a JSON object"):
        pixel_settings(resolve_tower(only))
    (only / "processor_config.json").write_text(json.dumps({"feature_extractor": {}}))
    with pytest.raises(UserError, match="no preprocessor_config.json .*processor_config.json"):
        pixel_settings(resolve_tower(only))


def test_the_defaults_are_the_processor_classes(tmp_path):
    for kind, processor in (("clip", CLIPImageProcessorPil()), ("siglip", SiglipImageProcessorPil())):
        defaults = PIXEL_DEFAULTS[kind]
        for key in ("do_resize", "do_rescale", "rescale_factor", "do_normalize"):
            assert defaults[key] == getattr(processor, key), (kind, key)
        assert tuple(defaults["image_mean"]) == tuple(processor.image_mean), kind
        assert tuple(defaults["image_std"]) == tuple(processor.image_std), kind
        assert bool(defaults["do_center_crop"]) == bool(getattr(processor, "do_center_crop", False)), kind
        settings = PixelSettings(**defaults)
        for size in (200, 224, 384):
            assert processor_is_identity_at(settings, size) == processor_is_identity_at(processor, size), (kind, size)


def test_extraction_reads_the_tower_without_transformers_image_processing(tiny_clip):
    """The encoder of the released ViT-L/14 preprocessor config (the tiny tower has it) loads without importing
    transformers' image processors, and resolving without the check imports no transformers at all."""
    code = f"""
import sys
from video_chatgpt.features.towers import resolve_tower
spec = resolve_tower({str(tiny_clip)!r}, check=False)
shape = (spec.grid, spec.width, spec.tokens_per_frame)
before = "transformers" in sys.modules
from video_chatgpt.features.encoder import FrameEncoder
encoder = FrameEncoder(spec)
print(before, encoder.uses_table, encoder.processor is None,
      "transformers.image_processing_utils" in sys.modules, shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False", "True", "True", "False", "(16,", "32,", "256)"], out.stdout + out.stderr
    # (test_vit.py: the whole extraction command imports no transformers at all)


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ({"hidden_size": 30}, ["config.json", "width 30 is not a multiple of the 4 attention heads"]),
        ({"image_size": "abc"}, ["config.json", "image_size 'abc' is not a positive number"]),
    ],
)
def test_a_bad_tower_config_stops_the_job_before_anything_is_written(field, words, awkward_videos, tmp_path):
    folder = _tower(tmp_path / "tower", {**CLIP_VISION, **field}, RELEASED_VIT_L14)
    with pytest.raises(UserError) as caught:
        resolve_tower(folder)
    assert all(w in str(caught.value) for w in words), caught.value
    out = tmp_path / "feats"
    args = ExtractArgs(
        next(iter(awkward_videos.values())).parent,
        out,
        vision_tower=str(folder),
        num_frames=4,
        progress=False,
        num_workers=1,
    )
    with pytest.raises(UserError) as caught:
        run(args)
    assert all(w in str(caught.value) for w in words), caught.value
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written in ([], [".extract.lock"])  # no manifest, no feature file, no report
