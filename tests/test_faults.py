"""Fault points are defined once (hygge_core.faults.POINTS): the code uses only those, and a
test that names another one fails instead of silently never firing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hygge_core import faults

ROOT = Path(__file__).resolve().parents[1]


def points_in_code() -> set[str]:
    found = set()
    for package in ("hygge_core", "blocks", "hygge_tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "point"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "faults"
                ):
                    assert isinstance(node.args[0], ast.Constant), f"{path}: a computed point"
                    found.add(node.args[0].value)
    return found


def test_every_point_in_the_code_is_defined_and_every_defined_point_is_used() -> None:
    assert points_in_code() == set(faults.POINTS)


def test_an_undefined_point_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"'publish\.typo' is not a fault point"):
        faults.point("publish.typo")
    monkeypatch.setenv("HYGGE_FAULT", "publish.betwen_files:raise")
    with pytest.raises(ValueError, match=r"names no fault point: 'publish\.betwen_files'"):
        faults.point("stage.after_batch")


def test_a_defined_point_fires_on_its_nth_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    faults.reset()
    monkeypatch.setenv("HYGGE_FAULT", "publish.between_files@2:raise")
    faults.point("publish.between_files")  # first pass: nothing
    faults.point("stage.after_batch")  # another point: nothing
    with pytest.raises(faults.InjectedFault, match=r"injected fault at publish\.between_files"):
        faults.point("publish.between_files")
