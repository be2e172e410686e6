"""Projects (`hygge.yml`): a stand-in until the project loader lands; finds no project."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def find_project(start: Path) -> Path | None:
    return None


def load_project(path: Path) -> Any:
    msg = "projects are not supported yet"
    raise NotImplementedError(msg)


def scaffold(target: Path) -> list[Path]:
    msg = "hygge init is not supported yet"
    raise NotImplementedError(msg)
