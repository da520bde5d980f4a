"""The layers only import downwards: api -> tasks -> core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_packages(source: str, filename: str = "<source>") -> set[str]:
    """Top-level names of every absolute import in ``source``, wherever it appears (functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def forbidden_imports(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    """Modules under ``package`` that import any of ``forbidden``, with what they import."""
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    offenders = {}
    for path in modules:
        bad = imported_packages(path.read_text(encoding="utf-8"), str(path)) & forbidden
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    return offenders


def test_core_imports_neither_api_nor_tasks() -> None:
    assert forbidden_imports("core", {"api", "tasks"}) == {}


def test_tasks_never_imports_api() -> None:
    assert forbidden_imports("tasks", {"api"}) == {}


@pytest.mark.parametrize(
    "source",
    [
        "import api",
        "import api.app as app",
        "import json, tasks.registry",
        "from tasks.messages import Channel",
        "from api import deps",
        "def f():\n    from tasks import delivery\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from api.app import create_app\n",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    assert imported_packages(source) & {"api", "tasks"}


@pytest.mark.parametrize(
    "source",
    ["import apis", "from core.tasks import x", "from . import tasks", "import core.api", "x = 'import api'"],
)
def test_the_check_ignores_lookalikes(source: str) -> None:
    assert not imported_packages(source) & {"api", "tasks"}
