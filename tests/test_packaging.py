"""The package installs from a wheel with its resources, and both entry points answer."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("brainsynth-*.whl")
    return path


def test_wheel_holds_packages_resources_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "engine/checkpoint.py",
        "training_cli/main.py",
        "brainsynth_gui/app.py",
        "resources/icons/brainsynth.svg",
    ):
        assert expected in names, expected
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "brainsynth-cli = training_cli.main:main" in text and "brainsynth = brainsynth_gui.app:main" in text


def test_installed_wheel_finds_its_resources(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "from engine.resources import resource_path; p = resource_path('icons/brainsynth.svg'); print(p, p.is_file())"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    path, exists = out.stdout.split()
    assert exists == "True" and path.startswith(str(target))


@pytest.mark.parametrize("command", [["-m", "training_cli"], ["-m", "brainsynth_gui.app"]])
def test_version_from_both_entry_points(command):
    out = subprocess.run([sys.executable, *command, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"brainsynth {__version__}"
