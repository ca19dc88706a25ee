"""``video-chatgpt data generate`` against scripted VLM and LLM servers on 127.0.0.1 (tests/helpers/generate.py).

The VLM names the dominant colour of the image it receives and the LLM writes its description and QA pairs from the
captions it receives, so the colour in the output can only come from the video's pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.generate import ModelServer, Reply, generate_argv, llm, llm_reply, qa_kind, user_text, vlm
from video_chatgpt.cli import main as cli_main
from video_chatgpt.data.generate import KINDS, clean_pairs, parse_pairs
from video_chatgpt.data.keyframes import choose_keyframes, extract_keyframes
from video_chatgpt.sample.videos import COLOURS, VideoTruth, render_frames, write_video
from video_chatgpt.sample.world import COLOUR_QUESTIONS

REPO = Path(__file__).resolve().parents[2]
KEYFRAMES = 3


def truths(world) -> dict[str, str]:
    data = json.loads(Path(world["truth"]).read_text())
    return {t["video_id"]: t["colour"] for t in data["test"]}


@pytest.fixture()
def videos(sample_world, tmp_path) -> Path:
    """A private copy of the sample world's held-out videos (4, one per colour)."""
    folder = tmp_path / "videos"
    shutil.copytree(sample_world["videos_test"], folder)
    return folder


def generate(videos: Path, output: Path, vlm_server, llm_server, *extra) -> int:
    return cli_main(generate_argv(videos, output, vlm_server, llm_server, "--keyframes", KEYFRAMES, *extra))


def error_lines(err: str) -> list[str]:
    """The error lines of a command's stderr (not the progress bar, the key note or the --debug hint)."""
    return [line for line in err.splitlines() if ": error: " in line]


def colours_per_video(output: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for record in json.loads(output.read_text()):
        words = set(record["a"].lower().replace(".", " ").replace(",", " ").split())
        found.setdefault(record["video_id"], set()).update(words & set(COLOURS))
    return found


def test_the_colour_travels_from_the_pixels_to_the_qa_pairs(sample_world, videos, tmp_path, capsys):
    output = tmp_path / "out" / "qa.json"
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m) == 0
        assert len(v.log) == 4 * KEYFRAMES and len(m.log) == 4 * (1 + len(KINDS))
        assert set(v.counts().values()) == {1} and set(m.counts().values()) == {1}  # each request asked once
        # Every VLM request carried a JPEG data URL; the scripted VLM saw the right colour in each.
        for entry in v.log:
            parts = entry.body["messages"][0]["content"]
            assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    out = capsys.readouterr().out
    assert "videos: 4 (4 done, 0 skipped, 0 failed)" in out
    assert f"frames captioned: {4 * KEYFRAMES} ({4 * KEYFRAMES} asked now, 0 from the cache)" in out
    truth = truths(sample_world)
    assert colours_per_video(output) == {vid: {colour} for vid, colour in truth.items()}
    records = json.loads(output.read_text())
    assert all(set(r) == {"video_id", "q", "a"} for r in records)
    per_video = 1 + 2 + 1 + 1 + 1 + 2  # summary, descriptive (2), temporal, spatial, reasoning, consistency (2)
    assert len(records) == 4 * per_video
    # consistency: two phrasings, one answer
    for vid, colour in truth.items():
        answers = {r["q"]: r["a"] for r in records if r["video_id"] == vid}
        assert answers[COLOUR_QUESTIONS[1]] == answers[COLOUR_QUESTIONS[2]] == f"The object is {colour}."
    # provenance: a header, then per video its frames (time, caption, raw reply), the description, the models
    lines = [json.loads(line) for line in (output.parent / "qa.provenance.jsonl").read_text().splitlines()]
    assert lines[0]["settings"]["vlm_model"] == "scripted-vlm" and len(lines[0]["settings"]["prompts_sha256"]) == 9
    by_id = {line["video_id"]: line for line in lines[1:]}
    for vid, colour in truth.items():
        frames = by_id[vid]["frames"]
        assert len(frames) == KEYFRAMES and frames[0]["index"] == 0 and frames[0]["time"] == 0.0
        assert all(colour in f["caption"] and f["raw"] == f["caption"] and f["model"] == "scripted-vlm" for f in frames)
        assert colour in by_id[vid]["description"]["value"] and by_id[vid]["status"] == "done"
        assert set(by_id[vid]["qa"]) == set(KINDS)
    # The converter reads the output as the VideoInstruct JSON it is.
    training = tmp_path / "out" / "train.json"
    assert cli_main(["convert", "--input_json_file", str(output), "--output_json_file", str(training)]) == 0
    assert len(json.loads(training.read_text())) == len(records)

    # A rerun asks nothing and writes the same output.
    before = output.read_bytes()
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m) == 0
        assert len(v.log) == len(m.log) == 0
    assert output.read_bytes() == before
    assert f"frames captioned: {4 * KEYFRAMES} (0 asked now, {4 * KEYFRAMES} from the cache)" in capsys.readouterr().out


