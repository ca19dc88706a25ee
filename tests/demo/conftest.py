"""The web demo's fixtures: awkward inputs, the demo server itself (on the session's ``trained_run``), and the
answer ``video-chatgpt chat`` gives on the same model, video and question."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import MAX_NEW_TOKENS, QUESTION, REPO, free_port

MAX_VIDEO_SECONDS = 10.0  # the sample videos are 2.4-6.4 s; the "long" one is 12 s
SERVER_START_S = 180  # bounded wait for the server (model + tower + gradio on 2 busy cores)


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An .mp4 with an AAC sound track and no picture."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]  # (channels, samples)
        frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory, sample_world, awkward_videos) -> dict[str, Path]:
    """A held-out sample video, and each kind of bad input the page must explain."""
    from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video

    root = tmp_path_factory.mktemp("demo_inputs")
    long_truth = VideoTruth("v_longclip01", "red", "circle", "left", int(12 * 25), 64, 48)  # 12 s at 25 fps
    return {
        "video": sorted(sample_world["videos_test"].glob("*.mp4"))[0],
        "corrupt": awkward_videos["corrupt"],
        "empty": awkward_videos["empty"],
        "not_video": awkward_videos["not_video"],
        "audio_only": write_audio_only(root / "a_sound_only.mp4"),
        "long": make_synthetic_video(root / f"{long_truth.video_id}.mp4", long_truth),
    }


@pytest.fixture(scope="session")
def demo_server(trained_run, tiny_clip, sample_world, tmp_path_factory):
    """``video-chatgpt demo`` in a subprocess on a free 127.0.0.1 port; yields its URL; stopped at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo_server") / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "video_chatgpt.cli",
        "demo",
        "--model-name",
        str(trained_run),
        "--vision_tower",
        str(tiny_clip),
        "--port",
        str(port),
        "--temperature",
        "0",
        "--max_new_tokens",
        str(MAX_NEW_TOKENS),
        "--max_video_seconds",
        str(MAX_VIDEO_SECONDS),
        "--examples",
        str(sample_world["videos_test"]),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the demo exited with {proc.returncode} before serving:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the demo did not serve {url} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield {"url": url, "process": proc, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat_answer(model, tiny_clip, video, question=QUESTION) -> str:
    """``video-chatgpt chat --temperature 0`` on the same model, video and question."""
    from video_chatgpt.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(
                [
                    "chat",
                    "--model-name",
                    str(model),
                    "--vision_tower",
                    str(tiny_clip),
                    "--video_path",
                    str(video),
                    "--question",
                    question,
                    "--temperature",
                    "0",
                    "--max_new_tokens",
                    str(MAX_NEW_TOKENS),
                ]
            )
            == 0
        )
    return out.getvalue().rstrip("\n")


@pytest.fixture(scope="session")
def expected_answer(trained_run, tiny_clip, demo_inputs) -> str:
    """The chat command's greedy answer to ``QUESTION`` about the demo's video: what the demo must stream."""
    answer = chat_answer(trained_run, tiny_clip, demo_inputs["video"])
    assert answer  # an empty answer would make the comparisons below weak
    return answer
