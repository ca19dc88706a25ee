"""The README cannot drift from the code: every command line in its code blocks names a real command and only flags
that command accepts; every page it links exists. (The blocks marked ``<!-- doctest: after-quickstart -->`` are also
run, after a real quickstart, by the slow ``tests/test_quickstart.py``.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.readme import SCRIPTS, SUBCOMMANDS, command_lines, doctest_blocks
from video_chatgpt.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _command_and_flags(words: list[str]) -> tuple[str, list[str]]:
    if words[0] in SCRIPTS:
        command, rest = SCRIPTS[words[0]], words[1:]
    else:
        command, rest = words[1], words[2:]
        if command in SUBCOMMANDS and rest and not rest[0].startswith("-"):
            command, rest = f"{command} {rest[0]}", rest[1:]
    return command, [w.split("=")[0] for w in rest if w.startswith("--")]


def _help_text(command: str, capsys) -> str:
    flag = "--help-all" if command in ("train", "plan-memory") else "--help"
    try:
        main([*command.split(), flag])
    except SystemExit:
        pass
    return capsys.readouterr().out


def test_every_readme_command_is_real_with_flags_it_accepts(capsys):
    lines = command_lines(README.read_text())
    assert len(lines) >= 15, "the README's command blocks were not found"
    helps: dict[str, str] = {}
    for words in lines:
        command, flags = _command_and_flags(words)
        assert command.split()[0] in COMMANDS, f"README: unknown command in {' '.join(words)}"
        if command not in helps:
            helps[command] = _help_text(command, capsys)
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", helps[command]), f"README: {command} has no {flag}"


def test_the_doctest_block_is_found_and_runs_only_commands():
    runnable = doctest_blocks(README.read_text())
    assert [w[1] for w in runnable] == ["chat", "data", "report", "plan-memory"]
    assert all("runs/quickstart" in " ".join(w) for w in runnable)


def test_every_linked_page_exists():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    local = [link for link in links if not link.startswith("http")]
    assert local, "no local links found"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing pages: {missing}"
    assert "../shared" not in text and "the document" not in text


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_links_stay_inside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (page.parent / link).exists(), f"{page.name}: missing link target {link}"