def test_user_captions_reach_the_description_and_a_new_kind_is_asked_alone(videos, tmp_path):
    output = tmp_path / "qa.json"
    vid = sorted(p.name.split(".")[0] for p in videos.iterdir())[0]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({f"{vid}.mp4": "My cat filmed this in the garden."}))
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m, "--kinds", "summary", "--captions", captions) == 0
        described = [user_text(e.body) for e in m.log if "Frame captions:" in user_text(e.body)]
        assert sum("My cat filmed this in the garden." in text for text in described) == 1
        assert len(m.log) == 4 * 2
        # Another kind later: only its requests are sent, nothing else is asked again.
        assert generate(videos, output, v, m, "--kinds", "summary,temporal", "--captions", captions) == 0
        assert len(m.log) == 4 * 3 and len(v.log) == 4 * KEYFRAMES
        assert {qa_kind(user_text(e.body)) for e in m.log[8:]} == {"temporal"}


def test_a_cache_made_with_other_settings_is_refused(videos, tmp_path, capsys):
    output = tmp_path / "qa.json"
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m, "--kinds", "summary") == 0
        snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        capsys.readouterr()
        for extra, named in (
            (["--llm_model", "other-llm"], "llm_model: 'scripted-llm', now 'other-llm'"),
            (["--keyframes", "5"], "keyframes: 3, now 5"),
            (["--temperature", "0.7"], "temperature: 0.2, now 0.7"),
        ):
            argv = generate_argv(videos, output, v, m, "--keyframes", KEYFRAMES, "--kinds", "summary")
            argv += extra
            assert cli_main(argv) == 1
            err = error_lines(capsys.readouterr().err)
            assert len(err) == 1 and "the cache was made with other settings" in err[0] and named in err[0], err
        assert len(v.log) == 4 * KEYFRAMES and len(m.log) == 8  # nothing asked by the refused runs
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot  # nothing changed on disk


def test_a_changed_prompt_is_refused(videos, tmp_path, capsys, monkeypatch):
    output = tmp_path / "qa.json"
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m, "--kinds", "summary") == 0
        from video_chatgpt.data import generate as module

        prompts = module.load_prompts()
        monkeypatch.setattr(module, "load_prompts", lambda: {**prompts, "describe": prompts["describe"] + "More.\n"})
        capsys.readouterr()
        assert generate(videos, output, v, m, "--kinds", "summary") == 1
    assert "prompts_sha256" in capsys.readouterr().err


