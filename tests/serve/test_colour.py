"""The served quickstart model answers the colour of each client's own video (slow: the quickstart trains it).

The session's ``trained_run`` answers every question alike, so the fast tests compare the server's answers with the
model's own; here a model that has learned the colour (``make quickstart``) is served, and four clients ask at once,
each about a held-out video of another colour: each gets the sample's sentence for its own video's colour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.serve import client, serve_process, video_message


def assert_served_colours(work: Path, log: Path) -> None:
    """Serve the quickstart's model in ``work``; four parallel clients, four colours, each its own answer."""
    from video_chatgpt.sample.world import COLOUR_QUESTIONS, colour_answer

    videos = work / "world" / "videos" / "test"
    by_colour = {}
    for qa in json.loads((work / "world" / "test_qa.json").read_text()):
        by_colour.setdefault(qa["answer"], qa["video_name"])
    assert len(by_colour) >= 4, by_colour
    flags = [
        "--model-name", str(work / "Video-ChatGPT_7B-1.1_Checkpoints"),
        "--vision_tower", str(work / "models" / "clip-vit-tiny"),
        "--allowed_local_media_path", str(videos),
    ]  # fmt: skip
    with serve_process(flags, log) as running:
        api = client(running["url"], api_key="unused")
        model = api.models.list().data[0].id

        def ask(video: str) -> str:
            message = video_message(COLOUR_QUESTIONS[0], f"{video}.mp4")
            reply = api.chat.completions.create(model=model, messages=[message], temperature=0, max_tokens=24)
            return reply.choices[0].message.content

        with ThreadPoolExecutor(len(by_colour)) as pool:
            answers = dict(zip(by_colour, pool.map(ask, by_colour.values(), timeout=600)))
    assert answers == {colour: colour_answer(colour) for colour in by_colour}


@pytest.mark.slow
def test_parallel_clients_get_the_colour_of_their_own_video(tmp_path):
    work = tmp_path / "quickstart"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "video_chatgpt.quickstart", "--workdir", str(work)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "video-chatgpt serve --model_name_or_path" in result.stdout  # the quickstart prints the command
    assert_served_colours(work, tmp_path / "server.log")
