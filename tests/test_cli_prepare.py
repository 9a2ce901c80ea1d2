"""``brainsynth-cli prepare``: real files in, prepared NIfTI + sidecars out, bad inputs skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.specs import get_preset
from tests.helpers_volumes import write_nifti, write_phantom
from training_cli.main import main

REPO = Path(__file__).resolve().parents[1]


def _prepare(*args) -> int:
    return main(["prepare", *map(str, args)])


def test_prepare_writes_nifti_and_sidecar(tmp_path, capsys):
    scan = write_phantom(tmp_path / "sub-01_T1w.nii.gz")
    out = tmp_path / "prepared"
    assert _prepare("--preset", "tiny", scan, "--out", out) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.strip() == f"prepared 1 of 1 scans onto the tiny grid (16 x 24 x 16) in {out}"
    assert sorted(p.name for p in out.iterdir()) == ["sub-01_T1w.json", "sub-01_T1w.nii.gz"]

    spec = get_preset("tiny")
    img = nib.load(out / "sub-01_T1w.nii.gz")
    assert img.shape == spec.grid.shape
    np.testing.assert_allclose(img.affine, spec.grid.affine, atol=1e-5)
    assert int(img.get_sform(coded=True)[1]) == 4
    assert int(img.get_qform(coded=True)[1]) == 4
    data = img.get_fdata()
    assert data.min() == 0.0
    assert data.max() == pytest.approx(spec.intensity.scale)

    meta = json.loads((out / "sub-01_T1w.json").read_text())
    assert meta["source"] == str(scan.resolve())
    assert meta["preset"] == "tiny"
    assert meta["grid"]["shape"] == [16, 24, 16]
    assert meta["scale_factor"] > 0


def test_same_scan_as_ras_and_lps_gives_the_same_output(tmp_path):
    (tmp_path / "in").mkdir()
    write_phantom(tmp_path / "in" / "ras.nii.gz")
    write_phantom(tmp_path / "in" / "lps.nii.gz", axcodes="LPS")
    out = tmp_path / "out"
    assert _prepare(tmp_path / "in", "--out", out) == 0  # default preset: demo
    ras = nib.load(out / "ras.nii.gz")
    lps = nib.load(out / "lps.nii.gz")
    assert ras.shape == get_preset("demo").grid.shape
    np.testing.assert_allclose(lps.affine, ras.affine)
    np.testing.assert_allclose(lps.get_fdata(), ras.get_fdata(), atol=1e-5 * 1000)


def test_bad_inputs_are_skipped_one_by_one(tmp_path, capsys):
    good = write_phantom(tmp_path / "good.nii.gz", shape=(30, 36, 30))
    four_d = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(np.ones((64, 64, 30, 2), np.float32), np.eye(4)), four_d)
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    missing = tmp_path / "missing.nii"
    out = tmp_path / "out"

    status = _prepare("--preset", "tiny", good, four_d, text, missing, "--out", out)
    assert status == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    assert errors[0].startswith(f"skipped {four_d}: scan.mgz is 4-D (64x64x30x2); a 3-D T1 volume is needed")
    assert errors[1].startswith(f"skipped {text}: notes.nii.gz is not a readable NIfTI image")
    assert errors[2].startswith(f"skipped {missing}:")
    assert "does not exist" in errors[2]
    assert captured.out.strip().endswith("; 3 skipped")
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.nii.gz"]


def test_unregistered_scan_is_skipped_with_the_reason(tmp_path, capsys):
    data, affine = np.zeros((30, 30, 30), np.float32), np.eye(4)
    data[5:25, 5:25, 5:25] = 100.0
    affine[:3, 3] = (300.0, 300.0, 300.0)
    scan = write_nifti(tmp_path / "raw.nii.gz", data, affine)
    good = write_phantom(tmp_path / "good.nii.gz", shape=(30, 36, 30))
    assert _prepare("--preset", "tiny", scan, good, "--out", tmp_path / "out") == 1
    assert "registered to MNI152 space first" in capsys.readouterr().err
    assert not (tmp_path / "out" / "raw.nii.gz").exists()


def test_none_usable_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.nii"
    bad.write_text("nope")
    assert _prepare(bad, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "skipped" in err
    assert "brainsynth-cli prepare: error: none of the 1 input scan could be used" in err
    assert not (tmp_path / "out").exists()


def test_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _prepare(tmp_path / "empty", "--out", tmp_path / "out") == 1
    assert "no scans found" in capsys.readouterr().err


def test_existing_output_is_skipped_unless_overwrite(tmp_path, capsys):
    scan = write_phantom(tmp_path / "s.nii.gz", shape=(30, 36, 30))
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.nii.gz").write_bytes(b"keep me")
    assert _prepare("--preset", "tiny", scan, "--out", out) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "s.nii.gz").read_bytes() == b"keep me"
    assert not (out / "s.json").exists()
    assert _prepare("--preset", "tiny", scan, "--out", out, "--overwrite") == 0
    assert nib.load(out / "s.nii.gz").shape == (16, 24, 16)


def test_two_inputs_with_one_name(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    a = write_phantom(tmp_path / "a" / "s.nii.gz", shape=(30, 36, 30))
    b = write_phantom(tmp_path / "b" / "s.nii.gz", shape=(30, 36, 30))
    assert _prepare("--preset", "tiny", a, b, "--out", tmp_path / "out", "--overwrite") == 1
    assert f"skipped {b}: {a} is also named s" in capsys.readouterr().err


def test_unknown_preset(tmp_path, capsys):
    scan = write_phantom(tmp_path / "s.nii.gz", shape=(30, 36, 30))
    assert _prepare("--preset", "huge", scan, "--out", tmp_path / "out") == 1
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_subprocess_entry_point(tmp_path):
    scan = write_phantom(tmp_path / "s.nii.gz", shape=(30, 36, 30))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "training_cli", "prepare", "--preset", "tiny", str(scan), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prepared 1 of 1 scans")
    assert (tmp_path / "o" / "s.nii.gz").is_file()
    assert (tmp_path / "o" / "s.json").is_file()