def test_kill_and_resume_asks_each_request_once(videos, tmp_path):
    """A run killed (SIGKILL) while a QA request is in flight; the rerun asks only what is missing: every request is
    answered once, only the one in flight is sent twice; the output equals an uninterrupted run's."""
    output = tmp_path / "killed" / "qa.json"
    blocked, release = threading.Event(), threading.Event()
    qa_seen = []

    def stalling_llm(n, key, body):
        if "Video description:" in user_text(body):
            qa_seen.append(key)
            if len(qa_seen) == 7:  # well into the run: some videos done, others not
                blocked.set()
                return Reply(llm_reply(body), block=release)
        return Reply(llm_reply(body))

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    with ModelServer(vlm) as v, ModelServer(stalling_llm) as m:
        argv = generate_argv(videos, output, v, m, "--keyframes", KEYFRAMES, "--num_workers", "2")
        proc = subprocess.Popen([sys.executable, "-m", "video_chatgpt.cli", *argv], env=env, cwd=REPO)
        try:
            assert blocked.wait(120), "the run never reached the 7th QA request"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            release.set()
        assert not output.exists()  # killed before the end: no output yet
        in_flight = qa_seen[6]
        first = v.counts() + m.counts()
        m.respond = llm
        assert generate(videos, output, v, m, "--num_workers", "2") == 0
        asked = v.counts() + m.counts()
    assert len(asked) == 4 * (KEYFRAMES + 1 + len(KINDS))  # every distinct request was sent
    # Sent twice: only the requests in flight at the kill (the blocked one, and at most one per other worker).
    again = {k: n for k, n in asked.items() if n != 1}
    assert in_flight in again and len(again) <= 2 and set(again.values()) == {2}, again
    assert sum(first.values()) < sum(asked.values())
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, tmp_path / "fresh" / "qa.json", v, m) == 0
    assert output.read_bytes() == (tmp_path / "fresh" / "qa.json").read_bytes()


def test_bad_replies_are_asked_again_then_recorded_as_failures(videos, tmp_path, capsys):
    """A QA reply that is not JSON is asked again; a kind whose every reply is unusable fails with its reason (exit
    1, the other kinds written); a rerun against a good server asks only the failed requests."""
    output = tmp_path / "qa.json"
    garbage_once: set[str] = set()

    def flaky_llm(n, key, body):
        kind = qa_kind(user_text(body))
        if kind == "temporal":
            return Reply("Sure! Here are some questions: Q1 what happens? A1 things.")  # never JSON
        if kind == "spatial" and key not in garbage_once:
            garbage_once.add(key)
            return Reply('[{"q": "Where is it?", "a": ')  # cut short once
        return Reply(llm_reply(body))

    with ModelServer(vlm) as v, ModelServer(flaky_llm) as m:
        assert generate(videos, output, v, m, "--kinds", "descriptive,temporal,spatial", "--max_retries", 2) == 1
        temporal = [e for e in m.log if qa_kind(user_text(e.body)) == "temporal"]
        assert len(temporal) == 4 * 3  # first try + 2 retries per video, then a failure
        out = capsys.readouterr().out
        assert "failures: 4 (a rerun asks them again)" in out
        assert "qa temporal: unparseable reply: no JSON list of question-answer pairs in the reply" in out
    records = json.loads(output.read_text())
    assert len(records) == 4 * 3  # descriptive (2) and spatial (1) for each video
    provenance = [json.loads(x) for x in (tmp_path / "qa.provenance.jsonl").read_text().splitlines()[1:]]
    assert all(p["status"] == "failed" and p["failures"][0]["raw"].startswith("Sure!") for p in provenance)
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(videos, output, v, m, "--kinds", "descriptive,temporal,spatial") == 0
        assert len(v.log) == 0 and {qa_kind(user_text(e.body)) for e in m.log} == {"temporal"} and len(m.log) == 4
    assert len(json.loads(output.read_text())) == 4 * 4


