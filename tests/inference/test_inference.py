"""Inference: chat on a trained tiny model (the session's ``trained_run``; greedy, deterministic), the released
projector format, end-of-answer trimming, and batch prediction with a missing video."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch

from tests.helpers import QUESTION
from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_BIAS_KEY, PROJECTOR_WEIGHT_KEY
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import save_features


@pytest.fixture(scope="module")
def video(sample_world):
    return sorted(sample_world["videos_test"].glob("*.mp4"))[0]


def chat(*argv) -> str:
    from video_chatgpt.inference.chat import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_chat_is_deterministic_and_matches_precomputed_features(trained_run, video, tiny_clip, tmp_path):
    common = [
        "--model-name",
        str(trained_run),
        "--vision_tower",
        str(tiny_clip),
        "--question",
        QUESTION,
        "--temperature",
        "0",
        "--max_new_tokens",
        "12",
    ]
    first = chat(*common, "--video_path", str(video))
    assert first == chat(*common, "--video_path", str(video))
    from video_chatgpt.features.encoder import VideoFeatureExtractor

    features = VideoFeatureExtractor(tiny_clip, num_frames=100).features_from_video(video)
    save_features(tmp_path / f"{video.stem}.pkl", features)
    assert chat(*common, "--features_path", str(tmp_path / f"{video.stem}.pkl")) == first


def test_chat_reads_questions_from_stdin(trained_run, video, tiny_clip, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\nDescribe the video.\n"))
    out = chat(
        "--model-name",
        str(trained_run),
        "--vision_tower",
        str(tiny_clip),
        "--video_path",
        str(video),
        "--temperature",
        "0",
        "--max_new_tokens",
        "6",
    )
    assert len(out.splitlines()) == 2


def test_sampling_with_a_seed_repeats(trained_run, video, tiny_clip):
    common = [
        "--model-name",
        str(trained_run),
        "--vision_tower",
        str(tiny_clip),
        "--video_path",
        str(video),
        "--question",
        QUESTION,
        "--temperature",
        "0.9",
        "--max_new_tokens",
        "10",
        "--seed",
        "3",
    ]
    assert chat(*common) == chat(*common)


def test_released_projector_format_loads(language_llava, tmp_path):
    """A file laid out like the released video_chatgpt-7B.bin: three fp32 tensors, embed_tokens of 32006 rows."""
    from video_chatgpt.inference.engine import load_engine

    cfg = json.loads((language_llava / "config.json").read_text())
    h, c = cfg["hidden_size"], cfg["mm_hidden_size"]
    torch.manual_seed(0)
    released = {
        PROJECTOR_WEIGHT_KEY: torch.randn(h, c),
        PROJECTOR_BIAS_KEY: torch.randn(h),
        EMBED_TOKENS_KEY: torch.randn(32006, h),
    }
    torch.save(released, tmp_path / "video_chatgpt-7B.bin")
    engine = load_engine(language_llava, tmp_path / "video_chatgpt-7B.bin", device="cpu")
    model = engine.model
    assert torch.equal(model.model.mm_projector.weight, released[PROJECTOR_WEIGHT_KEY])
    assert torch.equal(model.get_input_embeddings().weight, released[EMBED_TOKENS_KEY])
    assert (engine.video_ids.patch, engine.video_ids.start, engine.video_ids.end) == (32003, 32004, 32005)
    bad = dict(released, **{EMBED_TOKENS_KEY: torch.randn(32010, h)})
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(UserError, match=r"embed_tokens.weight has 32010 rows; expected the model's 32006"):
        load_engine(language_llava, tmp_path / "bad.bin", device="cpu")


def test_answer_is_cut_at_eos_without_eating_letters(language_llava, monkeypatch):
    """The original's rstrip("</s>") turned "...dogs" into "...dog"; ours stops at the EOS token."""
    from video_chatgpt.inference.engine import load_engine

    engine = load_engine(language_llava, None, device="cpu")
    ids = engine.encoder.encode("Two dogs") + [engine.tokenizer.eos_token_id] + engine.encoder.encode("junk")

    def generate(*args, streamer, **kwargs):  # as generate streams: the (empty) prompt, then token by token
        streamer.put(torch.zeros(1, 0, dtype=torch.long))
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()

    monkeypatch.setattr(engine.model, "generate_with_video", generate)
    features = torch.zeros(356, engine.model.config.mm_hidden_size, dtype=torch.float16).numpy()
    assert engine.answer("How many?", features, temperature=0) == "Two dogs"


