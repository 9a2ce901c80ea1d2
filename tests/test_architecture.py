"""The layers of docs/architecture.md: engine has no Qt; the two front ends never import each other.

Checked twice: statically over every module's imports, and dynamically by importing the
packages in a fresh interpreter and looking at ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = {"PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6"}
FORBIDDEN = {
    "engine": QT_MODULES | {"training_cli", "brainsynth_gui", "argparse"},
    "training_cli": QT_MODULES | {"brainsynth_gui"},
    "brainsynth_gui": {"training_cli"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports_in_source(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"layer violations: {offenders}"


def test_the_static_check_can_fail(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import os\nfrom PySide6 import QtCore\n")
    assert "PySide6" in _imported_top_levels(module)


def test_importing_engine_loads_no_qt():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "engine").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import training_cli.main\n"
        f"qt = {sorted(QT_MODULES)!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in qt or m.startswith('brainsynth_gui'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, type-checking-only imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_metrics_never_import_the_evaluation_that_runs_them():
    offenders = {}
    for path in sorted((ROOT / "engine" / "metrics").rglob("*.py")):
        bad = sorted(m for m in _imported_modules(path) if m.startswith("engine.evaluation"))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"engine.metrics must not import engine.evaluation: {offenders}"
    assert "engine.evaluation" in _imported_modules(ROOT / "training_cli" / "commands" / "evaluate.py")  # it can fail
