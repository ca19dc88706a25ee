"""Dependencies point one way: a test fails on any own-package import against the layering.

The pipeline's stages, each a subpackage: ``weights`` -> ``features`` -> ``data`` -> ``model`` -> ``train`` /
``inference`` -> ``eval``, ``serve`` (the API server); ``sample`` is the offline sample world; ``cli.py`` is the
dispatcher. Shared modules at the top (``constants``, ``errors``, ``files``, ``bases``, ``args``, ``llm_client``) are
below every stage. Every import is read, at module top or inside a function (a lazy import is still an edge).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "video_chatgpt"

# stage -> stages it must never import (the rules of the consolidation issue).
FORBIDDEN = {
    "features": {"model", "train", "inference", "eval", "data"},
    "data": {"model", "train", "inference", "eval"},
    "model": {"train", "inference", "eval"},
    "inference": {"train", "eval"},
    "eval": {"train"},
    "train": {"inference", "eval"},
    "weights": {"features", "data", "model", "train", "inference", "eval"},
    "serve": {"train", "eval", "weights"},
}
# The API server is a leaf too: only cli.py imports it.
IMPORTS_SERVE = {"serve", "cli"}
# Product code never imports the sample world, except these (the quickstart and the sample command).
MAY_IMPORT_SAMPLE = {"quickstart", "sample"}
# The shared modules at the top level import no stage at all.
SHARED = {"constants", "errors", "files", "bases", "args", "llm_client"}


def part_of(module: str) -> str:
    """``video_chatgpt.data.check`` -> ``data``; ``video_chatgpt.cli`` -> ``cli``."""
    return module.split(".")[1] if module.count(".") else module


def own_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every ``video_chatgpt`` import in a file under ``root``, relative imports resolved."""
    module = "video_chatgpt." + ".".join(path.relative_to(root).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "video_chatgpt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] == "video_chatgpt":
                found.append((node.lineno, name))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        here = parts[0]
        for line, target in own_imports(path, root):
            there = part_of(target)
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if there == "cli" and here != "cli":
                out.append(f"{where} (cli.py is the dispatcher: nothing imports it)")
            elif there == "serve" and here not in IMPORTS_SERVE:
                out.append(f"{where} (only cli.py imports serve)")
            elif there in FORBIDDEN.get(here, ()):
                out.append(f"{where} ({here} never imports {there})")
            elif there == "sample" and here not in MAY_IMPORT_SAMPLE:
                out.append(f"{where} (product code never imports the sample world)")
            elif here in SHARED and there not in SHARED and there != here:
                out.append(f"{where} (shared modules import no stage)")
    return out


def test_dependencies_point_one_way():
    assert violations() == []


def test_the_check_sees_a_back_edge(tmp_path):
    """The rule is not vacuous: a copy of the package with one back edge added (data -> model, written as a lazy
    import inside a function) fails, naming the file and line."""
    import shutil

    copy = tmp_path / "video_chatgpt"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "data" / "paths.py"
    target.write_text(target.read_text() + "\n\ndef _back_edge():\n    from video_chatgpt.model import loading\n")
    found = violations(copy)
    assert len(found) == 1 and "data/paths.py" in found[0] and "data never imports model" in found[0]


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_every_stage_exists(stage):
    assert (PACKAGE / stage).is_dir(), f"the layering names a stage {stage!r} the package does not have"
