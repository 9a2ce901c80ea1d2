"""The display pipeline: real and synthetic cases come out alike, and nothing but content leaks."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from engine.study import DisplayCase, StudyDatabase, StudyError
from engine.study.display import DisplaySettings, display_array
from tests.helpers_study import make_pools
from tests.helpers_volumes import phantom, write_nifti


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pools"))


@pytest.fixture
def study(tmp_path, pools):
    real, synthetic = pools
    db = StudyDatabase(tmp_path / "studies.sqlite")
    db.create_study(name="blind", real=[real], synthetic=[synthetic], readers=["ana"], seed=3)
    yield db
    db.close()


def _truth(db: StudyDatabase, number: int) -> str:
    session = db.session("blind", "ana")
    session.answer(number, {"confidence": 3, "realism": 3, "plausibility": 3, "consistency": 3})
    return next(r.truth for r in db.answer_records("blind") if r.case_number == number)


def test_real_and_synthetic_cases_look_alike_to_the_code(study, pools):
    session = study.session("blind", "ana")
    assert session.study.display.preset == "tiny"  # inferred from the synthetic exports' grid
    cases = {n: session.load_case(n) for n in session.order()}
    truths = {n: _truth(study, n) for n in cases}
    assert sorted(truths.values()) == ["real"] * 3 + ["synthetic"] * 3
    real_file = pools[0] / "sub-0042_T1w.nii.gz"
    assert "".join(nib.aff2axcodes(nib.load(real_file).affine)) == "LPS"  # the weird one is in the pool

    for number, case in cases.items():
        assert isinstance(case, DisplayCase)
        assert {f.name for f in dataclasses.fields(case)} == {"number", "data", "window", "spacing_mm", "affine"}
        assert case.number == number
        assert case.data.shape == (16, 24, 16)
        assert case.data.dtype == np.float32
        assert case.data.flags.c_contiguous
        assert not case.data.flags.writeable
        assert not case.affine.flags.writeable
        assert case.window == (0.0, 1000.0)
        # the same range convention for both kinds: background exactly 0, brain top at the scale
        assert case.data.min() == 0.0
        assert case.data.max() == pytest.approx(1000.0)
        assert np.percentile(case.data[case.data > 0], 99.5) == pytest.approx(1000.0, rel=0.02)
        assert (case.data == 0).mean() > 0.3
        text = repr(case) + str(case)
        assert "sub-" not in text
        assert "synthetic" not in text
        assert "seed" not in text
        assert "DOE" not in text

    first = cases[next(iter(cases))]
    for case in cases.values():
        np.testing.assert_array_equal(case.affine, first.affine)
        assert case.spacing_mm == first.spacing_mm


def test_storage_orientation_and_header_do_not_change_the_display(tmp_path):
    from engine.specs import PRESETS

    settings = DisplaySettings.from_spec(PRESETS["tiny"])
    data, affine = phantom()
    ras = write_nifti(tmp_path / "ras.nii.gz", data, affine)
    lps = write_nifti(tmp_path / "lps.nii.gz", data * 7.0, affine, axcodes="LPS")  # other units, other axes
    np.testing.assert_allclose(display_array(ras, settings), display_array(lps, settings), atol=1e-2)


def test_changed_or_missing_case_files_are_refused_without_naming_them(tmp_path, pools):
    real, synthetic = pools
    pool = tmp_path / "copy"
    pool.mkdir()
    copies = []
    for src in [*real.glob("*.nii.gz")]:
        dst = pool / src.name
        dst.write_bytes(src.read_bytes())
        copies.append(dst)
    with StudyDatabase(tmp_path / "s.sqlite") as db:
        db.create_study(name="s", real=copies, synthetic=[synthetic], readers=["ana"], seed=1)
        session = db.session("s", "ana")
        numbers = {}
        for n in session.order():
            session.load_case(n)
        copies[0].write_bytes(copies[1].read_bytes())  # replaced after the study was created
        copies[2].unlink()
        problems = db.check_cases("s")
        assert len(problems) == 2
        assert any("changed since the study was created" in p for p in problems)
        assert any("is missing" in p for p in problems)
        for n in session.order():
            try:
                session.load_case(n)
            except StudyError as exc:
                numbers[n] = str(exc)
        assert len(numbers) == 2
        for n, message in numbers.items():
            assert message.startswith(f"case {n} cannot be shown")
            assert "sub-" not in message
            assert str(tmp_path) not in message


def test_unusable_volumes_are_reported_at_creation(tmp_path, pools):
    real, synthetic = pools
    data, affine = phantom(shift_mm=(0.0, 0.0, 0.0))
    unregistered = write_nifti(tmp_path / "scanner_space.nii.gz", data, _shift(0, 0, 200) @ affine)
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), four_d)
    with StudyDatabase(tmp_path / "s.sqlite") as db:
        with pytest.raises(StudyError) as info:
            db.create_study(name="s", real=[real, unregistered, four_d], synthetic=[synthetic], readers=["ana"])
        message = str(info.value)
        assert message.startswith("2 of 8 volumes cannot be used")
        assert "scanner_space.nii.gz" in message
        assert "not in MNI space" in message
        assert "series.nii.gz is 4-D" in message
        assert db.list_studies() == []


def test_display_grid_must_be_clear(tmp_path, pools):
    real, _ = pools
    data, affine = phantom()
    off_grid = write_nifti(tmp_path / "synthetic_1mm_like.nii.gz", data, affine)  # on no preset's grid
    with StudyDatabase(tmp_path / "s.sqlite") as db:
        with pytest.raises(StudyError, match="choose one with --preset"):
            db.create_study(name="s", real=[real], synthetic=[off_grid], readers=["ana"])
        info = db.create_study(name="s", real=[real], synthetic=[off_grid], readers=["ana"], preset="tiny")
        assert info.display.grid.shape == (16, 24, 16)


def _shift(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def test_a_study_stored_before_the_histogram_standardisation_keeps_its_look(tmp_path):
    from engine.specs import PRESETS

    settings = DisplaySettings.from_spec(PRESETS["tiny"])
    assert settings.standardise_histogram  # every new study
    assert DisplaySettings.from_dict(settings.to_dict()) == settings
    old = settings.to_dict()
    del old["standardise_histogram"]  # what a study made before it stored
    before = DisplaySettings.from_dict(old)
    assert not before.standardise_histogram
    data, affine = phantom()
    path = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    new_case, old_case = display_array(path, settings), display_array(path, before)
    assert not np.array_equal(new_case, old_case)
    np.testing.assert_array_equal(new_case > 0, old_case > 0)  # the same brain, other grey levels
    # The old look: percentile scaling, clipping and whole numbers, nothing else.
    assert old_case.max() == 1000.0
    np.testing.assert_array_equal(old_case, np.rint(old_case))
