"""The data check: missing/unreadable/wrong feature files, bad records, token lengths, and the command's exit codes."""

import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.forged import FORGED, run_bounded
from video_chatgpt import cli
from video_chatgpt.bases import open_base
from video_chatgpt.data.check import DataReport, check_training_data, read_feature_header
from video_chatgpt.data.cli import main as data_main
from video_chatgpt.data.conversation import render_sample
from video_chatgpt.data.convert import convert_records
from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import FeatureFileError, load_features, save_features

ROWS, WIDTH = 12, 16  # small features; the check takes the shape from the files


def features(seed: int = 0, shape=(ROWS, WIDTH), dtype=np.float16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def make_data(tmp_path: Path, num_videos: int = 6, per_video: int = 3, fmt: str = "pkl") -> tuple[Path, Path, list]:
    """A training JSON (through the converter) and a feature folder with one good file per video."""
    items = [
        {"video_id": f"v_{k % num_videos:03d}", "q": f"What happens in part {k}?", "a": f"Part {k} shows a dog."}
        for k in range(num_videos * per_video)
    ]
    folder = tmp_path / "features"
    folder.mkdir()
    for v in range(num_videos):
        save_features(folder / f"v_{v:03d}.{fmt}", features(v))
    from video_chatgpt.features.store import index_feature_folder

    records, _ = convert_records(items, index_feature_folder(folder))
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    return data, folder, records


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_clean_data_passes(tmp_path):
    data, folder, records = make_data(tmp_path)
    report = check_training_data(data, folder)
    assert not report.fatal and report.counts == {}
    assert (report.num_records, report.num_videos, report.num_feature_files) == (18, 6, 6)
    assert report.feature_shape == (ROWS, WIDTH) and report.feature_dtype == "float16"
    assert report.num_video_tokens == ROWS and report.num_headers_checked == 6
    assert "Result: OK" in report.format()


def test_npy_features_pass(tmp_path):
    data, folder, _ = make_data(tmp_path, fmt="npy")
    report = check_training_data(data, folder, deep=True)
    assert not report.fatal and report.num_files_loaded == 6 and report.feature_shape == (ROWS, WIDTH)


def test_missing_feature_files_are_listed_and_fatal(tmp_path, capsys):
    data, folder, records = make_data(tmp_path, num_videos=6, per_video=4)
    for v in (1, 4):
        (folder / f"v_{v:03d}.pkl").unlink()
    report = check_training_data(data, folder)
    missing = report.problems["missing_feature"]
    assert report.fatal and len(missing) == 8
    assert [p.index for p in missing] == [i for i, r in enumerate(records) if r["video"] in ("v_001.pkl", "v_004.pkl")]
    text = report.format(max_listed=3)
    assert "FATAL missing_feature: 8 records whose feature file is missing (2 distinct files)" in text
    assert f"record {missing[0].index}: v_001.pkl is not in the video folder" in text
    assert "... and 5 more" in text and "--clip_feature_path" in text
    assert data_main(["check", "--data_path", str(data), "--video_folder", str(folder)]) == 1
    assert "training would fail (missing_feature)" in capsys.readouterr().out


def test_missing_video_folder_is_fatal(tmp_path):
    data, _, _ = make_data(tmp_path)
    report = check_training_data(data, tmp_path / "nowhere")
    assert report.fatal and report.counts == {"missing_feature": 1}


def test_npy_next_to_pkl_and_subfolders_are_found(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=1)
    save_features(folder / "v_000.npy", features(0))
    (folder / "sub").mkdir()
    save_features(folder / "sub" / "v_009.pkl", features(9))
    records += [dict(records[0], video="v_000.npy"), dict(records[0], video="sub/v_009.pkl")]
    report = check_training_data(write_records(data, records), folder)
    assert "missing_feature" not in report.counts and report.num_videos == 4


class Evil:
    """A pickle that would run a shell command when loaded with plain pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_feature_files(tmp_path: Path) -> dict[str, bytes]:
    good = pickle.dumps(features(1))
    npy = io.BytesIO()
    np.save(npy, features(2))
    return {
        "garbage.pkl": b"this is not a pickle" * 10,
        "truncated.pkl": good[:-20],
        "malicious.pkl": pickle.dumps(Evil(tmp_path / "pwned")),
        "a_dict.pkl": pickle.dumps({"features": features(3)}),
        "three_d.pkl": pickle.dumps(features(4).reshape(2, ROWS // 2, WIDTH)),
        "strings.pkl": pickle.dumps(np.array([["a"] * WIDTH] * ROWS)),
        "truncated.npy": npy.getvalue()[:-7],
        "empty.pkl": b"",
    }


def test_unreadable_and_malicious_files_are_fatal_and_never_run_code(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=1)
    bad = bad_feature_files(tmp_path)
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    records += [dict(records[0], id=name, video=name) for name in bad]
    write_records(data, records)
    for deep in (False, True):
        report = check_training_data(data, folder, deep=deep)
        assert report.fatal and set(report.counts) == {"unreadable_feature"}
        assert sorted(p.file for p in report.problems["unreadable_feature"]) == sorted(bad)
    assert not (tmp_path / "pwned").exists()
    malicious = [p.message for p in report.problems["unreadable_feature"] if p.file == "malicious.pkl"]
    assert "system' is not allowed" in malicious[0]


def test_wrong_shape_and_dtype_are_fatal(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=6, per_video=1)
    save_features(folder / "v_001.pkl", features(1, shape=(ROWS - 1, WIDTH)))
    save_features(folder / "v_002.pkl", features(2, shape=(WIDTH, ROWS)))  # transposed: same size as a good one
    save_features(folder / "v_003.pkl", features(3, dtype=np.float32))
    save_features(folder / "v_004.pkl", features(4).view(np.int16))  # same bytes, wrong dtype
    report = check_training_data(data, folder)
    assert report.fatal and report.feature_shape == (ROWS, WIDTH)
    assert sorted(p.file for p in report.problems["wrong_shape"]) == ["v_001.pkl", "v_002.pkl"]
    assert sorted(p.file for p in report.problems["wrong_dtype"]) == ["v_003.pkl", "v_004.pkl"]
    assert "has shape (11, 16), expected (12, 16)" in report.format()


def test_expected_width_dtype_and_token_count(tmp_path):
    data, folder, _ = make_data(tmp_path, num_videos=3, per_video=1)
    assert not check_training_data(data, folder, expected_width=WIDTH, num_video_tokens=ROWS).fatal
    wide = check_training_data(data, folder, expected_width=1024)
    assert len(wide.problems["wrong_shape"]) == 3
    assert "expected (12, 1024) (the model expects it)" in wide.problems["wrong_shape"][0].message
    assert len(check_training_data(data, folder, num_video_tokens=356).problems["wrong_shape"]) == 3
    for v in range(3):
        save_features(folder / f"v_{v:03d}.pkl", features(v, dtype=np.float32))
    float32 = check_training_data(data, folder)
    assert float32.counts == {"wrong_dtype": 3} and not float32.fatal  # the dataset casts to float16
    assert not check_training_data(data, folder, expected_dtype=None).fatal  # any dtype that all files share


def test_nan_features_are_fatal_when_loaded(tmp_path):
    data, folder, _ = make_data(tmp_path, num_videos=4, per_video=1)
    bad = features(2)
    bad[3, 5] = np.nan
    save_features(folder / "v_002.pkl", bad)
    inf = features(3, dtype=np.float32)  # another dtype takes numpy's own isfinite
    inf[0, 0] = -np.inf
    save_features(folder / "v_003.pkl", inf)
    save_features(folder / "v_001.pkl", np.full((ROWS, WIDTH), np.inf, np.float16))
    deep = check_training_data(data, folder, deep=True, expected_dtype=None)
    assert sorted(p.file for p in deep.problems["non_finite"]) == ["v_001.pkl", "v_002.pkl", "v_003.pkl"]
    assert "1 of 192 values are NaN or inf" in deep.format()
    sampled = check_training_data(data, folder, sample_size=1)  # loads only v_000 fully
    assert sampled.num_files_loaded == 1 and set(sampled.counts) == {"wrong_dtype"}  # v_003, from its header


HEADER_CASES = {
    **{f"p{p}.pkl": pickle.dumps(features(0, shape=(356, 64)), protocol=p) for p in (3, 4, 5)},
    "small.pkl": pickle.dumps(features(0)),
    "fortran.pkl": pickle.dumps(np.asfortranarray(features(0, shape=(356, 64)))),
    "transposed.pkl": pickle.dumps(features(0, shape=(64, 356))),
    "float32.pkl": pickle.dumps(features(0, shape=(356, 64), dtype=np.float32)),
    "protocol2.pkl": pickle.dumps(features(0), protocol=2),  # needs _codecs.encode: the safe loader refuses it
    "truncated_data.pkl": pickle.dumps(features(0, shape=(356, 64)))[:-100],
    "truncated_header.pkl": pickle.dumps(features(0, shape=(356, 64)))[:60],
    "list.pkl": pickle.dumps([1, 2, 3]),
}


@pytest.mark.parametrize("name", sorted(HEADER_CASES))
def test_header_check_agrees_with_a_full_load(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(HEADER_CASES[name])
    try:
        array = load_features(path)
        expected = (tuple(array.shape), str(array.dtype))
    except FeatureFileError:
        expected = "rejected"
    try:
        info = read_feature_header(path)
        got = (info.shape, info.dtype)
    except FeatureFileError:
        got = "rejected"
    assert got == expected


def forged_check(data: str, folder: str, deep: bool) -> dict:
    """``data check`` (header mode or ``deep``) as a JSON-able summary, for ``run_bounded``'s child."""
    report = check_training_data(data, folder, deep=deep, num_workers=1)
    problems = {kind: [[p.file, p.message] for p in found] for kind, found in report.problems.items()}
    return {"fatal": report.fatal, "problems": problems, "shape": list(report.feature_shape or [])}


@pytest.fixture(scope="module")
def forged_checks(tmp_path_factory) -> dict[tuple[str, bool], dict]:
    """(kind, deep) -> the data check of a folder whose v_001.pkl is that forged file, all in one bounded child."""
    jobs, keys = [], []
    for kind, (forged, _) in FORGED.items():
        root = tmp_path_factory.mktemp("forged")
        data, folder, _ = make_data(root, num_videos=3, per_video=1)
        (folder / "v_001.pkl").write_bytes(forged)
        for deep in (False, True):
            jobs.append({"call": "tests.data.test_check:forged_check", "args": [str(data), str(folder), deep]})
            keys.append((kind, deep))
    return dict(zip(keys, run_bounded(jobs)))


@pytest.mark.parametrize("deep", [False, True], ids=["headers", "deep"])
@pytest.mark.parametrize("kind", list(FORGED))
def test_a_tiny_forged_pickle_is_an_unreadable_file_not_gigabytes(forged_checks, kind, deep):
    """data check reached 18.8 GB (header mode) and 950 MB on a few dozen bytes, and passed a forged all-zero file as
    valid: now the forged file is the one unreadable file, refused by its guard, with the allocation bounded (a
    child whose address space may grow by 512 MiB; tracemalloc peak under 16 MB)."""
    got = forged_checks[(kind, deep)]
    assert "result" in got and got["peak_mb"] < 16, got
    summary = got["result"]
    assert summary["fatal"] and list(summary["problems"]) == ["unreadable_feature"], summary
    ((name, message),) = summary["problems"]["unreadable_feature"]
    assert name == "v_001.pkl" and FORGED[kind][1] in message and "out of memory" not in message
    assert summary["shape"] == [ROWS, WIDTH]  # the good files still give the folder's shape


def test_bad_records_are_reported(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=2)
    good = records[0]
    human, gpt = good["conversations"]
    records += [
        "not a record",  # 4
        {"id": "x", "video": "v_000.pkl"},  # 5: no conversations
        dict(good, conversations=[human, {"from": "gpt"}]),  # 6: turn without value
        dict(good, conversations=[gpt, gpt]),  # 7: gpt after the dropped leading gpt turn
        dict(good, video=3),  # 8
        dict(good, conversations=[{"from": "human", "value": "<video>\n<video>\nq"}, gpt]),  # 9: two placeholders
        {"id": "t", "conversations": [human, gpt]},  # 10: placeholder without a video
        dict(good, conversations=[{"from": "human", "value": "<video>\n  "}, gpt]),  # 11: empty question
        dict(good, conversations=[human, {"from": "gpt", "value": ""}]),  # 12: empty answer
        dict(good),  # 13: duplicate of record 0
        dict(good, conversations=[{"from": "human", "value": "no placeholder"}, gpt]),  # 14
        {"id": "t2", "conversations": [{"from": "human", "value": "text only"}, gpt]},  # 15
    ]
    report = check_training_data(write_records(data, records), folder)
    by_kind = {kind: [p.index for p in probs] for kind, probs in report.problems.items()}
    assert by_kind == {
        "malformed": [4, 5, 6, 7, 8],
        "video_placeholder": [9, 10, 14],  # the dataset raises unless a video has exactly one
        "no_video": [10, 15],  # text-only records among video ones: the collator cannot batch them
        "empty_question": [11],
        "empty_answer": [12],
        "duplicate": [13],
    }
    assert report.fatal_kinds == ["malformed", "video_placeholder", "no_video"]
    assert "same video and conversations as record 0" in report.format()


def test_text_only_data_is_not_mixed(tmp_path):
    _, folder, _ = make_data(tmp_path, num_videos=1, per_video=1)
    records = [{"id": f"t{k}", "conversations": [{"from": "human", "value": f"q{k}"}, {"from": "gpt", "value": "a"}]}
               for k in range(3)]  # fmt: skip
    report = check_training_data(write_records(tmp_path / "text.json", records), folder)
    assert report.counts == {} and report.num_videos == 0


def test_warnings_alone_are_not_fatal(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=2)
    records += [
        dict(records[0]),
        dict(records[1], conversations=[records[1]["conversations"][0], {"from": "gpt", "value": " "}]),
    ]
    report = check_training_data(write_records(data, records), folder)
    assert set(report.counts) == {"duplicate", "empty_answer"} and not report.fatal
    assert "Result: OK (2 warnings)" in report.format()


@pytest.mark.parametrize(
    "content, message",
    [("[{", "is not valid JSON"), ('{"a": 1}', "top level is a dict"), ("[]", "holds no records")],
)
def test_unusable_training_json_is_fatal(tmp_path, content, message):
    (tmp_path / "f").mkdir()
    data = tmp_path / "train.json"
    data.write_text(content)
    report = check_training_data(data, tmp_path / "f")
    assert report.counts == {"data_file": 1} and message in report.problems["data_file"][0].message
    assert data_main(["check", "--data_path", str(data), "--video_folder", str(tmp_path / "f")]) == 1


@pytest.fixture(scope="module")
def encoder(tiny_llava):
    tok = load_hf_tokenizer(tiny_llava)
    ids, _ = add_video_tokens(tok, use_start_end=True)
    return SegmentEncoder(tok), ids


def test_token_lengths_are_the_trainers_and_truncation_is_counted(tmp_path, tiny_llava, encoder):
    data, folder, records = make_data(tmp_path, num_videos=3, per_video=4)
    records[5]["conversations"][1]["value"] = "A very long answer. " * 40
    write_records(data, records)
    enc, ids = encoder
    lengths = [render_sample(r["conversations"], enc, ids, ROWS).full_length for r in records]
    limit = sorted(lengths)[-2]  # only the long record is over
    report = check_training_data(data, folder, base=open_base(tiny_llava), model_max_length=limit, num_workers=2)
    t = report.token_lengths
    assert (t.count, t.min, t.max, t.num_video_tokens, t.num_truncated) == (12, min(lengths), max(lengths), ROWS, 1)
    assert t.median == int(np.quantile(lengths, 0.5, method="nearest"))
    assert [p.index for p in report.problems["truncated"]] == [5] and not report.fatal
    assert f"1 over model_max_length {limit}" in report.format()
    one_thread = check_training_data(data, folder, base=open_base(tiny_llava), model_max_length=limit, num_workers=1)
    assert one_thread.token_lengths == t


def test_a_limit_that_cuts_the_video_span_is_fatal(tmp_path, tiny_llava, capsys):
    data, folder, _ = make_data(tmp_path, num_videos=2, per_video=2)
    args = ["check", "--data_path", str(data), "--video_folder", str(folder), "--model_name_or_path", str(tiny_llava)]
    # The model's config gives the expected width (its mm_hidden_size): these small features are another width.
    assert data_main(args + ["--json"]) == 1
    assert json.loads(capsys.readouterr().out)["fatal_kinds"] == ["wrong_shape"]
    args += ["--expected_width", str(WIDTH)]
    assert data_main(args + ["--model_max_length", "2048", "--json"]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok["fatal"] is False and ok["token_lengths"]["max"] < 2048 and ok["feature_shape"] == [ROWS, WIDTH]
    assert data_main(args + ["--model_max_length", "30", "--json"]) == 1
    cut = json.loads(capsys.readouterr().out)
    assert "video_span_cut" in cut["fatal_kinds"] and cut["counts"]["truncated"] == 4
    assert data_main(args + ["--mm_use_vid_start_end", "False", "--json"]) == 0
    no_start_end = json.loads(capsys.readouterr().out)["token_lengths"]
    assert no_start_end["max"] == ok["token_lengths"]["max"] - 2  # no <vid_start>, <vid_end>
    assert "cuts the video span" in cut["problems"]["video_span_cut"][0]["message"]
    # an answer cut away completely leaves nothing to train on: a warning
    assert cut["counts"].get("no_supervised_tokens", 0) + cut["counts"]["video_span_cut"] == 4


def test_check_command_flags_and_dispatch(tmp_path, monkeypatch, capsys):
    data, folder, _ = make_data(tmp_path, num_videos=2, per_video=1)
    base = ["check", "--data_path", str(data), "--video_folder", str(folder)]
    monkeypatch.delitem(sys.modules, "video_chatgpt.data.inspect", raising=False)  # restored after the test
    assert data_main(base + ["--deep", "--expected_width", str(WIDTH), "--num_workers", "1"]) == 0
    assert "video_chatgpt.data.inspect" not in sys.modules  # imported only for `data inspect`
    assert data_main(base + ["--expected_width", "1024"]) == 1
    assert cli.main(["data"] + base + ["--model_name_or_path", str(tmp_path / "no_model")]) == 1
    assert "no_model: no such folder" in capsys.readouterr().err
    assert data_main(["check"]) == 2 and data_main(["frobnicate"]) == 2 and data_main([]) == 2
    fake = types.ModuleType("video_chatgpt.data.inspect")
    fake.main = lambda argv: 7 if argv == ["--x", "1"] else 0
    monkeypatch.setitem(sys.modules, "video_chatgpt.data.inspect", fake)
    assert data_main(["inspect", "--x", "1"]) == 7
    assert cli.main(["data"] + base) == 0
    capsys.readouterr()


def test_report_serialises(tmp_path):
    data, folder, _ = make_data(tmp_path, num_videos=2, per_video=1)
    (folder / "v_001.pkl").unlink()
    report = check_training_data(data, folder)
    assert isinstance(report, DataReport)
    out = json.loads(json.dumps(report.to_dict()))
    assert out["counts"] == {"missing_feature": 1} and out["fatal"] is True
    assert out["problems"]["missing_feature"][0] == {
        "kind": "missing_feature", "message": "v_001.pkl is not in the video folder", "index": 1, "file": "v_001.pkl",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- hardening
@pytest.mark.parametrize(
    "video, reason",
    [
        ("v_abc.pkl", None),
        ("sub/v_abc.pkl", None),
        ("./v_abc.pkl", None),
        ("/etc/passwd", "absolute path"),
        ("C:\\features\\v.pkl", "absolute path"),
        ("../other/v.pkl", "climbs out"),
        ("sub/../../v.pkl", "climbs out"),
        ("..\\v.pkl", "climbs out"),
        ("", "not a feature file name"),
    ],
)
def test_unsafe_video_reason(video, reason):
    from video_chatgpt.data.paths import feature_path, unsafe_video_reason

    got = unsafe_video_reason(video)
    assert (got is None) if reason is None else (reason in got)
    if reason is None:
        assert feature_path("feats", video) == Path("feats") / os.path.normpath(video)
    else:
        with pytest.raises(UserError, match="--video_folder feats"):
            feature_path("feats", video)


def test_records_naming_files_outside_the_folder_are_fatal_and_never_opened(tmp_path):
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=1)
    outside = tmp_path / "secret.pkl"
    save_features(outside, features(9))  # exists: the check must not find it through the record
    records += [dict(records[0], video=str(outside)), dict(records[0], video="../secret.pkl")]
    data.write_text(json.dumps(records))
    report = check_training_data(data, folder, deep=True)
    assert [p.index for p in report.problems["unsafe_path"]] == [2, 3]
    assert "absolute path" in report.problems["unsafe_path"][0].message
    assert "climbs out" in report.problems["unsafe_path"][1].message
    assert report.fatal and set(report.counts) == {"unsafe_path"}  # not looked up: no missing/unreadable finding
    assert report.num_videos == 2


def test_one_nan_in_one_of_64_files_fails_the_command_by_default(tmp_path, capsys):
    """It used to say OK: only a sample of 16 files was read for values."""
    data, folder, _ = make_data(tmp_path, num_videos=64, per_video=1)
    bad = features(37)
    bad[5, 3] = np.nan
    save_features(folder / "v_037.pkl", bad)  # not among the 16 spread-out files of the sample
    base = ["check", "--data_path", str(data), "--video_folder", str(folder), "--num_workers", "1"]
    assert data_main(base) == 1
    out = capsys.readouterr().out
    assert "values (NaN/inf) read in all 64 files" in out and "v_037.pkl: 1 of 192 values are NaN or inf" in out
    assert data_main(base + ["--quick"]) == 0
    out = capsys.readouterr().out
    assert "read in 16 of 64 files only (a sample" in out and "Result: OK" in out


def _manifest(folder: Path, tower: str, shape: tuple[int, int]) -> None:
    from video_chatgpt.features.store import write_manifest

    write_manifest(folder, {"vision_tower": tower, "feature_shape": list(shape), "num_frames": 4, "spatial_pool": 1})


def test_feature_manifest_is_checked_against_the_model(tmp_path, tiny_llava, capsys):
    data, folder, _ = make_data(tmp_path, num_videos=2, per_video=1)
    config = json.loads((tiny_llava / "config.json").read_text())
    tower, width = config["mm_vision_tower"], config["mm_hidden_size"]

    _manifest(folder, tower, (ROWS, WIDTH))  # another width than the model's projector reads
    report = check_training_data(data, folder, expected_width=width, vision_tower=tower)
    assert "feature_manifest" in report.fatal_kinds
    assert f"{WIDTH} wide but the model's projector reads {width}" in report.problems["feature_manifest"][0].message

    _manifest(folder, "google/siglip-so400m-patch14-384", (ROWS, WIDTH))  # same width, another tower: a warning
    report = check_training_data(data, folder, expected_width=WIDTH, vision_tower=tower, num_video_tokens=ROWS)
    assert not report.fatal and [p.kind for p in report.problems["manifest_tower"]] == ["manifest_tower"]

    _manifest(folder, tower, (ROWS + 1, WIDTH))  # token count differs from what the model expects
    report = check_training_data(data, folder, expected_width=WIDTH, num_video_tokens=ROWS)
    assert "tokens per video but the model expects" in report.problems["feature_manifest"][0].message

    # The command takes the tower and the width from --model_name_or_path's config.json.
    _manifest(folder, tower, (ROWS, WIDTH))
    assert (
        data_main(
            ["check", "--data_path", str(data), "--video_folder", str(folder), "--model_name_or_path", str(tiny_llava)]
        )
        == 1
    )
    assert f"reads {width}" in capsys.readouterr().out
    (folder / "features_manifest.json").unlink()  # a folder without a manifest (the original's) keeps working
    assert not check_training_data(data, folder, expected_width=WIDTH, vision_tower=tower).fatal


def test_token_lengths_use_the_template_training_uses_for_the_base(tmp_path):
    """A chat base (Qwen2) is trained with its own chat template, so its lengths are those of that template, not
    of the document's vicuna_v1_1; --stage pretrain uses the plain template."""
    from video_chatgpt.data.conversation import TRAIN_TEMPLATE, training_template
    from video_chatgpt.sample.models import make_tiny_chat_lm

    model = make_tiny_chat_lm(tmp_path / "qwen2", "qwen2")
    data, folder, records = make_data(tmp_path, num_videos=2, per_video=1)
    tokenizer = load_hf_tokenizer(model)
    video_ids, _ = add_video_tokens(tokenizer, use_start_end=True)
    encoder = SegmentEncoder(tokenizer)
    for stage in (None, "pretrain"):
        template = training_template(open_base(model), tokenizer, stage)
        assert template != TRAIN_TEMPLATE
        want = [render_sample(r["conversations"], encoder, video_ids, ROWS, template).full_length for r in records]
        report = check_training_data(data, folder, base=open_base(model), stage=stage, num_workers=1)
        assert (report.token_lengths.min, report.token_lengths.max) == (min(want), max(want))
        vicuna = [
            render_sample(r["conversations"], encoder, video_ids, ROWS, TRAIN_TEMPLATE).full_length for r in records
        ]
        assert want != vicuna  # the test tells the templates apart
