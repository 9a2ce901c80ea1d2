"""Release hygiene: sdist and wheel carry the resources and licences and install cleanly, one
version everywhere, the dependency lock covers pyproject.toml, and the packaging files (desktop
bundle spec, .desktop entry, Apptainer definition, SLURM templates) agree with each other.

The desktop bundle itself is built and tested by ``make bundle`` / ``make bundle-smoke`` (it takes
minutes); the Apptainer image cannot be built here, so its definition is checked as text.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from engine import __version__

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "packaging" / "requirements-lock.txt"
LOCK_NOTORCH = ROOT / "packaging" / "requirements-lock-notorch.txt"
DEFINITION = ROOT / "packaging" / "apptainer" / "brainsynth.def"
DESKTOP = ROOT / "packaging" / "desktop"


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist (as a release is made)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (sdist,) = out.glob("brainsynth-*.tar.gz")
    (wheel,) = out.glob("brainsynth-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def wheel(dists) -> Path:
    return dists["wheel"]


def test_wheel_holds_packages_resources_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "engine/checkpoint.py",
        "training_cli/main.py",
        "brainsynth_gui/app.py",
        "resources/icons/brainsynth.svg",
    ):
        assert expected in names, expected
    assert "resources/icons/brainsynth.png" in names
    assert not any(n.startswith(("tests/", "packaging/", "benchmarks/")) for n in names)
    assert f"brainsynth-{__version__}.dist-info/licenses/LICENSE" in names
    assert f"brainsynth-{__version__}.dist-info/licenses/NOTICE" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "brainsynth-cli = training_cli.main:main" in text
    assert "brainsynth = brainsynth_gui.app:main" in text


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
    assert exists == "True"
    assert path.startswith(str(target))


@pytest.mark.parametrize("command", [["-m", "training_cli"], ["-m", "brainsynth_gui.app"]])
def test_version_from_both_entry_points(command):
    out = subprocess.run([sys.executable, *command, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"brainsynth {__version__}"


def test_sdist_holds_sources_resources_tests_and_licences(dists):
    assert dists["sdist"].name == f"brainsynth-{__version__}.tar.gz"
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for expected in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "NOTICE",
        "CHANGELOG.md",
        "engine/__init__.py",
        "brainsynth_gui/about.py",
        "training_cli/main.py",
        "resources/__init__.py",
        "resources/icons/brainsynth.svg",
        "resources/icons/brainsynth.png",
        "tests/conftest.py",
    ):
        assert expected in names, expected
    assert not any(n.startswith((".venv/", "dist/", "build/")) or "__pycache__" in n for n in names)


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_both_entry_points_answer(wheel, tmp_path):
    """pip install --no-deps into a new venv; the dependencies come from this environment."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
    )
    python = venv / "bin" / "python"
    # A venv made from a venv sees the base interpreter's site-packages, not ours: point it at ours
    # too (a .pth line only adds the folder; the editable install's finder there is not run).
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import site

    Path(purelib, "outer-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    for script in ("brainsynth-cli", "brainsynth"):
        out = subprocess.run(
            [str(venv / "bin" / script), "--version"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == f"brainsynth {__version__}"
    code = (
        "import engine, training_cli, brainsynth_gui; from engine.resources import resource_path; "
        "print(engine.__file__); print(training_cli.__file__); print(brainsynth_gui.__file__); "
        "print(resource_path('icons/brainsynth.png').is_file())"
    )
    out = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    *files, icon_found = out.stdout.split()
    assert all(f.startswith(purelib) for f in files), files  # the wheel's copy, not the source tree
    assert icon_found == "True"


def test_version_has_one_source():
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engine.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?", __version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    first_release = re.search(r"^## \[(\d[^\]]*)\]", changelog, re.MULTILINE)
    assert first_release, "CHANGELOG.md's latest section is not __version__"
    assert first_release.group(1) == __version__, "CHANGELOG.md's latest section is not __version__"


# -- the dependency lock ------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """{canonical name: (pinned version, number of hashes)} of a pip-compile/uv lock file."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        name, sep, rest = first.partition("==")
        assert sep, f"{path.name}: {first!r} is not pinned with =="
        version = rest.split(";")[0].strip()
        pins[canonicalize_name(name)] = (version, block.count("--hash=sha256:"))
    return pins


def test_lock_pins_every_runtime_dependency_within_its_range_with_hashes():
    pins = read_lock(LOCK)
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is missing from {LOCK.name}: run make lock"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {req.specifier}"
    assert all(n_hashes >= 1 for _, n_hashes in pins.values()), "every pin needs a hash (--require-hashes)"
    torch_pin = (ROOT / "packaging" / "lock-constraints.txt").read_text().split("torch==")[1].split()[0]
    assert pins["torch"][0] == torch_pin == "2.13.0"


def test_lock_without_torch_is_the_same_resolution_minus_torch_and_its_cuda_wheels():
    full, notorch = read_lock(LOCK), read_lock(LOCK_NOTORCH)
    cuda_side = {n for n in full if n in {"torch", "triton"} or n.startswith(("nvidia-", "cuda-"))}
    assert {"torch"} <= cuda_side
    assert notorch == {n: v for n, v in full.items() if n not in cuda_side}


def test_makefile_lock_target_writes_the_lock_the_container_installs():
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := packaging/requirements-lock.txt" in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE)
    assert "--generate-hashes" in makefile
    assert "--constraint packaging/lock-constraints.txt" in makefile


# -- the Apptainer definition -------------------------------------------------------------------

APPTAINER_SECTIONS = {
    "setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help", "arguments",
    "app", "apprun", "applabels", "appinstall", "appenv", "apphelp", "appfiles", "apptest",
}  # fmt: skip


def definition_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, {section: body}) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("%"):
            current = stripped[1:].split()[0]
            assert current in APPTAINER_SECTIONS, f"unknown section %{current}"
            assert current not in sections, f"%{current} twice"
            sections[current] = ""
        elif current is None:
            if stripped and not stripped.startswith("#"):
                key, sep, value = stripped.partition(":")
                assert sep, f"header line {stripped!r} is not 'Keyword: value'"
                assert value.strip(), f"header line {stripped!r} is not 'Keyword: value'"
                header[key.strip()] = value.strip()
        else:
            sections[current] += line + "\n"
    return header, sections


def test_apptainer_definition_has_the_required_parts():
    header, sections = definition_sections(DEFINITION.read_text())
    assert header == {"Bootstrap": "docker", "From": header["From"]}
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", header["From"]), "pin the base image by tag"
    assert {"post", "runscript", "labels", "help", "files", "environment", "test"} <= set(sections)
    assert 'exec brainsynth-cli "$@"' in sections["runscript"]
    for line in sections["labels"].strip().splitlines():
        assert len(line.split(None, 1)) == 2, f"label without a value: {line!r}"


def test_apptainer_installs_from_the_lock_the_readme_and_makefile_use():
    _, sections = definition_sections(DEFINITION.read_text())
    post, files = sections["post"], sections["files"]
    # %files brings build/apptainer/, which `make sif` fills with the wheel and both lock files.
    assert files.split() == ["build/apptainer", "/opt/brainsynth-dist"]
    makefile = (ROOT / "Makefile").read_text()
    sif_recipe = makefile.split("\nsif:", 1)[1].split("\n\n", 1)[0]
    assert "--outdir build/apptainer" in sif_recipe
    assert "cp $(LOCK) packaging/requirements-lock-notorch.txt build/apptainer/" in sif_recipe
    assert "--require-hashes -r /opt/brainsynth-dist/requirements-lock.txt" in post
    assert "--require-hashes -r /opt/brainsynth-dist/requirements-lock-notorch.txt" in post
    assert "install --no-deps /opt/brainsynth-dist/brainsynth-*.whl" in post
    assert "{{ TORCH_INDEX }}" in post
    assert "TORCH_INDEX=pypi" in sections["arguments"]
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=post, text=True, check=True)  # the %post script parses


def test_readme_installs_from_the_same_lock():
    readme = (ROOT / "README.md").read_text()
    if "## Packaging" not in readme:
        pytest.skip("README.md has no Packaging section yet")
    assert "packaging/requirements-lock.txt" in readme


def test_apptainer_build_dry_run_where_apptainer_exists():
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if apptainer is None:
        pytest.skip("apptainer is not installed here (Debian 12 does not package it)")
    out = subprocess.run([apptainer, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()


def test_slurm_templates_show_the_container():
    for name in ("train_multinode.sbatch", "sample_multigpu.sbatch", "README.md"):
        text = (ROOT / "packaging" / "slurm" / name).read_text()
        assert "apptainer exec --nv" in text, name
        assert "brainsynth.sif" in text, name


# -- the desktop bundle's files ---------------------------------------------------------------


def test_bundle_entry_scripts_call_the_installed_entry_points():
    scripts = {**PYPROJECT["project"]["scripts"], **PYPROJECT["project"]["gui-scripts"]}
    for exe, entry in scripts.items():
        module, func = entry.split(":")
        source = (DESKTOP / f"entry_{exe.replace('-', '_')}.py").read_text()
        assert f"from {module} import {func}" in source, exe
        assert "freeze_support()" in source
    spec = (DESKTOP / "brainsynth.spec").read_text()
    ast.parse(spec)
    for exe in scripts:
        assert f'name="{exe}"' in spec
    assert "entry_brainsynth.py" in spec
    assert "entry_brainsynth_cli.py" in spec
    assert any(r.startswith("pyinstaller") for r in PYPROJECT["project"]["optional-dependencies"]["bundle"])


def test_desktop_entry():
    text = (DESKTOP / "brainsynth.desktop").read_text()
    entry = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert text.startswith("[Desktop Entry]")
    assert entry["Type"] == "Application"
    assert entry["Name"] == "BrainSynth"
    assert entry["Exec"].split()[0] == "brainsynth"
    assert entry["Icon"] == "brainsynth"
    assert entry["Terminal"] == "false"
    assert entry["Categories"].endswith(";")
    validate = shutil.which("desktop-file-validate")
    if validate:
        subprocess.run([validate, str(DESKTOP / "brainsynth.desktop")], check=True, capture_output=True)


def test_png_icon_is_rendered_from_the_svg():
    from PIL import Image

    with Image.open(ROOT / "resources" / "icons" / "brainsynth.png") as icon:
        assert icon.size == (256, 256)
        assert icon.mode == "RGBA"
        assert icon.getpixel((0, 0))[3] == 0
        assert icon.getpixel((128, 128))[3] == 255
