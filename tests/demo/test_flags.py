"""``video-chatgpt demo`` flags: usage errors exit 2 before anything is loaded; --help shows the flags."""

from __future__ import annotations

import contextlib
import io

import pytest


def run(*argv) -> tuple[int, str]:
    from video_chatgpt.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        status = main(["demo", *argv])
    return status, err.getvalue()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--max_video_seconds", "0"], "--max_video_seconds must be positive"),
        (["--max_video_seconds", "nan"], "--max_video_seconds must be positive and finite, got nan"),
        (["--max_video_seconds", "inf"], "--max_video_seconds must be positive and finite, got inf"),
        (["--max_video_frames", "0"], "--max_video_frames must be positive, got 0"),
        (["--max_video_frames", "1e9"], "--max_video_frames: invalid int value"),
        (["--max_video_pixels", "-1"], "--max_video_pixels must be positive, got -1"),
        (["--max_new_tokens", "5000"], "--max_new_tokens must be 1 to 1536"),
        (["--temperature", "2"], "--temperature must be 0 to 1"),
        (["--prompt_ids", "theirs"], "invalid choice: 'theirs'"),
    ],
)
def test_bad_flags_are_usage_errors(flags, words, tmp_path):
    status, err = run("--model-name", str(tmp_path), *flags)
    assert status == 2 and words in err, err


def test_missing_examples_folder_is_one_line(tmp_path):
    status, err = run("--model-name", str(tmp_path), "--examples", str(tmp_path / "nope"))
    assert status == 1 and "--examples" in err and "no such file or folder" in err and "Traceback" not in err


def test_help_lists_the_flags():
    status, out = run("--help")
    assert status == 0
    for flag in (
        "--model-name",
        "--projection_path",
        "--lora_path",
        "--vision_tower",
        "--host",
        "--port",
        "--device",
        "--dtype",
        "--max_video_seconds",
        "--max_video_frames",
        "--max_video_pixels",
        "--examples",
    ):
        assert flag in out


def test_a_busy_port_is_one_line_naming_port_before_loading(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # The model folder does not exist: the port is checked first, before anything is loaded.
        status, err = run("--model_name_or_path", str(tmp_path / "no_model"), "--port", str(port))
    assert status == 1 and f"127.0.0.1:{port}" in err and "pass --port" in err, err
    assert "GRADIO_SERVER_PORT" not in err and "Traceback" not in err
