"""Reader-study statistics against textbook examples and against scipy / scikit-learn / statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from engine.study import statistics as st


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (7, 10), (10, 10), (18, 40), (55, 100), (1, 250)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    ours = st.clopper_pearson(k, n)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-10)


def test_clopper_pearson_textbook_values():
    # 0 of n: the upper limit solves (1 - p)^n = alpha/2 ("rule of three" territory).
    low, high = st.clopper_pearson(0, 10)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)  # 0.3085
    # 7 of 10, the classic worked example: 0.3475 to 0.9333.
    assert st.clopper_pearson(7, 10) == pytest.approx((0.3475, 0.9333), abs=1e-4)
    assert all(math.isnan(v) for v in st.clopper_pearson(0, 0))


@pytest.mark.parametrize(
    ("k", "n", "p"), [(9, 10, 0.5), (5, 10, 0.5), (0, 7, 0.5), (31, 50, 0.5), (3, 20, 0.3), (12, 20, 0.3), (1, 1, 0.5)]
)
def test_binomial_test_matches_scipy(k, n, p):
    assert st.binomial_test(k, n, p=p) == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9)


def test_binomial_test_textbook_value():
    # 9 of 10 correct by guessing: P = 2 * (C(10,9) + C(10,10)) / 2^10 = 22/1024.
    assert st.binomial_test(9, 10) == pytest.approx(22 / 1024, rel=1e-12)
    assert st.binomial_test(5, 10) == pytest.approx(1.0)
    assert math.isnan(st.binomial_test(0, 0))


def _random_ratings(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.5
    # readers somewhat better than chance: synthetic cases lean to high confidence values
    conf = np.clip(np.round(3 + 1.2 * (truth - 0.5) * 2 + rng.normal(0, 1.3, n)), 1, 5).astype(int)
    return truth, conf


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_roc_matches_scikit_learn(seed):
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    truth, conf = _random_ratings(seed)
    roc = st.roc_curve(truth, conf)
    fpr, tpr, thresholds = sk_roc_curve(truth, conf, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr)
    np.testing.assert_allclose(roc.tpr, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], thresholds[1:])
    assert roc.auc == pytest.approx(roc_auc_score(truth, conf), abs=1e-12)
    assert st.roc_auc(truth, conf) == pytest.approx(roc_auc_score(truth, conf), abs=1e-12)


def test_roc_textbook_cases():
    # perfect separation, complete confusion, and the Mann-Whitney tie rule
    assert st.roc_auc([0, 0, 1, 1], [1, 2, 4, 5]) == 1.0
    assert st.roc_auc([0, 0, 1, 1], [5, 4, 2, 1]) == 0.0
    assert st.roc_auc([0, 1], [3, 3]) == 0.5
    roc = st.roc_curve([0, 0, 1, 1], [1, 2, 4, 5])
    assert (roc.fpr[0], roc.tpr[0]) == (0.0, 0.0)
    assert (roc.fpr[-1], roc.tpr[-1]) == (1.0, 1.0)
    assert math.isnan(st.roc_curve([1, 1], [4, 5]).auc)


def test_detection_counts_calls_and_leaves_out_unsure():
    # synthetic = True; confidence 1-2 real, 3 unsure, 4-5 synthetic
    truth = [True, True, True, True, False, False, False, False, False]
    conf = [5, 4, 2, 3, 1, 2, 4, 3, 3]
    d = st.detection(truth, conf)
    assert (d.n, d.n_real, d.n_synthetic, d.n_unsure) == (9, 5, 4, 3)
    assert (d.sensitivity.successes, d.sensitivity.n) == (2, 3)  # 5, 4 right; 2 wrong; 3 left out
    assert (d.specificity.successes, d.specificity.n) == (2, 3)  # 1, 2 right; 4 wrong
    assert (d.accuracy.proportion.successes, d.accuracy.proportion.n) == (4, 6)
    assert d.accuracy.p_value == pytest.approx(binomtest(4, 6, 0.5).pvalue)
    assert d.accuracy.proportion.ci_low == pytest.approx(binomtest(4, 6).proportion_ci(method="exact").low)
    with pytest.raises(ValueError, match="confidence values must be from 1 to 5"):
        st.detection([True], [6])


def test_cohen_kappa_textbook_example():
    # Cohen's kappa worked example: 50 proposals, both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert st.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohen_kappa_matches_scikit_learn(weights, seed):
    from sklearn.metrics import cohen_kappa_score

    _, a = _random_ratings(seed)
    _, b = _random_ratings(seed + 10)
    ours = st.cohen_kappa(a, b, labels=[1, 2, 3, 4, 5], weights=weights)
    assert ours == pytest.approx(cohen_kappa_score(a, b, labels=[1, 2, 3, 4, 5], weights=weights), abs=1e-12)


def test_cohen_kappa_undefined_when_chance_agreement_is_total():
    assert math.isnan(st.cohen_kappa(["real"] * 4, ["real"] * 4))
    with pytest.raises(ValueError, match="both raters must rate the same subjects"):
        st.cohen_kappa([1, 2], [1])


# The worked example of Fleiss' kappa (14 raters, 10 subjects, 5 categories): P_bar 0.378, P_e 0.213, kappa 0.210.
FLEISS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_textbook_example():
    assert st.fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_kappa_matches_statsmodels():
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(5)
    for raters in (3, 4, 7):
        ratings = rng.integers(0, 3, size=(25, raters))
        ratings[:10] = ratings[:10, :1]  # some agreement beyond chance
        table = st.fleiss_table(ratings.tolist(), [0, 1, 2])
        ref_table, _ = inter_rater.aggregate_raters(ratings, n_cat=3)
        np.testing.assert_array_equal(table, ref_table)
        assert st.fleiss_kappa(table) == pytest.approx(inter_rater.fleiss_kappa(ref_table, method="fleiss"), abs=1e-12)
    assert st.fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(inter_rater.fleiss_kappa(FLEISS_EXAMPLE), abs=1e-12)


def test_fleiss_kappa_refuses_unequal_rater_counts_and_is_nan_when_undefined():
    with pytest.raises(ValueError, match="same number"):
        st.fleiss_kappa(np.array([[2, 1], [1, 1]]))
    assert math.isnan(st.fleiss_kappa(np.array([[3, 0], [3, 0]])))


def test_summaries_and_ratings_by_class():
    s = st.summarise([1, 2, 3, 4, None, float("nan")])
    assert (s.n, s.mean, s.median, s.total) == (4, 2.5, 2.5, 10.0)
    assert s.sd == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert st.summarise([]).n == 0
    by_class = st.ratings_by_class([True, False, True, False], [5, 1, 3, 2])
    assert by_class["synthetic"].mean == 4.0
    assert by_class["real"].mean == 1.5
