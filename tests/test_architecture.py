"""Imports follow the data flow: models -> export -> serving, and inside serving
protocols -> pipeline -> executor (docs/architecture.md). Read from the source, not run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "models": ("seismag.export", "seismag.serving", "seismag.training", "seismag.benchmarks"),
    "export": ("seismag.serving", "seismag.training", "seismag.benchmarks"),
    "serving": ("seismag.export", "seismag.training", "seismag.benchmarks"),
    "serving/executor": ("seismag.serving.pipeline", "seismag.serving.protocols"),
    "serving/pipeline": ("seismag.serving.protocols", "seismag.serving.archive"),
    "serving/archive": ("seismag.serving.protocols",),
    "training": ("seismag.serving", "seismag.benchmarks"),
}
"""Folder -> modules no file in it may import (at module level or inside a function)."""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_runs_against_the_data_flow(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[folder]:
                if name == banned or name.startswith(banned + "."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)
