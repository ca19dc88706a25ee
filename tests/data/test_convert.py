"""The converter: the original's output record for record (and byte for byte), the filter, bad input, the write."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from video_chatgpt import cli
from video_chatgpt.data import convert
from video_chatgpt.data.convert import ConversionError, convert_records, main
from video_chatgpt.errors import run_main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "convert_instruction_json_to_training_format.py"

ITEMS = [
    {"video_id": "v_aaa", "q": "What happens?", "a": "A man runs."},
    {"video_id": "v_bbb", "q": "Who is there?", "a": "A dog.", "extra": "ignored"},
    {"video_id": "v_aaa", "q": "Where is it?", "a": "In a park."},
    {"video_id": "v_ccc", "q": "Describe it.", "a": "It is sunny."},
    {"video_id": "v_ddd", "q": "Colour?", "a": "Red."},
]


def original_output(items, keep=lambda vid: True) -> str:
    """The training JSON as spec section 2 describes the original: enumerate the unfiltered list, json.dump."""
    out = []
    for i, item in enumerate(items):
        if not keep(item["video_id"]):
            continue
        q = item["q"] + "\n<video>" if i % 2 == 0 else "<video>\n" + item["q"]
        out.append(
            {
                "id": item["video_id"],
                "video": f"{item['video_id']}.pkl",
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": item["a"]}],
            }
        )
    return json.dumps(out)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def run(*args) -> int:
    """The command as the console command and the script run it: under the one error path."""
    return run_main(main, [str(a) for a in args], "convert")


def test_records_follow_the_parity_rule_and_keep_order():
    records, stats = convert_records(ITEMS, None)
    assert [r["id"] for r in records] == [it["video_id"] for it in ITEMS]
    assert records[0] == {
        "id": "v_aaa",
        "video": "v_aaa.pkl",
        "conversations": [
            {"from": "human", "value": "What happens?\n<video>"},
            {"from": "gpt", "value": "A man runs."},
        ],
    }
    assert records[1]["conversations"][0]["value"] == "<video>\nWho is there?"
    assert [list(r) for r in records] == [["id", "video", "conversations"]] * len(ITEMS)  # key order shows in JSON
    assert (stats.num_items, stats.num_retained, stats.filtered) == (5, 5, False)


def test_output_file_is_byte_identical_to_the_original(tmp_path, capsys):
    items = ITEMS + [{"video_id": "v_eee", "q": "Qué pasa? 视频里 🎬", "a": "e\u0301 \u00e9 \u2603"}]
    src = write_json(tmp_path / "in.json", items)
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "out.json") == 0
    assert (tmp_path / "out.json").read_text() == original_output(items)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "Total annotations retained: 6"


def test_unicode_text_round_trips_unchanged(tmp_path):
    texts = [
        "视频里发生了什么？",
        "🎬🐕 emoji",
        "e\u0301 combining",
        'tab\tand "quotes" \\ back',
        "\ud800 lone surrogate",
    ]
    items = [{"video_id": f"v_{k}", "q": t, "a": t[::-1]} for k, t in enumerate(texts)]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "out.json") == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["conversations"][1]["value"] for r in out] == [t[::-1] for t in texts]
    assert [r["conversations"][0]["value"].replace("<video>", "").strip("\n") for r in out] == texts
    (tmp_path / "out.json").read_bytes().decode("ascii")  # escaped as the original's json.dump default did


def make_feature_folder(folder: Path, names) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")  # the filter only looks at names
    return folder


def test_filter_keeps_parity_of_the_unfiltered_index(tmp_path):
    feats = make_feature_folder(tmp_path / "f", ["v_bbb.pkl", "v_ccc.pkl", "v_ddd.pkl"])
    src = write_json(tmp_path / "in.json", ITEMS)
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "out.json", "--clip_feature_path", feats) == 0
    text = (tmp_path / "out.json").read_text()
    assert text == original_output(ITEMS, keep=lambda vid: vid != "v_aaa")
    humans = [r["conversations"][0]["value"] for r in json.loads(text)]
    # input indices 1, 3, 4 survive: odd, odd, even -- not the 0, 1, 2 of the filtered list
    assert humans == ["<video>\nWho is there?", "<video>\nDescribe it.", "Colour?\n<video>"]


def test_filter_names_the_file_present_and_ignores_non_features(tmp_path):
    feats = make_feature_folder(
        tmp_path / "f",
        ["v_aaa.npy", "v_bbb.pkl", "v_bbb.npy", "v_ccc.mp4", ".v_ddd.pkl.tmp", "v_ddd.1.pkl", "notes.txt"],
    )
    from video_chatgpt.features.store import index_feature_folder

    records, stats = convert_records(ITEMS, index_feature_folder(feats))
    assert [(r["id"], r["video"]) for r in records] == [
        ("v_aaa", "v_aaa.npy"),  # the .npy actually there
        ("v_bbb", "v_bbb.pkl"),  # .pkl wins over .npy
        ("v_aaa", "v_aaa.npy"),
        ("v_ddd", "v_ddd.1.pkl"),  # id = text before the first dot, as the original; the real name is kept
    ]
    # v_ccc has only a video, not a feature; a leftover temporary file is not a feature either
    assert (stats.num_dropped_items, stats.dropped_videos) == (1, ["v_ccc"])


def test_filter_reports_dropped_items_and_distinct_videos(tmp_path, capsys):
    items = [{"video_id": f"v_{k % 7}", "q": "q", "a": "a"} for k in range(70)]
    feats = make_feature_folder(tmp_path / "f", [f"v_{k}.pkl" for k in (0, 1, 2, 3)])
    src = write_json(tmp_path / "in.json", items)
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "o.json", "--clip_feature_path", feats) == 0
    out = capsys.readouterr().out
    assert "4 feature files; dropped 30 item(s) of 70 for 3 distinct video(s) without a feature file" in out
    assert "(v_4, v_5, v_6)" in out
    assert out.strip().splitlines()[-1] == "Total annotations retained: 40"


def test_filter_is_fast_on_real_sizes():
    items = [
        {"video_id": f"v_{k % 13_500:011d}", "q": "What is in the video?", "a": "A thing."} for k in range(100_000)
    ]
    index = {f"v_{k:011d}": f"v_{k:011d}.pkl" for k in range(13_000)}
    start = time.process_time()  # CPU time: other jobs on a shared machine do not count
    records, stats = convert_records(items, index)
    elapsed = time.process_time() - start
    assert stats.num_dropped_videos == 500 and stats.num_retained + stats.num_dropped_items == 100_000
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_filter_that_keeps_nothing_is_an_error(tmp_path, capsys):
    feats = make_feature_folder(tmp_path / "f", ["x_1.pkl"])
    src = write_json(tmp_path / "in.json", ITEMS)
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "o.json", "--clip_feature_path", feats) == 1
    assert "none of the 5 items has a feature file there" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_missing_feature_folder_is_an_error(tmp_path, capsys):
    src = write_json(tmp_path / "in.json", ITEMS)
    rc = run(
        "--input_json_file", src, "--output_json_file", tmp_path / "o.json", "--clip_feature_path", tmp_path / "no"
    )
    assert rc == 1 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


BAD_INPUTS = {
    "not_json": ('[{"video_id": "v_a", "q": "q", "a": "a"},', ["not valid JSON", "line 1"]),
    "not_a_list": ('{"video_id": "v_a", "q": "q", "a": "a"}', ["top level is a JSON object, expected a list"]),
    "item_not_object": ('[{"video_id": "v_a", "q": "q", "a": "a"}, "v_b"]', ["item 1:", "JSON string"]),
    "missing_video_id": (
        '[{"video_id": "v_a", "q": "q", "a": "a"}, {"q": "q", "a": "a"}]',
        ["item 1", "'video_id'", "missing"],
    ),
    "missing_q": ('[{"video_id": "v_a", "a": "a"}]', ["item 0", "key 'q'", "missing"]),
    "missing_a": ('[{"video_id": "v_a", "q": "q"}]', ["item 0", "key 'a'", "missing"]),
    "int_video_id": (
        '[{"video_id": 17, "q": "q", "a": "a"}]',
        ["item 0", "'video_id'", "JSON number, expected a string"],
    ),
    "null_answer": ('[{"video_id": "v_a", "q": "q", "a": null}]', ["item 0", "key 'a'", "JSON null"]),
    "list_question": ('[{"video_id": "v_a", "q": ["q"], "a": "a"}]', ["item 0", "key 'q'", "JSON array"]),
    "empty_video_id": ('[{"video_id": "", "q": "q", "a": "a"}]', ["item 0", "'video_id'", "empty"]),
    "not_utf8": (b'[{"video_id": "v_\xff", "q": "q", "a": "a"}]', ["not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_names_file_item_key_and_writes_nothing(tmp_path, capsys, case, existing):
    content, expected = BAD_INPUTS[case]
    src = tmp_path / "VideoInstruct.json"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "train.json"
    if existing:
        out.write_bytes(b'[{"old": "training json"}]')
    assert run("--input_json_file", src, "--output_json_file", out) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "nothing was written" in err
    for fragment in expected:
        assert fragment in err
    if existing:
        assert out.read_bytes() == b'[{"old": "training json"}]'
    assert sorted(os.listdir(tmp_path)) == sorted(["VideoInstruct.json"] + (["train.json"] if existing else []))


def test_missing_input_file_is_an_error(tmp_path, capsys):
    assert run("--input_json_file", tmp_path / "nope.json", "--output_json_file", tmp_path / "o.json") == 1
    assert "nope.json" in capsys.readouterr().err


def test_skip_invalid_reports_each_index_and_keeps_parity(tmp_path, capsys):
    items = [ITEMS[0], {"video_id": 3, "q": "q", "a": "a"}, "junk", ITEMS[1], {"video_id": "v_x", "q": "q"}]
    src = write_json(tmp_path / "in.json", items)
    assert run("--input_json_file", src, "--output_json_file", tmp_path / "o.json", "--skip_invalid") == 0
    out = capsys.readouterr().out
    assert "Skipped invalid item 1, key 'video_id'" in out and "Skipped invalid item 2:" in out
    assert "Skipped invalid item 4, key 'a': missing" in out and "Skipped 3 invalid item(s) of 5" in out
    records = json.loads((tmp_path / "o.json").read_text())
    assert [r["conversations"][0]["value"] for r in records] == ["What happens?\n<video>", "<video>\nWho is there?"]
    _, stats = convert_records(items, None, skip_invalid=True)
    assert [i for i, _ in stats.skipped] == [1, 2, 4]
    with pytest.raises(ConversionError) as err:
        convert_records(items, None)
    assert (err.value.index, err.value.key) == (1, "video_id")


def test_failed_rename_leaves_old_output_and_no_temporary_file(tmp_path, monkeypatch, capsys):
    src = write_json(tmp_path / "in.json", ITEMS)
    out = tmp_path / "out" / "train.json"
    out.parent.mkdir()
    out.write_bytes(b"OLD")

    def failing_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert run("--input_json_file", src, "--output_json_file", out) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and f"nothing was written to {out}" in err
    assert out.read_bytes() == b"OLD" and os.listdir(out.parent) == ["train.json"]


def test_interrupt_mid_write_leaves_old_output_and_no_temporary_file(tmp_path, monkeypatch):
    src = write_json(tmp_path / "in.json", ITEMS)
    out = tmp_path / "train.json"
    out.write_bytes(b"OLD")
    real_fsync = os.fsync

    def interrupted_fsync(fd):  # the data is half-way to disk when the user presses Ctrl-C
        real_fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_file(src, out)
    assert out.read_bytes() == b"OLD" and sorted(os.listdir(tmp_path)) == ["in.json", "train.json"]


def test_new_output_has_the_usual_permissions(tmp_path):
    src = write_json(tmp_path / "in.json", ITEMS)
    old = os.umask(0o022)
    try:
        convert.convert_file(src, tmp_path / "new" / "train.json")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "train.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_script_entry_runs_from_the_repo_root(tmp_path):
    src = write_json(tmp_path / "in.json", ITEMS)
    out = tmp_path / "video_chatgpt_training.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.relative_to(REPO)), "--input_json_file", str(src), "--output_json_file", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Total annotations retained: 5"
    assert out.read_text() == original_output(ITEMS)
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--input_json_file", str(tmp_path / "none.json"), "--output_json_file", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "none.json" in bad.stderr


def test_flags_are_the_documented_ones(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--input_json_file", "--output_json_file", "--clip_feature_path", "--skip_invalid"):
        assert flag in text
    assert main(["--input_json_file", "x.json"]) == 2  # --output_json_file is required


def test_video_chatgpt_convert_runs_the_same_code(tmp_path, sample_world):
    out = tmp_path / "train.json"
    assert (
        cli.main(["convert", "--input_json_file", str(sample_world["instructions"]), "--output_json_file", str(out)])
        == 0
    )
    items = json.loads(Path(sample_world["instructions"]).read_text())
    assert out.read_text() == original_output(items)


@pytest.mark.parametrize("how", ["same path", "other spelling", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused_and_the_input_survives(tmp_path, capsys, how):
    """The atomic rename used to replace the VideoInstruct JSON by the training JSON (the input was lost)."""
    src = write_json(tmp_path / "in.json", ITEMS)
    before = src.read_bytes()
    out = {
        "same path": src,
        "other spelling": tmp_path / "sub" / ".." / "in.json",
        "symlink": tmp_path / "link.json",
        "hard link": tmp_path / "hard.json",
    }[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    assert run("--input_json_file", src, "--output_json_file", out) == 1
    err = capsys.readouterr().err
    assert "is the input --input_json_file" in err and "nothing was written" in err and "Traceback" not in err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"in.json", "sub", out.name})
