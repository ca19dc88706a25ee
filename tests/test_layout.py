"""The test suite's layout: no module under ``tests/`` imports a test module (``test_*.py``) or a ``conftest.py``.

Shared helpers live in the ``tests/helpers`` package (and the other non-test modules beside the tests); fixtures live
in the ``conftest.py`` files, where pytest finds them. A test module importing another one runs the other's fixtures
twice (a module-scoped fixture imported into a second module is built again there) and breaks when that module is
renamed; importing a conftest loads it a second time beside pytest's own copy.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    """``tests/train/test_lora.py`` -> ``tests.train.test_lora``."""
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def is_test_or_conftest(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module.split(".", 1)[0] == "tests" and (last.startswith("test_") or last == "conftest")


def forbidden_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for each import of a test module or a conftest in ``source`` (the text of
    ``module``); relative imports are resolved, and ``from a import b`` counts ``a.b`` (b may be a module)."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.module else []
            if node.level:  # from . import x (level 1: this package), from .. import x (its parent), ...
                base = package[: len(package) - node.level + 1] + base
            names = [".".join(base)] + [".".join([*base, alias.name]) for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if is_test_or_conftest(name)]
    return found


def test_no_module_under_tests_imports_a_test_module_or_a_conftest():
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line} imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, name in forbidden_imports(path.read_text(), module_name(path))
    ]
    assert not offenders, "move what is shared to tests/helpers (fixtures: to a conftest.py):\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source, flagged",
    [
        pytest.param("from tests.train.test_train import ENV", ["tests.train.test_train"], id="from-test-module"),
        pytest.param("import tests.data.test_inspect", ["tests.data.test_inspect"], id="import"),
        pytest.param("from tests.demo import test_client", ["tests.demo.test_client"], id="from-package"),
        pytest.param("from .test_client import SECOND_QUESTION", ["tests.demo.test_client"], id="relative"),
        pytest.param("from ..data.test_inspect import make_training_data", ["tests.data.test_inspect"], id="parent"),
        pytest.param("def f():\n    from tests.conftest import REPO", ["tests.conftest"], id="in-function"),
        pytest.param("from .conftest import QUESTION", ["tests.demo.conftest"], id="conftest"),
        pytest.param("from tests.helpers import REPO\nfrom tests.bases.world import make_world", [], id="helpers"),
        pytest.param("from video_chatgpt.train.train import train", [], id="package"),
    ],
)
def test_the_check_sees_each_form_of_import(source, flagged):
    assert [name for _, name in forbidden_imports(source, "tests.demo.test_browser")] == flagged


def test_no_test_module_shadows_the_standard_library():
    # A script run from a tests folder (tests/helpers/fsdp_probe.py under torchrun) has that folder first on
    # sys.path: a tests/helpers/http.py there hid the standard library's http, and torch's import failed.
    shadowing = sorted(
        str(path.relative_to(TESTS.parent))
        for path in TESTS.rglob("*.py")
        if path.stem in sys.stdlib_module_names and path.stem != "__init__"
    )
    assert not shadowing, f"rename these: they hide standard-library modules of the same name: {shadowing}"
