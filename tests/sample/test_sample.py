import json

import numpy as np
import torch

from video_chatgpt.sample.videos import VideoTruth, real_sample_videos, render_frames


def test_tiny_llava_folder_is_laid_out_like_the_real_one(tiny_llava, tiny_clip):
    cfg = json.loads((tiny_llava / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert cfg["use_mm_proj"] is True and cfg["vocab_size"] == 32003 and cfg["mm_vision_select_layer"] == -2
    assert cfg["mm_hidden_size"] == json.loads((tiny_clip / "config.json").read_text())["hidden_size"]
    index = json.loads((tiny_llava / "pytorch_model.bin.index.json").read_text())
    assert "model.mm_projector.weight" in index["weight_map"]
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    state = {}
    for s in shards:
        state.update(torch.load(tiny_llava / s, weights_only=True))
    assert state["model.mm_projector.weight"].shape == (cfg["hidden_size"], cfg["mm_hidden_size"])
    assert state["model.embed_tokens.weight"].shape == (32003, cfg["hidden_size"])
    assert state["lm_head.weight"].dtype == torch.float16
    assert not (tiny_llava / "tokenizer.json").exists()
    added = json.loads((tiny_llava / "added_tokens.json").read_text())
    assert added == {"<im_patch>": 32000, "<im_start>": 32001, "<im_end>": 32002}


def test_tiny_llava_tokenizer_loads_with_image_tokens(tiny_llava):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava)
    assert len(tok) == 32003
    assert tok.convert_tokens_to_ids(["<im_patch>", "<im_start>", "<im_end>"]) == [32000, 32001, 32002]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token) == (1, 2, "<unk>")


def test_tiny_clip_has_real_patch_grid(tiny_clip):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tiny_clip)
    proc = CLIPImageProcessor.from_pretrained(tiny_clip)
    assert (model.config.image_size // model.config.patch_size) ** 2 == 256
    x = proc.preprocess([np.zeros((50, 70, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert x.shape == (1, 3, 224, 224)


def test_synthetic_frames_show_the_colour_and_motion():
    truth = VideoTruth("v_test0000001", "red", "square", "right", 10, 64, 48)
    frames = render_frames(truth)
    assert frames.shape == (10, 48, 64, 3) and frames.dtype == np.uint8
    red = (frames[..., 0] > 150) & (frames[..., 1] < 100)
    xs = [np.nonzero(red[i])[1].mean() for i in (0, 9)]
    assert xs[1] > xs[0] + 20  # moved right


def test_sample_world_and_real_videos(sample_world):
    items = json.loads(sample_world["instructions"].read_text())
    assert all(set(i) == {"video_id", "q", "a"} for i in items) and len(items) == 8 * 4
    assert len(list(sample_world["videos_train"].glob("*.mp4"))) == 8
    assert all(p.stat().st_size > 1000 for p in real_sample_videos())


def test_awkward_videos(awkward_videos):
    assert awkward_videos["empty"].stat().st_size == 0
    assert set(awkward_videos) == {"short", "odd_size", "corrupt", "empty", "not_video"}
