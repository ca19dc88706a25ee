"""Evaluation test helpers: prediction files and the evaluate command against a scripted judge server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from video_chatgpt.cli import main as cli_main

KEY_ENV = "VCG_TEST_JUDGE_KEY"
SECRET = "sk-test-SECRET-4f1c9e"


def write_preds(path: Path, n: int, consistency: bool = False, start: int = 0) -> Path:
    if consistency:
        records = [
            {
                "video_name": f"v{i}",
                "Q1": f"q{i}",
                "Q2": f"q{i} again",
                "A": f"a{i}",
                "pred1": f"p{i}",
                "pred2": f"p{i}",
            }
            for i in range(start, start + n)
        ]
    else:
        records = [
            {"video_name": f"v{i % 3}", "Q": f"q{i}", "A": f"a{i}", "pred": f"p{i}"} for i in range(start, start + n)
        ]
    path.write_text(json.dumps(records))
    return path


def evaluate(server, *argv, capsys=None, key=True):
    env_before = os.environ.get(KEY_ENV)
    if key:
        os.environ[KEY_ENV] = SECRET
    try:
        status = cli_main(
            [
                "evaluate",
                "--api_base",
                server.api_base,
                "--api_key_env",
                KEY_ENV,
                "--judge_model",
                "judge-x",
                "--backoff",
                "0.02",
                "--max_backoff",
                "5",
                *map(str, argv),
            ]
        )
    finally:
        if env_before is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = env_before
    out = capsys.readouterr() if capsys else None
    return status, out
