import importlib

from video_chatgpt.cli import COMMANDS, main


def test_every_command_resolves_to_a_function():
    for name, (target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "train" in capsys.readouterr().out
    assert main(["nope"]) == 2
