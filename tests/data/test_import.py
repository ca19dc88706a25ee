"""``video-chatgpt data import``: golden files per format, refusals, malformed records, the write and the data check.

The golden inputs under ``tests/data/golden/`` are written by hand from each format's documentation; where each was
taken from is in ``tests/data/golden/README.md`` (LLaVA ``docs/Finetune_Custom_Data.md`` and LLaVA-Video-178K's
files; LLaMA-Factory ``data/README.md`` and ``data/mllm_video_demo.json``; Qwen2.5-VL ``qwen-vl-finetune`` and the
Qwen2-VL README's video messages).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from video_chatgpt import cli
from video_chatgpt.data.check import check_record, check_training_data
from video_chatgpt.data.convert import ConversionError
from video_chatgpt.data.dataset import load_records
from video_chatgpt.data.importers import import_file, import_records
from video_chatgpt.features.store import save_features

GOLDEN = Path(__file__).parent / "golden"

# input, --format, refused by reason (summary words), system prompts dropped
CASES = [
    ("llava.json", "llava", "3 refused (images only: 1; no video (text only): 1; several videos: 1)", 0),
    (
        "sharegpt_messages.json",
        "sharegpt",
        "4 refused (images only: 1; several videos: 1; a video given as frames: 1; audio: 1)",
        1,
    ),
    ("sharegpt_conversations.json", "sharegpt", "1 refused (tool-call turns: 1)", 1),
    ("qwen.jsonl", "qwen", "3 refused (images only: 2; several videos: 1)", 0),
    ("qwen_messages.json", "qwen", "2 refused (images only: 1; a video given as frames: 1)", 1),
]

GOOD = {  # one well-formed record per format, to put next to a bad one
    "llava": {"id": "a", "video": "v/a.mp4", "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]},
    "sharegpt": {"messages": [{"role": "user", "content": "<video>Q?"}, {"role": "assistant", "content": "A."}], "videos": ["v/a.mp4"]},
    "qwen": {"video": "v/a.mp4", "conversations": [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A."}]},
}  # fmt: skip


def llava(conversations=None, **fields) -> dict:
    """A LLaVA record of video ``v/b.mp4`` (``fields`` replace or add keys; a None value removes the key)."""
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    record = {"id": "b", "video": "v/b.mp4", "conversations": turns if conversations is None else conversations}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


def turns(*pairs) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


def run(capsys, *args) -> tuple[int, str, str]:
    """The command as the console runs it (through ``video_chatgpt.cli.main``): status, stdout, stderr."""
    status = cli.main(["data", "import", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def write(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(("name", "fmt", "refused", "system"), CASES, ids=[c[0] for c in CASES])
def test_golden_inputs_give_the_expected_training_json(tmp_path, capsys, name, fmt, refused, system):
    out_path = tmp_path / "train.json"
    status, out, err = run(capsys, "--format", fmt, "--input", GOLDEN / name, "--output_json", out_path)
    assert status == 0, err
    written = json.loads(out_path.read_text())
    expected = json.loads((GOLDEN / f"{name.rsplit('.', 1)[0]}.expected.json").read_text())
    assert written == expected
    assert [list(r) for r in written] == [["id", "video", "conversations"]] * len(written)  # the converter's key order
    text = (GOLDEN / name).read_text()
    total = len(json.loads(text)) if name.endswith(".json") else sum(bool(line.strip()) for line in text.split("\n"))
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"Imported {fmt}: {total} record(s) in, {len(expected)} written to {out_path}, {refused}")
    assert (f"{system} system prompt(s) dropped" in summary) == bool(system)
    # Each record passes the data check's record checks (structure, one <video> for the video, alternating turns).
    assert [check_record(i, r).problems for i, r in enumerate(written)] == [[]] * len(written)


def test_imported_data_passes_the_data_check_and_loads(tmp_path, capsys):
    """The llava golden file against a feature folder: .npy names kept, a video without features refused."""
    folder = tmp_path / "features"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("ytb_7nRmsEw7nsE.pkl", "8968804598.npy"):  # RW587 has no features
        save_features(folder / name, rng.standard_normal((12, 16)).astype(np.float16))
    out_path = tmp_path / "train.json"
    args = ["--format", "llava", "--input", GOLDEN / "llava.json", "--output_json", out_path]
    status, out, _ = run(capsys, *args, "--clip_feature_path", folder)
    assert status == 0
    assert "2 written" in out and "no feature file: 1" in out and "2 feature files in --clip_feature_path" in out
    records = load_records(out_path)  # the trainer's loader
    assert [r["video"] for r in records] == ["ytb_7nRmsEw7nsE.pkl", "8968804598.npy"]
    assert len(records[1]["conversations"]) == 4
    report = check_training_data(out_path, folder, deep=True, num_workers=1)
    assert not report.fatal and report.counts == {} and report.num_records == 2


# record at index 1 of a file, --format, the key the error names, words of its reason
MALFORMED = [
    ("llava", {"id": "b", "video": "v/b.mp4"}, "conversations", "missing (keys present: ['id', 'video'])"),
    ("llava", llava(conversations="Q? A."), "conversations", "is a JSON string, expected a list of turns"),
    ("llava", llava(turns(("human", "<image>\nQ?"), ("gpt", 3))), "conversations", "turn 1's 'value' is a JSON number"),
    ("llava", llava([{"from": "human"}]), "conversations", "turn 0 has no 'value'"),
    ("llava", llava(turns(("human", "<image>Q?"), ("bot", "A."))), "conversations", "turn 1's 'from' is 'bot'"),
    ("llava", llava(turns(("human", "Q?"), ("gpt", "A."))), "conversations", "no <video> or <image> placeholder"),
    ("llava", llava(turns(("human", "<image><video>Q?"), ("gpt", "A."))), "conversations", "2 <video> or <image>"),
    ("llava", llava(turns(("human", "Q?"), ("gpt", "<image>A."))), "conversations", "turn 1 (the assistant's)"),
    ("llava", llava(turns(("human", "<image>Q?"), ("human", "Q2?"))), "conversations", "turn 1 is a user turn where"),
    ("llava", llava(turns(("human", "<image>Q?"), ("gpt", "A."), ("human", "Q2?"))), "conversations", "ends with a user"),
    ("llava", llava(turns(("human", "<image>Q?"), ("system", "S."))), "conversations", "turn 1 is a system turn"),
    ("llava", llava(turns(("system", "S."))), "conversations", "has no user or assistant turn"),
    ("llava", llava(video=7), "video", "is a JSON number, expected a path"),
    ("llava", llava(video=""), "video", "item 0 is \"\", expected a non-empty path"),
    ("llava", llava(video="clips/"), "video", "'clips/' names no video file"),
    ("llava", llava(id=["b"]), "id", "is a JSON array, expected a string or a number"),
    ("llava", ["not", "a", "record"], None, "is a JSON array, expected an object"),
    ("sharegpt", {"messages": [{"role": "user", "content": "<image><video>Q?"}, {"role": "assistant", "content": "A."}], "videos": ["v/b.mp4"]}, "messages", "<image> tag but the record has no image"),
    ("sharegpt", {"messages": [{"role": "user", "content": "<video>Q?"}, {"role": "assistant", "content": "A."}], "videos": "v/b.mp4", "system": 1}, "system", "is a JSON number"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "<video>Q?"}, {"from": "gpt", "value": "A."}], "videos": {"a": 1}}, "videos", "is a JSON object"),
    ("qwen", {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]}, "messages", "turn 0's content item 0"),
    ("qwen", {"messages": [{"role": "user", "content": 5}]}, "messages", "turn 0's 'content' is a JSON number"),
    ("qwen", {"messages": [{"role": "user", "content": [{"type": "video", "video": 5}]}]}, "messages", "item 0's 'video' is 5"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "bad", "key", "reason"), MALFORMED)
def test_a_malformed_record_is_an_error_naming_file_index_and_key(tmp_path, fmt, bad, key, reason):
    source = write(tmp_path / "in.json", [GOOD[fmt], bad])
    out_path = tmp_path / "train.json"
    with pytest.raises(ConversionError) as caught:
        import_file(fmt, source, out_path)
    where = f"{source}: item 1" + ("" if key is None else f", key {key!r}")
    assert str(caught.value).startswith(where + ": ") and reason in str(caught.value), str(caught.value)
    assert (caught.value.index, caught.value.key) == (1, key)
    assert not out_path.exists()


def test_the_command_prints_one_line_and_keeps_an_existing_output(tmp_path, capsys):
    source = write(tmp_path / "in.json", [GOOD["llava"], llava(turns(("human", "Q?"), ("gpt", "A.")))])
    out_path = write(tmp_path / "train.json", ["previous"])
    status, out, err = run(capsys, "--format", "llava", "--input", source, "--output_json", out_path)
    assert status == 1 and out == ""
    assert err.splitlines()[0] == (
        f"video-chatgpt data: error: {source}: item 1, key 'conversations': no <video> or <image> placeholder for the "
        "video; put one in the first user turn; nothing was written"
    )
    assert json.loads(out_path.read_text()) == ["previous"]  # the atomic write never started


def test_skip_invalid_counts_malformed_records_and_writes_the_rest(tmp_path, capsys):
    bad = llava(turns(("human", "Q?"), ("gpt", "A.")))
    source = write(tmp_path / "in.json", [bad, GOOD["llava"], llava(video=None, image="x.jpg"), bad])
    out_path = tmp_path / "train.json"
    status, out, _ = run(capsys, "--format", "llava", "--input", source, "--output_json", out_path, "--skip_invalid")
    assert status == 0 and [r["id"] for r in json.loads(out_path.read_text())] == ["a"]
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"Skipped invalid {source}: item 0, key 'conversations': no <video>")
    assert lines[1].startswith(f"Skipped invalid {source}: item 3, key 'conversations': no <video>")
    assert lines[2] == (
        f"Imported llava: 4 record(s) in, 1 written to {out_path}, 3 refused (images only: 1; malformed "
        "(--skip_invalid): 2)"
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (llava(video=["v/b.mp4", "v/c.mp4"]), "several_videos"),
        (llava(video=None, image="x.jpg"), "images_only"),
        (llava(video=None, image=["x.jpg", "y.jpg"]), "images_only"),
        (llava(image="x.jpg"), "images_and_video"),
        (llava(video=None), "no_video"),
        (llava(video=[["f0.jpg", "f1.jpg"]]), "video_frames"),
    ],
)
def test_records_the_model_cannot_read_are_refused_and_counted(record, reason):
    records, stats = import_records([GOOD["llava"], record, record], "llava")
    assert [r["id"] for r in records] == ["a"]
    assert dict(stats.refused) == {reason: 2} and (stats.num_records, stats.num_written) == (3, 1)


def test_two_videos_with_one_feature_file_name_are_refused_one_video_spelled_twice_is_not(tmp_path, capsys):
    items = [
        GOOD["llava"],  # v/a.mp4 -> a.pkl
        llava(id="same", video="./v//a.mp4"),  # the same file: kept
        llava(id="other", video="w/a.mp4"),  # another video named a: refused
        llava(id="other_ext", video="v/a.mkv"),  # a.mkv -> a.pkl as well (the extractor's video_id_of): refused
    ]
    records, stats = import_records(items, "llava")
    assert [r["id"] for r in records] == ["a", "same"] and [r["video"] for r in records] == ["a.pkl", "a.pkl"]
    assert dict(stats.refused) == {"same_feature_name": 2}
    assert stats.details[0] == "Refused item 2: its video 'w/a.mp4' and 'v/a.mp4' both map to a.pkl; rename one of them"


def test_jsonl_errors_name_the_line(tmp_path):
    good = json.dumps(GOOD["qwen"])
    source = tmp_path / "in.jsonl"
    source.write_text(f"{good}\n\n{good}\n{{broken\n")
    with pytest.raises(ConversionError, match=r"in\.jsonl: line 4: not valid JSON \(Expecting property name"):
        import_file("qwen", source, tmp_path / "out.json")
    bad = dict(GOOD["qwen"], video=3)
    source.write_text(f"{good}\n\n{json.dumps(bad)}\n")
    with pytest.raises(ConversionError, match=r"in\.jsonl:3: item 1, key 'video': is a JSON number"):
        import_file("qwen", source, tmp_path / "out.json")


def test_a_json_file_of_lines_is_told_to_be_named_jsonl(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(GOOD["qwen"]) + "\n" + json.dumps(GOOD["qwen"]) + "\n")
    with pytest.raises(ConversionError, match="Extra data .* must be named .jsonl"):
        import_file("qwen", source, tmp_path / "out.json")
    source.write_text(json.dumps(GOOD["qwen"]))
    with pytest.raises(ConversionError, match="the top level is a JSON object, expected a list of records"):
        import_file("qwen", source, tmp_path / "out.json")


def test_the_output_may_not_be_the_input(tmp_path):
    source = write(tmp_path / "in.json", [GOOD["llava"]])
    before = source.read_bytes()
    with pytest.raises(ConversionError, match="is the input --input"):
        import_file("llava", source, tmp_path / "." / "in.json")
    assert source.read_bytes() == before


def test_nothing_importable_is_an_error_that_says_why(tmp_path):
    source = write(tmp_path / "in.json", [llava(video=None, image="x.jpg")] * 3)
    with pytest.raises(ConversionError, match=r"none of the 3 records can be imported as --format llava \(3 refused "
                       r"\(images only: 3\)\)"):  # fmt: skip
        import_file("llava", source, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_bad_flags_exit_2(tmp_path, capsys):
    status, _, err = run(capsys, "--format", "webvid", "--input", "x.json", "--output_json", tmp_path / "o.json")
    assert status == 2 and "invalid choice: 'webvid'" in err
    assert cli.main(["data", "import", "--help"]) == 0
    assert "--clip_feature_path" in capsys.readouterr().out
