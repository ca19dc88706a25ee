"""The extractor's numbers against the straightforward computation of spec §3 (tests/features/reference.py)."""

import numpy as np
import pytest
import torch

from tests.features.reference import (
    assert_fp16_close,
    reference_features,
    reference_features_from_frames,
    reference_indices,
    reference_pixels,
    write_h264,
)
from video_chatgpt.features import VideoFeatureExtractor, resolve_tower, video_tokens
from video_chatgpt.features.decode import resize_nearest
from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video, real_sample_videos, render_frames


@pytest.fixture(scope="module")
def extractor(tiny_clip):
    return VideoFeatureExtractor(tiny_clip, num_frames=100)


def test_geometry_comes_from_the_tower_config(extractor, tiny_clip):
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig.from_pretrained(tiny_clip)
    assert extractor.image_size == cfg.image_size == 224
    assert extractor.num_patches == (cfg.image_size // cfg.patch_size) ** 2 == 256
    assert extractor.width == cfg.hidden_size
    assert extractor.num_tokens == video_tokens(resolve_tower(tiny_clip), 100) == 356
    assert extractor.encoder.uses_table  # the real ViT-L/14 preprocessor config: resize and crop are no-ops


def test_normalisation_is_bit_equal_to_the_clip_processor(extractor, tiny_clip):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 224, 224, 3), dtype=np.uint8)
    frames[0] = np.arange(256, dtype=np.uint8)[None, :224, None]  # every value in every channel
    ours = extractor.encoder.pixel_values(torch.from_numpy(frames))
    ref = reference_pixels(frames, str(tiny_clip))
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)


def test_truncated_tower_gives_hidden_states_minus_two(extractor, tiny_clip):
    from transformers import CLIPVisionModel

    full = CLIPVisionModel.from_pretrained(tiny_clip).eval()
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)
    pixels = extractor.encoder.pixel_values(torch.from_numpy(frames))
    with torch.no_grad():
        ref = full(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    ours = extractor.encoder(torch.from_numpy(frames))
    assert len(extractor.encoder.model.encoder.layers) == full.config.num_hidden_layers - 1
    assert ours.shape == ref.shape and ours.dtype == torch.float16
    assert_fp16_close(ours.numpy(), ref.numpy().astype(np.float16))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(path, decode the reference with decord?) pairs: decord for h264 / VP8, PyAV for MPEG-4 Part 2."""
    out = tmp_path_factory.mktemp("enc")
    odd = render_frames(VideoTruth("v_encodd", "yellow", "circle", "left", 130, 77, 53))
    short = VideoTruth("v_encshort", "red", "square", "right", 12, 64, 48)
    mkv = VideoTruth("v_encmkv", "yellow", "circle", "left", 130, 77, 53)
    webm = VideoTruth("v_encwebm", "blue", "circle", "up", 45, 96, 72)
    return [
        (make_synthetic_video(out / "v_encshort.mp4", short), False),
        (make_synthetic_video(out / "v_encmkv.mkv", mkv), False),
        (write_h264(out / "v_encodd.mp4", odd), True),
        (make_synthetic_video(out / "v_encwebm.webm", webm), True),
    ]


def test_features_from_video_match_the_reference_on_real_and_synthetic_videos(extractor, tiny_clip, synthetic):
    # bikes.mp4 (250 frames, 640x272), carphone (120, 176x144), both h264; synthetic: 12 frames (< 100), mkv without
    # a frame count, odd size h264, webm (VP8).
    real = [(p, True) for p in real_sample_videos() if p.name != "bigbuckbunny.mp4"]
    for path, use_decord in real + synthetic:
        ours = extractor.features_from_video(path)
        ref = reference_features(path, str(tiny_clip), 100, use_decord=use_decord)
        assert ours.shape == (356, extractor.width) and ours.dtype == np.float16
        assert_fp16_close(ours, ref)
        if "short" in path.name:  # 12 frames: rows 12..99 of the temporal part are zero padding
            assert (ours[12:100] == 0).all() and not (ours[:12] == 0).all()


def test_features_from_frames_all_frames_or_already_sampled(extractor, tiny_clip):
    frames = render_frames(VideoTruth("v_frames", "green", "square", "down", 140, 120, 96))
    ref = reference_features_from_frames(frames, str(tiny_clip), 100)
    assert_fp16_close(extractor.features_from_frames(frames), ref)
    sampled = frames[reference_indices(len(frames), 100)]
    assert_fp16_close(extractor.features_from_frames(sampled, already_sampled=True), ref)
    # Already resized frames are taken as they are.
    assert_fp16_close(extractor.features_from_frames(resize_nearest(sampled, 224), already_sampled=True), ref)
    with pytest.raises(ValueError):
        extractor.features_from_frames(frames, already_sampled=True)  # 140 > num_frames


def test_num_frames_changes_the_temporal_rows_only(tiny_clip):
    small = VideoFeatureExtractor(tiny_clip, num_frames=8, batch_size=3)  # 3 frames a forward: batching is exact
    frames = render_frames(VideoTruth("v_eight", "red", "circle", "right", 50, 64, 48))
    ours = small.features_from_frames(frames)
    assert ours.shape == (8 + 256, small.width)
    assert_fp16_close(ours, reference_features_from_frames(frames, str(tiny_clip), 8))


def test_a_hub_id_is_resolved_offline_from_the_hf_cache(tiny_clip, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    # The cache layout huggingface_hub writes: models--<org>--<name>/{refs/main, snapshots/<commit>/...}.
    repo = tmp_path / "hub" / "models--openai--clip-vit-tiny"
    commit = "0" * 40
    shutil.copytree(tiny_clip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_cache = VideoFeatureExtractor("openai/clip-vit-tiny", num_frames=4)
    from_folder = VideoFeatureExtractor(tiny_clip, num_frames=4)
    frames = render_frames(VideoTruth("v_hub", "red", "square", "up", 9, 64, 48))
    np.testing.assert_array_equal(from_cache.features_from_frames(frames), from_folder.features_from_frames(frames))
    with pytest.raises(FileNotFoundError, match="hf download openai/not-cached"):
        VideoFeatureExtractor("openai/not-cached")