def test_batch_prediction_missing_video_resume_and_keys(trained_run, sample_world, tiny_clip, tmp_path):
    from video_chatgpt.inference.predict import main

    videos = tmp_path / "videos"
    shutil.copytree(sample_world["videos_test"], videos)
    names = sorted(p.stem for p in videos.glob("*.mp4"))[:2]
    gt = [
        {"video_name": names[0], "Q": QUESTION, "A": "red"},
        {"video_name": "v_not_there", "Q": QUESTION, "A": "x"},
        {"video_name": names[1], "Q": QUESTION, "A": "blue"},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    argv = [
        "--task",
        "general",
        "--gt_file",
        str(tmp_path / "gt.json"),
        "--video_dir",
        str(videos),
        "--output_dir",
        str(tmp_path / "out"),
        "--output_name",
        "correctness",
        "--model-name",
        str(trained_run),
        "--vision_tower",
        str(tiny_clip),
        "--temperature",
        "0",
        "--max_new_tokens",
        "6",
    ]
    assert main(argv) == 1  # a sample had no video
    preds = json.loads((tmp_path / "out" / "correctness.json").read_text())
    assert [p["video_name"] for p in preds] == [names[0], names[1]]  # never another sample's video
    assert all(set(p) >= {"video_name", "Q", "A", "pred"} for p in preds)
    errors = json.loads((tmp_path / "out" / "correctness.errors.json").read_text())
    assert errors[0]["video_name"] == "v_not_there" and errors[0]["tried"][0].endswith("v_not_there.mp4")
    # Resume: the two predictions are kept, only the missing one is tried again (and now found).
    shutil.copy(videos / f"{names[0]}.mp4", videos / "v_not_there.mp4")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    assert "2 already predicted" in out.getvalue()
    preds2 = json.loads((tmp_path / "out" / "correctness.json").read_text())
    assert [p["video_name"] for p in preds2] == [names[0], "v_not_there", names[1]]
    assert preds2[0]["pred"] == preds[0]["pred"]
    assert not (tmp_path / "out" / "correctness.errors.json").exists()


def test_activitynet_qa_records_have_the_evaluators_keys(trained_run, sample_world, tiny_clip, tmp_path):
    from video_chatgpt.inference.predict import main

    name = sorted(p.stem for p in sample_world["videos_test"].glob("*.mp4"))[0]
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": name, "question": QUESTION, "question_id": "q7"}]))
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "red", "question_id": "q7"}]))
    assert (
        main(
            [
                "--task",
                "activitynet_qa",
                "--gt_file_question",
                str(tmp_path / "q.json"),
                "--gt_file_answers",
                str(tmp_path / "a.json"),
                "--video_dir",
                str(sample_world["videos_test"]),
                "--output_dir",
                str(tmp_path),
                "--output_name",
                "anqa",
                "--model-name",
                str(trained_run),
                "--vision_tower",
                str(tiny_clip),
                "--temperature",
                "0",
                "--max_new_tokens",
                "4",
            ]
        )
        == 0
    )
    (record,) = json.loads((tmp_path / "anqa.json").read_text())
    assert record["video_name"] == name and record["Q"] == QUESTION and record["A"] == "red" and "pred" in record


def test_chat_loads_a_projector_saved_the_way_the_original_trainer_saves_it(language_llava, tmp_path):
    """The original's ``_save``: the fp32 model's state dict filtered to keys holding ``mm_projector``,
    ``embed_tokens`` or ``embed_in``, ``torch.save``d as ``mm_projector.bin`` (spec 4.8)."""
    from video_chatgpt.bases import read_config
    from video_chatgpt.inference.engine import load_engine
    from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM, video_config

    torch.manual_seed(1)
    original = VideoChatGPTForCausalLM(video_config(read_config(language_llava))).float()
    original.resize_token_embeddings(32006, mean_resizing=False)  # their tokenizer: + <vid_patch>/<vid_start>/<vid_end>
    saved = {
        k: v.detach().clone()
        for k, v in original.state_dict().items()
        if any(w in k for w in ("mm_projector", "embed_tokens", "embed_in"))
    }
    assert set(saved) == {PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY, EMBED_TOKENS_KEY}
    assert all(t.dtype == torch.float32 for t in saved.values())
    (tmp_path / "mm_projector").mkdir()
    torch.save(saved, tmp_path / "mm_projector" / "checkpoint-3000.bin")  # where their intermediate saves go
    engine = load_engine(language_llava, tmp_path / "mm_projector" / "checkpoint-3000.bin", device="cpu")
    for key, param in (
        (PROJECTOR_WEIGHT_KEY, engine.model.model.mm_projector.weight),
        (PROJECTOR_BIAS_KEY, engine.model.model.mm_projector.bias),
        (EMBED_TOKENS_KEY, engine.model.get_input_embeddings().weight),
    ):
        assert torch.equal(param.float(), saved[key]), key


def test_base_folder_and_projector_carry_the_keys_the_originals_loader_expects(trained_run, language_llava):
    """The original builds a LLaMA causal LM + ``model.mm_projector`` from the base folder, then
    ``load_state_dict(strict=False)`` of mm_projector.bin: no key of ours may be missing or unexpected there."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from video_chatgpt.weights.checkpoint import find_checkpoint, read_tensor_infos

    cfg = json.loads((language_llava / "config.json").read_text())
    llama = LlamaConfig(**{k: v for k, v in cfg.items() if k in LlamaConfig().to_dict() and k != "architectures"})
    with torch.device("meta"):
        expected = set(LlamaForCausalLM(llama).state_dict()) | {PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY}
    base_keys = set(read_tensor_infos(find_checkpoint(language_llava)))
    assert base_keys - expected == set() and expected - base_keys == set()
    art = torch.load(trained_run / "mm_projector.bin", weights_only=True)
    assert set(art) == {PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY, EMBED_TOKENS_KEY} and set(art) <= expected
    assert all(t.dtype == torch.float32 for t in art.values())
    assert tuple(art[EMBED_TOKENS_KEY].shape) == (32006, cfg["hidden_size"])  # their resize_token_embeddings(32006)
    assert tuple(art[PROJECTOR_WEIGHT_KEY].shape) == (cfg["hidden_size"], cfg["mm_hidden_size"])
