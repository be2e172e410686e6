"""Imports run one way: hygge_core <- blocks <- hygge_tasks <- flows.

A module may import from its own package and from the packages below it, never from one above.
An AST walk, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lowest first: each package may import only itself and those before it
FLOORS = ["hygge_core", "blocks", "hygge_tasks", "flows"]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def upward_imports(package: str) -> list[str]:
    allowed = set(FLOORS[: FLOORS.index(package) + 1])
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in FLOORS and top not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", FLOORS)
def test_imports_run_one_way(package: str) -> None:
    assert upward_imports(package) == []


def test_the_walk_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hygge_core").mkdir()
    (tmp_path / "hygge_core" / "bad.py").write_text("def f():\n    from flows.run import hygge\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports("hygge_core") == ["hygge_core/bad.py:2 imports flows.run"]
