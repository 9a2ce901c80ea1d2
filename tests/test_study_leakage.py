"""The leakage check before a study (``study check --blinding``): per-case statistics of the displayed
cases and a cross-validated logistic regression that warns when they tell real from synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from engine.study import StudyDatabase
from engine.study.blinding import (
    AUC_WARNING,
    blinding_check,
    case_statistics,
    check_study,
    out_of_fold_probabilities,
    separation_auc,
)
from tests.helpers_study import make_pools
from training_cli.main import main


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("leak_pools"), n_real=8, n_synthetic=8)


@pytest.fixture(autouse=True)
def _no_user_database(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env-default.sqlite"))


def _volume(rng, *, integer: bool, noise: float) -> np.ndarray:
    data = np.zeros((20, 20, 20))
    data[5:15, 5:15, 5:15] = rng.uniform(200, 900, (10, 10, 10))
    data = np.rint(data) if integer else data
    outside = data == 0
    data[outside] = np.abs(rng.normal(0, noise, outside.sum())) if noise else 0.0
    return data


def test_case_statistics_see_quantisation_noise_and_volume():
    rng = np.random.default_rng(0)
    whole = case_statistics(_volume(rng, integer=True, noise=0), window=(0, 1000), voxel_ml=0.008)
    smooth = case_statistics(_volume(rng, integer=False, noise=0), window=(0, 1000), voxel_ml=0.008)
    noisy = case_statistics(_volume(rng, integer=True, noise=5), window=(0, 1000), voxel_ml=0.008)
    assert whole["quantisation: whole-number share"] == 1.0
    assert smooth["quantisation: whole-number share"] < 0.01
    assert whole["quantisation: smallest step"] == 1.0
    assert whole["quantisation: distinct levels"] <= 701
    assert smooth["quantisation: distinct levels"] == 1000
    assert whole["background: noise level (SD)"] == 0.0
    assert noisy["background: noise level (SD)"] > 1.0
    assert whole["brain volume (mL)"] == pytest.approx(1000 * 0.008)
    shares = [v for k, v in whole.items() if k.startswith("histogram share")]
    assert len(shares) == 10
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] == 0.0  # nothing in 0–100
    empty = case_statistics(np.zeros((4, 4, 4)), window=(0, 1000), voxel_ml=1.0)
    assert set(empty) == set(whole)
    assert all(np.isfinite(list(empty.values())))


def _features(rng, n: int, shift: float) -> list[dict[str, float]]:
    return [
        {"histogram mean": rng.normal(500, 20), "background: noise level (SD)": rng.normal(3 + shift, 1)}
        for _ in range(n)
    ]


def test_statistics_from_one_distribution_do_not_warn():
    rng = np.random.default_rng(1)
    report = blinding_check(_features(rng, 20, 0) + _features(rng, 20, 0), [False] * 20 + [True] * 20)
    assert report.folds == 5
    assert report.auc <= AUC_WARNING
    assert not report.leaks
    assert "no leak found" in report.lines()[0]


def test_a_separating_statistic_warns_names_it_and_says_how_to_fix_it():
    rng = np.random.default_rng(2)
    report = blinding_check(_features(rng, 12, 0) + _features(rng, 12, 4), [False] * 12 + [True] * 12)
    assert report.leaks
    assert report.auc > 0.9
    assert report.worst()[0][0] == "background: noise level (SD)"
    assert report.feature_auc["histogram mean"] < AUC_WARNING
    text = "\n".join(report.lines())
    assert "WARNING" in text
    assert "background: noise level (SD) (AUC" in text
    assert "noise floor" in text


def test_too_few_cases_say_so():
    rng = np.random.default_rng(3)
    report = blinding_check(_features(rng, 1, 0) + _features(rng, 5, 9), [False] + [True] * 5)
    assert report.too_few
    assert not report.leaks
    assert "too few cases" in report.lines()[0]


def test_the_numpy_model_matches_scikit_learn():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 1, 30)) > 0
    ours, used = out_of_fold_probabilities(x, y, folds=5, backend="numpy")
    theirs, used_ref = out_of_fold_probabilities(x, y, folds=5, backend="sklearn")
    assert (used, used_ref) == ("numpy", "scikit-learn")
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_separation_auc_either_direction():
    assert separation_auc([1, 2, 3, 4], [True, True, False, False]) == 1.0
    assert separation_auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert separation_auc([1, 1, 1, 1], [False, True, False, True]) == 0.5


def test_check_of_a_study_measures_the_displayed_cases(tmp_path, pools):
    real, synthetic = pools
    with StudyDatabase(tmp_path / "s.sqlite") as db:
        db.create_study(name="pilot", real=[real], synthetic=[synthetic], readers=["ana"], seed=1)
        report = check_study(db, "pilot")
    assert (report.n_real, report.n_synthetic) == (8, 8)
    # Phantoms against noisy copies of one phantom: the check must see it (8 of each: with 3 the
    # cross-validated AUC sat at 0.67-0.89 depending on the numpy/scipy versions).
    assert report.leaks


def test_cli_check_blinding_warns_with_exit_status_1(tmp_path, pools, capsys):
    real, synthetic = pools
    db = str(tmp_path / "s.sqlite")
    assert main(["study", "create", "--name", "pilot", "--real", str(real), "--synthetic", str(synthetic),
                 "--readers", "ana", "--db", db]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["study", "check", "pilot", "--db", db])
    assert code == 0
    assert "blinding" not in capsys.readouterr().out.lower()
    code = main(["study", "check", "pilot", "--blinding", "--db", db])
    out, err = capsys.readouterr()
    assert code == 1
    assert "present and unchanged" in out
    assert "WARNING: simple image statistics tell real from synthetic" in err
    assert "fix: " in err
    assert "Traceback" not in err