def test_429_with_retry_after_500_and_timeouts(videos, tmp_path, capsys):
    """429 waits what Retry-After asks, 500 is retried, a server slower than --timeout is a bounded failure."""
    output = tmp_path / "qa.json"
    first: dict[str, float] = {}
    seen: dict[str, int] = {}

    def busy_vlm(n, key, body):
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            first[key] = time.monotonic()
            return Reply(status=429, headers={"Retry-After": "0.4"})
        if seen[key] == 2:
            return Reply(status=500)
        return vlm(n, key, body)

    def slow_llm(n, key, body):
        if "Frame captions:" in user_text(body):
            return Reply(llm_reply(body), delay=5)
        return Reply(llm_reply(body))

    t0 = time.monotonic()
    with ModelServer(busy_vlm) as v, ModelServer(slow_llm) as m:
        argv = generate_argv(videos, output, v, m, "--keyframes", 2, "--kinds", "summary", "--max_retries", 2)
        argv += ["--timeout", "0.5", "--backoff", "0.01", "--num_workers", "4"]
        assert cli_main(argv) == 1
        assert len(v.log) == 4 * 2 * 3  # each caption: 429, 500, then the answer
        for key, start in first.items():
            second = next(e.time for e in v.log if e.key == key and e.time > start)
            assert second - start >= 0.4  # Retry-After was waited for
        assert len(m.log) == 4 * 3  # each description: 3 attempts, each cut at 0.5 s
    assert time.monotonic() - t0 < 15  # bounded: no attempt waited for the 5 s replies
    out = capsys.readouterr().out
    assert out.count("description: no reply within --timeout 0.5 s") == 4
    assert "frames captioned: 8 (8 asked now, 0 from the cache)" in out


