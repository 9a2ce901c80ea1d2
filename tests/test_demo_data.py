"""Demo population from the MNI152 template: reproducible, varied, MNI-registered NIfTI."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from engine.demo_data import draw_parameters, subject_seed
from engine.errors import BrainSynthError
from engine.geometry import MNI_BOX_SHAPE, mni_box_affine
from training_cli.main import main as cli


def test_parameters_are_reproducible_and_populations_disjoint():
    assert draw_parameters(subject_seed(0, 3)) == draw_parameters(subject_seed(0, 3))
    assert draw_parameters(subject_seed(0, 3)) != draw_parameters(subject_seed(0, 4))
    assert {subject_seed(0, i) for i in range(50)}.isdisjoint({subject_seed(1, i) for i in range(50)})


@pytest.mark.slow
def test_cli_writes_mni_box_volumes_that_differ(tmp_path, capsys):
    assert cli(["demo-data", "--out", str(tmp_path), "--count", "2", "--seed", "7"]) == 0
    files = sorted(tmp_path.glob("*.nii.gz"))
    assert len(files) == 2
    images = [nib.load(f) for f in files]
    for image in images:
        assert image.shape == MNI_BOX_SHAPE
        np.testing.assert_allclose(image.affine, mni_box_affine())
        assert int(image.header["sform_code"]) == 4 and int(image.header["qform_code"]) == 4
    a, b = (np.asarray(i.dataobj) for i in images)
    assert np.isfinite(a).all() and a.min() >= 0
    assert (a > 0).mean() > 0.15  # a whole brain, skull-stripped
    assert a[0, 0, 0] == 0  # background
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.99  # different subjects
    sidecar = json.loads(files[0].with_name(files[0].name.replace(".nii.gz", ".json")).read_text())
    assert "not a patient" in sidecar["kind"] and "Louis Collins" in sidecar["template_notice"]
    # Existing files are never overwritten silently, and nothing is half-written.
    assert cli(["demo-data", "--out", str(tmp_path), "--count", "2", "--seed", "7"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_missing_nilearn_gives_install_hint(monkeypatch, tmp_path):
    from engine.demo_data import DemoTemplate

    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(BrainSynthError, match=r"pip install 'brainsynth\[demo\]'"):
        DemoTemplate.load()
