import importlib

from tests.helpers import REPO
from video_chatgpt.cli import COMMANDS, main


def test_every_command_resolves_to_a_function():
    for name, (target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "train" in capsys.readouterr().out
    assert main(["nope"]) == 2


# ----------------------------------------------------------------------------------- the one error path
def test_run_main_statuses_and_one_line_messages(capsys):
    import errno

    import pytest

    from video_chatgpt.errors import UserError, run_main

    def raising(exc):
        def func(argv):
            raise exc

        return func

    assert run_main(raising(UserError("x.json: broken; fix it")), [], "prog") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "prog: error: x.json: broken; fix it" and "Traceback" not in err
    assert run_main(raising(OSError(errno.ENOSPC, "No space left on device", "/d/f")), [], "prog") == 1
    assert "prog: error: no space left on the device: /d/f" in capsys.readouterr().err
    assert run_main(raising(FileExistsError(errno.EEXIST, "File exists", "/d/a_file")), [], "prog") == 1
    assert "a file is in the way" in capsys.readouterr().err
    assert run_main(raising(KeyboardInterrupt()), [], "prog") == 130
    assert capsys.readouterr().err.strip() == "prog: interrupted"
    with pytest.raises(UserError):  # --debug: the traceback
        run_main(raising(UserError("x")), ["--debug"], "prog")
    with pytest.raises(RuntimeError):  # a bug is not a user error: it keeps its traceback
        run_main(raising(RuntimeError("bug")), [], "prog")
    seen = []
    assert run_main(lambda argv: seen.append(argv) or 0, ["a", "--debug", "b"], "prog") == 0
    assert seen == [["a", "b"]]


def test_documented_scripts_take_the_one_error_path(tmp_path):
    """scripts/apply_delta.py and scripts/convert_instruction_json_to_training_format.py: one line + exit 1 like
    `video-chatgpt <command>`, the traceback only with --debug."""
    import subprocess
    import sys

    scripts = {
        "scripts/apply_delta.py": [
            "--base-model-path",
            str(tmp_path / "nope"),
            "--delta-path",
            str(tmp_path),
            "--target-model-path",
            str(tmp_path / "t"),
        ],
        "scripts/convert_instruction_json_to_training_format.py": [
            "--input_json_file",
            str(tmp_path / "nope.json"),
            "--output_json_file",
            str(tmp_path / "o.json"),
        ],
    }
    for script, argv in scripts.items():
        proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        prog = script.split("/")[-1] if "convert" in script else script
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith(f"{prog}: error: ") and "nope" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        debug = subprocess.run(
            [sys.executable, script, *argv, "--debug"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr[-1000:]
