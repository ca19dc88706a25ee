"""The API server's fixtures: a media folder (good videos, a feature file, each kind of bad input, escapes planted),
the server itself (``video-chatgpt serve`` in a subprocess on the session's ``trained_run``, its whole output in a
log file), and the same model loaded here for the answers the server must give."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.serve import API_KEY, API_KEY_ENV, MAX_REQUEST_MB, MAX_VIDEO_SECONDS, serve_process


@pytest.fixture(scope="session")
def media(tmp_path_factory, sample_world, awkward_videos) -> dict[str, Path]:
    """``{"root": the allowed folder, "outside": a video outside it, "videos": the held-out videos in it, ...}``."""
    from video_chatgpt.sample.videos import VideoTruth, make_synthetic_video

    base = tmp_path_factory.mktemp("serve_media")
    root, outside = base / "media", base / "outside"
    (root / "videos").mkdir(parents=True)
    outside.mkdir()
    videos = []
    for path in sorted(sample_world["videos_test"].glob("*.mp4")):
        videos.append(Path(shutil.copy(path, root / "videos" / path.name)))
    shutil.copy(videos[0], outside / "secret.mp4")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")  # a link out of the folder
    bad = root / "bad"
    bad.mkdir()
    for name in ("corrupt", "empty", "not_video"):
        shutil.copy(awkward_videos[name], bad / awkward_videos[name].name)
    long_truth = VideoTruth("v_long", "red", "circle", "left", int((MAX_VIDEO_SECONDS + 2) * 25), 64, 48)
    make_synthetic_video(bad / "long.mp4", long_truth)
    (root / "features").mkdir()
    np.save(root / "features" / "wrong_shape.npy", np.zeros((3, 5), dtype=np.float16))
    return {
        "root": root,
        "outside": outside / "secret.mp4",
        "videos": videos,
        "corrupt": bad / awkward_videos["corrupt"].name,
        "empty": bad / awkward_videos["empty"].name,
        "not_video": bad / awkward_videos["not_video"].name,
        "long": bad / "long.mp4",
    }


@pytest.fixture(scope="session")
def engine(trained_run, tiny_clip):
    """The served model, loaded here: the unbatched answers the server's must equal."""
    from video_chatgpt.inference.engine import load_engine

    return load_engine(trained_run, None, device="cpu", vision_tower=str(tiny_clip))


@pytest.fixture(scope="session")
def features_of(engine, media):
    """video path -> the engine's features of it (computed once each)."""
    cache = {}

    def get(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = engine.video_features(path)
        return cache[path]

    return get


@pytest.fixture(scope="module")
def server(trained_run, tiny_clip, media, tmp_path_factory):
    """``video-chatgpt serve`` in a subprocess on a free 127.0.0.1 port, with an API key from the environment;
    yields ``{"url", "log", "process"}``; stopped at the end of the module."""
    log = tmp_path_factory.mktemp("serve_server") / "server.log"
    flags = [
        "--model-name", str(trained_run),
        "--vision_tower", str(tiny_clip),
        "--api_key_env", API_KEY_ENV,
        "--allowed_local_media_path", str(media["root"]),
        "--max_video_seconds", str(MAX_VIDEO_SECONDS),
        "--max_request_mb", str(MAX_REQUEST_MB),
        "--max_batch_size", "8",
    ]  # fmt: skip
    with serve_process(flags, log, {API_KEY_ENV: API_KEY}) as running:
        yield running
