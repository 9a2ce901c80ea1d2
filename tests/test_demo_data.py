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
        assert int(image.header["sform_code"]) == 4
        assert int(image.header["qform_code"]) == 4
    a, b = (np.asarray(i.dataobj) for i in images)
    assert np.isfinite(a).all()
    assert a.min() >= 0
    assert (a > 0).mean() > 0.15  # a whole brain, skull-stripped
    assert a[0, 0, 0] == 0  # background
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.99  # different subjects
    sidecar = json.loads(files[0].with_name(files[0].name.replace(".nii.gz", ".json")).read_text())
    assert "not a patient" in sidecar["kind"]
    assert "Louis Collins" in sidecar["template_notice"]
    # Existing files are never overwritten silently, and nothing is half-written.
    assert cli(["demo-data", "--out", str(tmp_path), "--count", "2", "--seed", "7"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_missing_nilearn_gives_install_hint(monkeypatch, tmp_path):
    from engine.demo_data import DemoTemplate

    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(BrainSynthError, match=r"pip install 'brainsynth\[demo\]'"):
        DemoTemplate.load()


def test_age_sex_and_group_are_drawn_as_documented():
    from engine.demo_data import AGE_RANGE, is_ftd_subject

    people = [draw_parameters(subject_seed(0, i)) for i in range(400)]
    ages = np.array([p.age for p in people])
    atrophy = np.array([p.atrophy for p in people])
    assert AGE_RANGE[0] <= ages.min()
    assert ages.max() <= AGE_RANGE[1]
    assert np.corrcoef(ages, atrophy)[0, 1] > 0.8  # ageing drives atrophy (hence ventricle size)
    heads = {s: np.mean([np.prod(p.scale) ** (1 / 3) for p in people if p.sex == s]) for s in ("F", "M")}
    assert 0.03 < heads["M"] - heads["F"] < 0.07
    assert all(p.group == "control" and p.ftd_severity == 0 for p in people)
    ftd = draw_parameters(subject_seed(0, 3), ftd=True)
    assert ftd.group == "ftd"
    assert 0.5 <= ftd.ftd_severity <= 1
    assert ftd.age == people[3].age
    # Any first n subjects hold the share to within one, so a larger population extends a smaller one.
    for n in (4, 10, 33, 96):
        assert abs(sum(is_ftd_subject(1, i, 0.25) for i in range(n)) - 0.25 * n) <= 1


@pytest.mark.slow
def test_the_ftd_pattern_is_frontal_and_writes_participants(tmp_path):
    from engine.demo_data import DemoTemplate, build_population, synthesize_subject

    template = DemoTemplate.load()
    seed = subject_seed(0, 5)
    control = synthesize_subject(template, draw_parameters(seed))
    ftd = synthesize_subject(template, draw_parameters(seed, ftd=True))
    # y (axis 1) runs posterior to anterior: voxel 126 is y = 0 mm in the MNI box.
    front, back = (slice(None), slice(140, None)), (slice(None), slice(0, 90))
    frontal_loss = 1 - ftd[front].sum() / control[front].sum()
    posterior_loss = 1 - ftd[back].sum() / control[back].sum()
    assert frontal_loss > 0.03
    assert abs(posterior_loss) < 0.01

    build_population(tmp_path, count=4, seed=9, ftd_fraction=0.5)
    lines = (tmp_path / "participants.tsv").read_text().splitlines()
    assert lines[0] == "participant_id\tage\tsex\tgroup"
    assert len(lines) == 5
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [f"demo_s9_{i:04d}" for i in range(4)]
    assert sorted(r[3] for r in rows) == ["control", "control", "ftd", "ftd"]
    assert all(45 <= float(r[1]) <= 85 and r[2] in ("F", "M") for r in rows)
