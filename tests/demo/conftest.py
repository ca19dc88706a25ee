"""The web demo's fixtures: a quickstart-style tiny trained model, awkward inputs, and the demo server itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_inspect import make_training_data

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What colour is the moving object in the video?"
MAX_NEW_TOKENS = 24  # the answers stay short; the same value is given to the demo and to `chat`
MAX_VIDEO_SECONDS = 10.0  # the sample videos are 2.4-6.4 s; the "long" one is 12 s
SERVER_START_S = 180  # bounded wait for the server (model + tower + gradio on 2 busy cores)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, sample_world, language_llava) -> Path:
    """A training output folder: the language-pretrained tiny base, projector trained 4 steps (as tests/inference)."""
    from video_chatgpt.train.train import train

    root = tmp_path_factory.mktemp("demo_model")
    data = make_training_data(sample_world["instructions"], language_llava, root / "data")
    out = root / "run"
    train(
        [
            "--model_name_or_path",
            str(language_llava),
            "--data_path",
            str(data["data_path"]),
            "--video_folder",
            str(data["video_folder"]),
            "--output_dir",
            str(out),
            "--tune_mm_mlp_adapter",
            "True",
            "--mm_use_vid_start_end",
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-2",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--skip_data_check",
            "True",
        ]
    )
    return out


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_server(demo_model, tiny_clip, sample_world, tmp_path_factory):
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
        str(demo_model),
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