def test_undecodable_and_duplicate_videos_are_listed_and_skipped(awkward_videos, videos, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(videos, folder)
    for kind in ("corrupt", "empty", "not_video"):
        shutil.copy(awkward_videos[kind], folder)
    first = sorted(folder.glob("v_tst*.mp4"))[0]
    shutil.copy(first, folder / f"{first.stem}.webm")  # another file with the same video id
    output = tmp_path / "qa.json"
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert generate(folder, output, v, m, "--kinds", "descriptive") == 0
    out = capsys.readouterr().out
    assert "videos: 8 (4 done, 4 skipped, 0 failed)" in out
    assert "skipped v_awkempty01.mp4: empty file (0 bytes)" in out
    assert "skipped v_awknotvid1.mp4: not a video, or a corrupt one: FFmpeg cannot open it" in out
    assert "skipped v_awkcorrupt.mp4: not a video, or a corrupt one" in out
    assert f"skipped {first.stem}.webm: video id '{first.stem}' already taken by another file" in out
    assert {r["video_id"] for r in json.loads(output.read_text())} == {p.stem for p in videos.iterdir()}


def test_refusals_before_anything_is_written(videos, tmp_path, capsys):
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        # the output inside the input folder
        assert generate(videos, videos / "qa.json", v, m) == 1
        assert "would destroy an input" in capsys.readouterr().err
        assert not (videos / "qa.json.cache").exists()
        # a bad API base, a bad captions file
        argv = generate_argv(videos, tmp_path / "qa.json", v, m) + ["--llm_api_base", "localhost"]
        assert cli_main(argv) == 1
        assert "--llm_api_base 'localhost' is not a URL" in capsys.readouterr().err
        bad = tmp_path / "captions.json"
        bad.write_text(json.dumps({"v1": 3}))
        assert generate(videos, tmp_path / "qa.json", v, m, "--captions", bad) == 1
        assert "the value of 'v1' is int, expected text" in capsys.readouterr().err
        assert generate(videos, tmp_path / "qa.json", v, m, "--kinds", "summary,jokes") == 2
        assert len(v.log) == len(m.log) == 0
    assert not (tmp_path / "qa.json").exists() and not (tmp_path / "qa.json.cache").exists()


def test_401_stops_the_run_with_one_line(videos, tmp_path, capsys):
    with ModelServer(lambda n, k, b: Reply(status=401)) as v, ModelServer(llm) as m:
        assert generate(videos, tmp_path / "qa.json", v, m) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "the VLM server answered HTTP 401 for model 'scripted-vlm'" in err[0], err


# ------------------------------------------------------------------------------------------- replies and checks
@pytest.mark.parametrize(
    "text",
    [
        '[{"q": "What colour?", "a": "Red."}]',
        '```json\n[{"q": "What colour?", "a": "Red."}]\n```',
        '<think>The user wants JSON [1, 2].</think>\nHere you go:\n[{"question": "What colour?", "answer": "Red."}] Done',
        '{"pairs": [{"q": "What colour?", "a": "Red."}]}',
        '{"q": "What colour?", "a": "Red."}',
    ],
)
def test_qa_replies_are_read_leniently(text):
    items, problem = parse_pairs(text)
    assert problem is None and [(i["q"], i["a"]) for i in items] == [("What colour?", "Red.")]


@pytest.mark.parametrize(
    "text", ["no json here", "[1, 2, 3]", '[{"q": "only a question"}]', '{"a": 1}', "", '[{"q": "x", "a": ']
)
def test_qa_replies_without_pairs_are_unparseable(text):
    items, problem = parse_pairs(text)
    assert items is None and problem


def test_output_checks_drop_and_count():
    seen: set[str] = set()
    items = [
        {"q": "What colour is the object?", "a": "The object is red."},
        {"q": "What colour is the object?", "a": "Red, really."},  # duplicate question
        {"q": "What colour is the object", "a": ""},  # empty answer
        {"q": "", "a": "Something."},  # empty question
        {"q": "Is the object red?", "a": "The object is red?"},  # restates the question
        {"q": "Tell me everything.", "a": "word " * 300},  # over-long
        {"q": None, "a": "No question."},
    ]
    kept, dropped = clean_pairs("descriptive", items, seen)
    assert kept == [{"q": "What colour is the object?", "a": "The object is red."}]
    assert dropped == {"duplicate": 1, "empty": 3, "restates the question": 1, "over-long": 1}
    kept, dropped = clean_pairs(
        "consistency", [{"q": "Which colour?", "q2": "What colour is the object?", "a": "Red."}], seen
    )
    assert kept == [{"q": "Which colour?", "a": "Red."}] and dropped == {"duplicate": 1}


# ------------------------------------------------------------------------------------------------- keyframes
def test_keyframes_are_scene_changes_then_uniform(tmp_path):
    # No cuts: evenly spread frames (frame 0 and the centres of equal stretches).
    assert choose_keyframes(np.ones(100), 4) == [0, 37, 62, 87]
    assert choose_keyframes(np.ones(5), 8) == [0, 1, 2, 3, 4]
    # Two cuts: both found, before any uniform frame.
    scores = np.ones(100)
    scores[[40, 70]] = [80.0, 60.0]
    assert choose_keyframes(scores, 3) == [0, 40, 70]
    assert choose_keyframes(scores, 2) == [0, 40]  # the stronger cut first
    # A real video with a cut: a red scene then a blue one; the cut's frame is a keyframe, with its time.
    red = render_frames(VideoTruth("a", "red", "square", "right", 30, 64, 48), seed=1)
    blue = render_frames(VideoTruth("b", "blue", "circle", "left", 20, 64, 48), seed=2)
    blue[:] = np.clip(blue.astype(int) + 90, 0, 255).astype(np.uint8)  # a brighter second scene: a clear cut
    path = write_video(tmp_path / "cut.mp4", np.concatenate([red, blue]))
    keyframes, total = extract_keyframes(path, 3, max_side=32)
    assert total == 50 and [k.index for k in keyframes][:2] == [0, 30]
    assert keyframes[1].time == pytest.approx(30 / 25) and keyframes[1].scene_score > 30
    assert all(k.jpeg[:2] == b"\xff\xd8" for k in keyframes)  # JPEG


def test_generate_help_shows_its_flags(capsys):
    assert cli_main(["data", "generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--video_dir", "--output_json", "--captions", "--vlm_model", "--llm_api_base", "--kinds", "--seed"):
        assert flag in out
    assert len(out.splitlines()) < 80


# ------------------------------------------------------------------------------------------------ end to end
def _run(cmd: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.mark.slow
def test_own_videos_to_a_model_that_answers_their_colour(tmp_path):
    """docs/own-videos.md end to end on the sample world (minutes on 2 idle CPU cores; 45 on a loaded one): videos only (no
    instruction data) -> ``data generate`` with the scripted VLM and LLM -> ``convert`` -> features -> ``data
    check`` -> training -> ``chat`` answers the colour of held-out videos it never saw."""
    from video_chatgpt.constants import DEFAULT_NUM_FRAMES
    from video_chatgpt.features.encoder import video_tokens
    from video_chatgpt.features.towers import resolve_tower
    from video_chatgpt.quickstart import train_flags
    from video_chatgpt.sample.models import make_sample_models, pretrain_language
    from video_chatgpt.sample.world import colour_answer, language_corpus, make_sample_world

    work = tmp_path / "own"
    world = make_sample_world(work / "world", num_train=32, num_test=8, seed=0)
    models = make_sample_models(work / "models")
    base, tower = models["llava"], models["vision_tower"]
    conversations, captions = language_corpus(seed=100)
    pretrain_language(
        base, conversations, captions, seed=0, num_video_tokens=video_tokens(resolve_tower(tower), DEFAULT_NUM_FRAMES)
    )

    qa = work / "my_videos_qa.json"
    with ModelServer(vlm) as v, ModelServer(llm) as m:
        assert cli_main(generate_argv(world["videos_train"], qa, v, m, "--keyframes", 2)) == 0
    records = json.loads(qa.read_text())
    assert {r["video_id"] for r in records} == {p.stem for p in Path(world["videos_train"]).iterdir()}
    train_json = work / "my_videos_training.json"
    assert cli_main(["convert", "--input_json_file", str(qa), "--output_json_file", str(train_json)]) == 0
    features = work / "clip_features"
    _run([sys.executable, "scripts/save_spatio_temporal_clip_features.py", "--video_dir_path", world["videos_train"],
          "--clip_feat_path", features, "--vision_tower", tower])  # fmt: skip
    check = ["data", "check", "--data_path", str(train_json), "--video_folder", str(features)]
    assert cli_main([*check, "--model_name_or_path", str(base)]) == 0
    out = work / "run"
    _run([sys.executable, "video_chatgpt/train/train_mem.py", *train_flags(base, train_json, features, out)])
    assert (out / "mm_projector.bin").is_file()

    test_qa = json.loads(Path(world["test_qa"]).read_text())
    for colour in ("red", "green", "blue", "yellow"):
        video = next(q["video_name"] for q in test_qa if q["answer"] == colour)
        result = _run([sys.executable, "-m", "video_chatgpt.cli", "chat", "--model-name", out, "--video_path",
                       Path(world["videos_test"]) / f"{video}.mp4", "--vision_tower", tower,
                       "--question", COLOUR_QUESTIONS[0], "--temperature", "0"])  # fmt: skip
        assert result.stdout.strip() == colour_answer(colour), (video, result.stdout)


def test_one_client_for_evaluate_and_generate():
    """The judge of ``evaluate`` and the VLM/LLM of ``generate`` are the one client of ``video_chatgpt.llm_client``
    (not a copy): the judge module holds only the verdict parsing."""
    import video_chatgpt.data.generate as generate_module
    import video_chatgpt.eval.judge as judge_module
    from video_chatgpt import llm_client

    assert issubclass(judge_module.Judge, llm_client.Asker) and generate_module.Asker is llm_client.Asker
    assert judge_module.JudgeRefused is llm_client.ServerRefused
    own = {
        name
        for name, value in vars(judge_module).items()
        if getattr(value, "__module__", None) == judge_module.__name__
    }
    assert own == {"Judge"}
