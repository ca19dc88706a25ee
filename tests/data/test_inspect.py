"""``data inspect`` against the training dataset's own output and a mask computed by hand from the answer."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
import sentencepiece

from tests.helpers.data import NUM_FRAMES, NUM_PATCHES, make_training_data
from video_chatgpt.constants import IGNORE_INDEX
from video_chatgpt.data.dataset import SupervisedVideoDataset
from video_chatgpt.data.inspect import GREEN, PLAIN_CLOSE, PLAIN_OPEN, RESET, main
from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_world, tiny_llava):
    return make_training_data(sample_world["instructions"], tiny_llava, tmp_path_factory.mktemp("inspect"))


def flags(data, model, index, *extra):
    return [
        "--data_path",
        str(data["data_path"]),
        "--video_folder",
        str(data["video_folder"]),
        "--model_name_or_path",
        str(model),
        "--index",
        str(index),
        *extra,
    ]


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def trainer_dataset(data, model, use_start_end, max_length=2048) -> tuple[SupervisedVideoDataset, object]:
    """The dataset exactly as train.py builds it (tokenizer + video tokens, SegmentEncoder, features' shape)."""
    tok = load_hf_tokenizer(model, model_max_length=max_length)
    video_ids, _ = add_video_tokens(tok, use_start_end)
    shape = (NUM_FRAMES + NUM_PATCHES, data["width"])
    ds = SupervisedVideoDataset(
        data["records"], data["video_folder"], SegmentEncoder(tok), video_ids, shape, max_length
    )
    return ds, tok


def hand_labels(input_ids: list[int], answer: str, sp) -> list[int]:
    """Only the answer's tokens and </s> carry a loss: they are the last ones, the answer encoded on its own."""
    answer_ids = sp.encode(answer) + [2]
    assert input_ids[-len(answer_ids) :] == answer_ids
    return [IGNORE_INDEX] * (len(input_ids) - len(answer_ids)) + answer_ids


@pytest.mark.parametrize("index,use_start_end", [(0, True), (5, True), (2, False)])
def test_json_is_the_datasets_own_output_and_the_hand_mask(capsys, data, tiny_llava, index, use_start_end):
    extra = ["--json"] + (["--mm_use_vid_start_end"] if use_start_end else [])
    got = run_json(capsys, flags(data, tiny_llava, index, *extra))

    ds, tok = trainer_dataset(data, tiny_llava, use_start_end)
    item = ds[index]
    assert got["input_ids"] == item["input_ids"].tolist()
    assert got["labels"] == item["labels"].tolist()
    assert got["feature_shape"] == list(item["video_spatio_temporal_features"].shape) == [356, data["width"]]
    assert got["feature_dtype"] == "float16"
    assert got["video_token_count"] == 356 == got["input_ids"].count(tok.convert_tokens_to_ids("<vid_patch>"))
    start, end = got["video_span"]
    assert end - start == 356 + (2 if use_start_end else 0)
    assert got["truncated"] is False and got["full_length"] == got["total_tokens"] == len(got["input_ids"])
    assert got["problems"] == []

    answer = data["records"][index]["conversations"][1]["value"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_llava / "tokenizer.model"))
    assert got["labels"] == hand_labels(got["input_ids"], answer, sp)
    supervised = [t for t, lab in zip(got["input_ids"], got["labels"]) if lab != IGNORE_INDEX]
    assert got["supervised_tokens"] == len(supervised)
    assert tok.decode(supervised) == answer + "</s>"


def _table_rows(text: str) -> dict[int, tuple[bool, str]]:
    """position -> (marked [+], the raw line) from the token table; a collapsed ``a-b`` row covers a..b."""
    rows = {}
    for line in text.split("tokens:\n", 1)[1].splitlines()[1:]:
        m = re.match(r"^(?:\x1b\[[0-9;]*m)?\s*(\d+)(?:-(\d+))?\s+\d+\s+\[([+ ])\]", line)
        assert m, f"not a token row: {line!r}"
        for pos in range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1):
            rows[pos] = (m.group(3) == "+", line)
    return rows


