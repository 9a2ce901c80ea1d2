"""What ``study report`` adds for the anchors: Wilcoxon rank-sum of the ratings (real vs synthetic) with Holm
correction, per-reader ROC curves in the ROC figure, and the time-per-case distribution; checked against scipy
and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from engine.study import DEFAULT_QUESTIONS
from engine.study import statistics as st
from engine.study.records import AnswerRecord
from engine.study.report import markdown_report, roc_figure, time_histogram
from engine.study.results import compute_results


@pytest.mark.parametrize("seed", range(40))
def test_rank_sum_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = (int(n) for n in rng.integers(1, 14, 2))
    if seed % 2:  # five-point ratings: ties everywhere, the normal approximation
        x, y = rng.integers(1, 6, n1), rng.integers(1, 6, n2)
    else:  # untied values: exact for small groups
        x, y = rng.normal(size=n1), rng.normal(size=n2) + 0.7
    ours = st.rank_sum_test(x, y)
    ref = mannwhitneyu(x, y, alternative="two-sided", method="auto")
    assert ours.u_real == pytest.approx(ref.statistic)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
    assert ours.effect == pytest.approx(ref.statistic / (n1 * n2))


def test_rank_sum_textbook_and_degenerate_cases():
    # Complete separation of 3 against 3 untied values: U = 9, exact p = 2 / C(6, 3) = 0.1.
    test = st.rank_sum_test([4, 5, 6], [1, 2, 3])
    assert (test.u_real, test.method) == (9.0, "exact")
    assert test.p_value == pytest.approx(0.1)
    assert st.rank_sum_test([3, 3, 3], [3, 3]).p_value == 1.0  # all alike: no evidence
    empty = st.rank_sum_test([], [1, 2])
    assert math.isnan(empty.p_value)
    assert st.rank_sum_test([1, None, 2], [3, 4]).n_real == 2  # unanswered optional ratings are left out


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, int(rng.integers(1, 8)))
        np.testing.assert_allclose(st.holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12)
    adjusted = st.holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)


def _records(reader: str, rng, n: int = 12) -> list[AnswerRecord]:
    out = []
    for case in range(1, n + 1):
        truth = "real" if case % 2 else "synthetic"
        better = 1 if truth == "real" else 0
        values = {
            "confidence": int(rng.integers(1, 6)),
            "realism": int(min(5, rng.integers(1, 5) + better)),
            "plausibility": int(rng.integers(1, 6)),
            "consistency": int(min(5, rng.integers(2, 5) + better)),
        }
        out.append(
            AnswerRecord(
                study="s",
                reader=reader,
                case_number=case,
                truth=truth,
                position=case,
                skips=0,
                values=values,
                seconds=float(5 * case),
                answered_at="",
                updated_at="",
                revision=1,
            )
        )
    return out


def test_results_and_report_carry_the_tests_the_rois_and_the_times():
    rng = np.random.default_rng(7)
    records = _records("ana", rng) + _records("ben", rng)
    results = compute_results(
        study="s", questions=DEFAULT_QUESTIONS, readers=["ana", "ben"], records=records, n_real=6, n_synthetic=6
    )
    ana = results.readers[0]
    keys = ["realism", "plausibility", "consistency"]
    assert list(ana.rating_tests) == keys
    mine = [r for r in records if r.reader == "ana"]
    raw = []
    for key in keys:
        ref = mannwhitneyu(
            [r.values[key] for r in mine if r.truth == "real"], [r.values[key] for r in mine if r.truth == "synthetic"]
        )
        assert ana.rating_tests[key].p_value == pytest.approx(ref.pvalue, rel=1e-9)
        raw.append(ref.pvalue)
    assert [ana.rating_tests[k].p_holm for k in keys] == pytest.approx(st.holm(raw))
    assert results.pooled.rating_tests["realism"].n_real == 12
    assert ana.times == tuple(5.0 * c for c in range(1, 13))

    text = markdown_report(results)
    assert "### Real against synthetic (Wilcoxon rank-sum, Holm-corrected)" in text
    row = next(line for line in text.splitlines() if line.startswith("| ana | Overall realism | 6 / 6 |"))
    assert row.endswith(f"| {st.holm(raw)[0]:.3f} |") or "< 0.001" in row
    assert "Distribution of the time per case" in text
    assert "| ana | 1 | 4 | 6 | 1 | 0 | 0 | 5.0–60.0 |" in text  # 5; 10..25; 30..55; 60 s

    figure = roc_figure(results)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels[0] == "chance"
    assert [label.split(" (")[0] for label in labels[1:]] == ["ana", "ben", "pooled"]  # one curve per reader


def test_time_histogram_bins():
    assert time_histogram([0.0, 9.9, 10.0, 59.9, 60.0, 299.0, 300.0, 4000.0]) == [2, 1, 1, 1, 1, 2]
