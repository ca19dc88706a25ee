"""Frame index rule and pooling against the plain definitions of spec §3."""

import numpy as np
import pytest
import torch

from tests.features.reference import reference_indices
from video_chatgpt.features.encoder import video_tokens
from video_chatgpt.features.pooling import pool_video_features
from video_chatgpt.features.sampling import frame_indices
from video_chatgpt.features.towers import TowerSpec, resolve_tower


def test_index_rule_examples_from_the_spec():
    # seg = 9.99: (round(0) + round(9.99)) // 2 = 5 (the spec's prose says 4, its formula gives 5).
    assert frame_indices(1000, 100)[:3] == [5, 15, 25] and frame_indices(1000, 100)[-1] == 994
    assert len(frame_indices(1000, 100)) == 100
    # N <= num_frames: T = N, indices can repeat and the last frame is never taken.
    assert frame_indices(12, 100) == [0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10]
    assert frame_indices(100, 100).count(50) == 2 and 99 not in frame_indices(100, 100)
    assert frame_indices(1, 100) == [0]


@pytest.mark.parametrize("num_frames", [1, 7, 100])
def test_index_rule_matches_the_plain_loop(num_frames):
    for n in list(range(1, 400)) + [999, 1000, 1001, 4567, 54321]:
        assert frame_indices(n, num_frames) == reference_indices(n, num_frames), n


def test_index_rule_rejects_empty_videos():
    with pytest.raises(ValueError):
        frame_indices(0, 100)


@pytest.mark.parametrize("t", [1, 5, 16])
def test_pooling_matches_numpy_on_float16(t):
    rng = np.random.default_rng(t)
    x = rng.normal(0, 3, size=(t, 9, 6)).astype(np.float16)  # (T, P, C)
    ref_t = np.pad(x.mean(axis=1), ((0, 16 - t), (0, 0)))
    ref = np.concatenate([ref_t, x.mean(axis=0)]).astype(np.float16)
    ours = pool_video_features(torch.from_numpy(x), num_frames=16).numpy()
    assert ours.shape == (16 + 9, 6) and ours.dtype == np.float16
    assert np.abs(ours.astype(np.float32) - ref.astype(np.float32)).max() <= 2 * np.spacing(np.float16(abs(ref).max()))
    # Padding rows are exactly zero and not part of the spatial mean.
    assert (ours[t:16] == 0).all()
    np.testing.assert_allclose(ours[16:].astype(np.float32), x.astype(np.float32).mean(0), rtol=2e-3, atol=2e-3)


def test_pooling_rejects_more_frames_than_tokens():
    with pytest.raises(ValueError):
        pool_video_features(torch.zeros(5, 4, 3), num_frames=4)


def test_token_counts_come_from_the_config(tiny_clip):
    def clip(image_size: int, patch_size: int) -> TowerSpec:
        config = {"model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch_size}
        return TowerSpec("clip", tiny_clip, "clip", "tower", config, -2, "default")

    assert video_tokens(clip(224, 14), 100) == 356  # ViT-L/14, the original's 356
    assert video_tokens(clip(336, 14), 100) == 100 + 24 * 24
    assert video_tokens(clip(32, 8), 8) == 8 + 16
    assert video_tokens(resolve_tower(tiny_clip), 8) == 264  # the tiny tower's config: 16 x 16 patches