def test_plain_rendering_marks_exactly_the_supervised_tokens(capsys, data, tiny_llava):
    index = 1
    got = run_json(capsys, flags(data, tiny_llava, index, "--json", "--mm_use_vid_start_end"))
    assert main(flags(data, tiny_llava, index, "--mm_use_vid_start_end")) == 0  # capsys: not a terminal
    text = capsys.readouterr().out
    assert "\x1b[" not in text
    answer = data["records"][index]["conversations"][1]["value"]
    n = len(got["input_ids"])

    rows = _table_rows(text)
    assert sorted(rows) == list(range(n))
    assert {p for p, (marked, _) in rows.items() if marked} == {p for p, lab in enumerate(got["labels"]) if lab != -100}
    prompt = text.split("everything else is masked with -100):\n", 1)[1].split("\n\ntokens:", 1)[0]
    assert re.findall(re.escape(PLAIN_OPEN) + "(.*?)" + re.escape(PLAIN_CLOSE), prompt, re.S) == [" " + answer + "</s>"]
    assert prompt.startswith("<s> A chat between")
    assert "<vid_start><vid_patch>x356<vid_end>" in prompt
    assert f"{n} total: 356 video (358 with start/end), {sum(lab != -100 for lab in got['labels'])} supervised" in text
    assert "not truncated (model_max_length 512)" in text  # the default is training's (512)
    assert f"shape (356, {data['width']}) float16" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("how", ["tty", "always"])
def test_terminal_rendering_colours_exactly_the_supervised_tokens(capsys, monkeypatch, data, tiny_llava, how):
    index = 6
    got = run_json(capsys, flags(data, tiny_llava, index, "--json", "--mm_use_vid_start_end"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    if how == "tty":
        out = _Terminal()
        monkeypatch.setattr(sys, "stdout", out)
        assert main(flags(data, tiny_llava, index, "--mm_use_vid_start_end")) == 0
        monkeypatch.undo()
        text = out.getvalue()
    else:
        assert main(flags(data, tiny_llava, index, "--mm_use_vid_start_end", "--color", "always")) == 0
        text = capsys.readouterr().out
    answer = data["records"][index]["conversations"][1]["value"]

    rows = _table_rows(text)
    green = {p for p, (_, line) in rows.items() if line.startswith(GREEN)}
    assert green == {p for p, lab in enumerate(got["labels"]) if lab != -100}
    prompt = text.split("everything else is masked with -100):\n", 1)[1].split("\n\ntokens:", 1)[0]
    assert re.findall(re.escape(GREEN) + "(.*?)" + re.escape(RESET), prompt, re.S) == [" " + answer + "</s>"]
    assert PLAIN_OPEN not in prompt


def test_through_the_cli_and_truncation(capsys, data, tiny_llava):
    from video_chatgpt.cli import main as cli_main

    base = flags(data, tiny_llava, 3, "--mm_use_vid_start_end", "--json")
    full = run_json(capsys, base)
    n = full["total_tokens"]
    # cut the last 3 tokens: </s> and two answer tokens lose their loss with them, as in training
    assert cli_main(["data", "inspect", *base, "--model_max_length", str(n - 3)]) == 0
    cut = json.loads(capsys.readouterr().out)
    ds, _ = trainer_dataset(data, tiny_llava, True, max_length=n - 3)
    assert cut["input_ids"] == ds[3]["input_ids"].tolist() == full["input_ids"][: n - 3]
    assert cut["labels"] == ds[3]["labels"].tolist() == full["labels"][: n - 3]
    assert cut["truncated"] is True and cut["full_length"] == n
    assert main(flags(data, tiny_llava, 3, "--mm_use_vid_start_end", "--model_max_length", str(n - 3))) == 0
    assert f"TRUNCATED from {n} to model_max_length {n - 3}" in capsys.readouterr().out

    # a limit inside the video span: training could not place the features, so neither can inspect
    assert main(flags(data, tiny_llava, 3, "--mm_use_vid_start_end", "--model_max_length", "100")) == 1
    assert "cuts the video span" in capsys.readouterr().err


def test_bad_index_and_missing_features(capsys, tmp_path, data, tiny_llava):
    assert main(flags(data, tiny_llava, len(data["records"]))) == 2
    assert "out of range" in capsys.readouterr().err

    records = data["records"][:2] + [dict(data["records"][2], video="gone.pkl")]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    argv = [
        "--data_path",
        str(path),
        "--video_folder",
        str(data["video_folder"]),
        "--model_name_or_path",
        str(tiny_llava),
        "--index",
        "2",
        "--mm_use_vid_start_end",
    ]
    assert main([*argv, "--json"]) == 1  # training would fail on this record
    got = json.loads(capsys.readouterr().out)
    assert got["feature_dtype"] is None and "gone.pkl is missing" in got["problems"][0]
    assert got["video_token_count"] == 356  # rendered with the shape training uses (the first record's)
    assert main(argv) == 1
    assert "NOT USABLE" in capsys.readouterr().out
