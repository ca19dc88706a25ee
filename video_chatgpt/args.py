"""Command-line parsing helpers shared by every command (``cli.py`` is only the dispatcher: nothing imports it)."""

from __future__ import annotations

import argparse


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
