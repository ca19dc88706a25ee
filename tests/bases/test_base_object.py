"""The base object (``video_chatgpt.bases.open_base``): one folder resolved once, the run folder the truth for what it
was trained with; and ``data check`` reading the feature width from it for every kind of base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from video_chatgpt.bases import open_base
from video_chatgpt.constants import BASE_POINTER_FILE, DEFAULT_NUM_FRAMES, PROJECTOR_FILE
from video_chatgpt.data.cli import main as data_main
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import save_features


def test_kinds_and_what_each_base_says(tiny_llava, llava_hf, chat_bases):
    llava = open_base(tiny_llava)
    assert (llava.kind, llava.run, llava.projector_file) == ("llava_v1", None, None)
    assert llava.feature_width == json.loads((tiny_llava / "config.json").read_text())["mm_hidden_size"]
    assert llava.use_start_end and llava.num_frames == DEFAULT_NUM_FRAMES
    hf = open_base(llava_hf)
    config = json.loads((llava_hf / "config.json").read_text())
    assert hf.kind == "llava_hf" and hf.projector_type == "mlp2x_gelu"
    assert hf.feature_width == config["vision_config"]["hidden_size"]  # the tower's width: its projector reads it
    assert hf.vision_tower == str(llava_hf.resolve())  # a LLaVA-1.5 folder is its own tower
    qwen = open_base(chat_bases["qwen2"])
    assert qwen.kind == "causal_lm" and qwen.feature_width is None and not qwen.has_projector


def test_a_run_folder_is_the_truth_for_its_settings(tiny_llava, tmp_path):
    """A run names its base; its own config (tower, frames, tokens, template, projector type) wins over the base's."""
    run = tmp_path / "run"
    run.mkdir()
    (run / BASE_POINTER_FILE).write_text(json.dumps({"base_model": str(tiny_llava), "projector": PROJECTOR_FILE}))
    config = json.loads((tiny_llava / "config.json").read_text())
    settings = {"mm_vision_tower": "/towers/B", "num_video_frames": 8, "video_token_len": 264, "conv_template": "plain"}
    (run / "config.json").write_text(json.dumps({**config, **settings}))
    base = open_base(run)
    assert base.folder == tiny_llava and base.run == run and base.projector_file == run / PROJECTOR_FILE
    assert (base.vision_tower, base.num_frames, base.video_token_len, base.trained_template) == (
        "/towers/B", 8, 264, "plain",
    )  # fmt: skip
    assert open_base(tiny_llava).vision_tower != "/towers/B"
    # --projection_path overrides the run's projector; --lora_path adds an adapter.
    assert open_base(run, projection_path=tmp_path / "other.bin").projector_file == tmp_path / "other.bin"
    assert open_base(run, lora_path=tmp_path / "lora").adapter == tmp_path / "lora"


@pytest.mark.parametrize(
    ("pointer", "words"),
    [
        ('{"base_model": "/no/such/base", "projector": "mm_projector.bin"}', "which is not a folder here"),
        ('{"base_model": 3}', "needs base_model"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_a_bad_pointer_is_one_line_naming_the_file(tmp_path, pointer, words):
    (tmp_path / BASE_POINTER_FILE).write_text(pointer)
    with pytest.raises(UserError, match=words) as err:
        open_base(tmp_path)
    assert BASE_POINTER_FILE in str(err.value)


def _features(folder: Path, width: int) -> tuple[Path, Path]:
    feats = folder / f"feats{width}"
    feats.mkdir()
    records = []
    for i in range(2):
        save_features(feats / f"v{i}.pkl", np.zeros((6, width), dtype=np.float16))
        conv = [{"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]
        records.append({"id": f"v{i}", "video": f"v{i}.pkl", "conversations": conv})
    data = folder / f"train{width}.json"
    data.write_text(json.dumps(records))
    return data, feats


def test_data_check_checks_feature_widths_on_a_llava_1_5_folder(llava_hf, tmp_path, capsys):
    """``data check --model_name_or_path <LLaVA-1.5 folder>`` reads the width its projector takes from the base
    object (before, only a LLaVA-v1 config's mm_hidden_size was read: any width passed)."""
    width = open_base(llava_hf).feature_width
    for w, status in [(width, 0), (width + 3, 1)]:
        data, feats = _features(tmp_path, w)
        argv = ["check", "--data_path", str(data), "--video_folder", str(feats), "--num_workers", "1"]
        assert data_main([*argv, "--model_name_or_path", str(llava_hf), "--json"]) == status
        report = json.loads(capsys.readouterr().out)
        assert bool(report["problems"].get("wrong_shape")) == (status == 1), report["problems"]
