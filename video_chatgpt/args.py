"""Command-line parsing helpers shared by every command (``cli.py`` is only the dispatcher: nothing imports it)."""

from __future__ import annotations

import argparse
import os
import sys
from itertools import takewhile


def parse_bool(text: str) -> bool:
    """``True``/``False`` as the training flags spell them (``--mm_use_vid_start_end False``), for argparse."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_args_or_status(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed flags, or the exit status argparse chose (0 for --help, 2 for bad flags) instead of exiting."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


# The entry scripts the user's document runs by file name (python or torchrun); they name themselves.
DOCUMENT_SCRIPTS = frozenset(
    {"apply_delta.py", "convert_instruction_json_to_training_format.py", "save_spatio_temporal_clip_features.py",
     "train_mem.py", "train.py"}
)  # fmt: skip


def program(command: str) -> str:
    """The name usage lines and errors show: the script's file name when one of the document's scripts runs
    (``scripts/apply_delta.py``, ``train_mem.py`` under python or torchrun), else ``video-chatgpt <command>``."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script if script in DOCUMENT_SCRIPTS else f"video-chatgpt {command}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines), and each flag's default after its help unless the
    help already says it or there is none to show (None, False, an empty string)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, "", argparse.SUPPRESS)
        if shown and action.option_strings and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)" if text else "default: %(default)s"
        return text


def help_summary(doc: str | None) -> str | None:
    """A docstring cut for ``--help``: its first paragraph and the indented example blocks right after it (the
    reference text below them stays in the docstring and the docs)."""
    if not doc:
        return doc
    first, *rest = doc.strip("\n").split("\n\n")
    return "\n\n".join([first, *takewhile(lambda paragraph: paragraph.startswith("    "), rest)])


def command_parser(command: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the right program name, the docstring's summary as description and the shared
    help format (flags with their defaults, one line each where they fit in 118 columns)."""
    return argparse.ArgumentParser(
        prog=program(command),
        description=help_summary(description),
        formatter_class=lambda prog: HelpFormatter(prog, max_help_position=36, width=118),
        **kwargs,
    )
