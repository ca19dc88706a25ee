"""Reading the README's command blocks (``tests/test_readme.py`` checks them; the slow quickstart test runs the
blocks marked ``<!-- doctest: after-quickstart -->``)."""

from __future__ import annotations

import re
import shlex

# The recipe's scripts, by file: the command whose flags they take.
SCRIPTS = {
    "scripts/apply_delta.py": "apply-delta",
    "scripts/convert_instruction_json_to_training_format.py": "convert",
    "scripts/save_spatio_temporal_clip_features.py": "extract-features",
    "video_chatgpt/train/train_mem.py": "train",
}
SUBCOMMANDS = {"data", "sample"}


def command_lines(text: str) -> list[list[str]]:
    """The command lines of the fenced blocks of ``text`` (continuation lines joined, comments and ``...`` cut), as
    argv lists starting at ``video-chatgpt``'s command, a script's path, or after ``torchrun``'s own flags."""
    lines = []
    for block in re.split(r"^```.*$", text, flags=re.M)[1::2]:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].replace("...", " ").strip()
            if not line:
                continue
            words = shlex.split(line)
            if words[0] == "torchrun":
                words = words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]
            if words[0] == "python" and len(words) > 1:
                words = words[1:]
            if words[0] == "video-chatgpt" or words[0] in SCRIPTS:
                lines.append(words)
    return lines


def doctest_blocks(text: str, tag: str = "after-quickstart") -> list[list[str]]:
    """The command lines of the blocks right after ``<!-- doctest: tag -->``."""
    found = []
    for part in text.split(f"<!-- doctest: {tag} -->")[1:]:
        block = part.split("```", 2)[1]
        found += command_lines("```" + block + "```")
    return found
