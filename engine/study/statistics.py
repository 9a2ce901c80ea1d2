"""Statistics of a reader study: pure functions of arrays, no database, no files.

Conventions:

* **Positive = synthetic.** Sensitivity is the share of synthetic volumes called synthetic,
  specificity the share of real volumes called real.
* **The five-point confidence scale** (1 certainly real, 2 probably real, 3 unsure,
  4 probably synthetic, 5 certainly synthetic) is the score of the ROC curve: higher means
  "more synthetic". The ROC points are the (false positive rate, true positive rate) pairs
  of the rules "call synthetic when confidence >= t" for t = 5, 4, 3, 2, 1 (plus (0, 0)); the AUC
  is the area under their straight-line interpolation, which equals the Mann–Whitney
  probability that a random synthetic case scores higher than a random real one, ties
  counting one half (what scikit-learn's ``roc_auc_score`` computes).
* **Accuracy** is of the binary call: 1–2 real, 4–5 synthetic. "Unsure" (3) is not a call;
  such answers are left out of accuracy, sensitivity and specificity and counted as
  ``n_unsure`` (they still enter the AUC, the mean ratings and the times). Leaving them
  out, rather than counting them wrong, keeps a reader who is unsure about everything at
  "no evidence either way" instead of "significantly worse than chance".
* **Binomial test:** exact, two-sided, against chance (p = 0.5), with the two-sided p-value
  summing every outcome no more likely than the observed one (the "minlike" rule, as in
  ``scipy.stats.binomtest``).
* **95 % confidence intervals** of proportions are **Clopper–Pearson** (exact) intervals, from
  the beta distribution: conservative, never outside [0, 1], defined for 0 and n successes.
* **Agreement:** Cohen's kappa for two readers (optionally linearly or quadratically
  weighted, as scikit-learn's ``cohen_kappa_score``), Fleiss' kappa (Fleiss 1971) for any
  number of readers; both undefined (NaN) when chance agreement is 1.
* **Ratings of real against synthetic** (realism, plausibility, consistency) are compared with
  the Wilcoxon rank-sum (Mann–Whitney U) test, two-sided: exact when neither sample has ties
  and the smaller has at most 8 values, else the normal approximation with tie and continuity
  corrections (the choice ``scipy.stats.mannwhitneyu(method="auto")`` makes). The p-values of
  the questions of one reader (or of the pooled answers) are corrected with Holm's step-down
  method, which keeps the family-wise error at 5 % without assuming independence.
* Pooled statistics over several readers treat every answer as independent, which they are
  not (the same cases are read by everyone); read pooled p-values as descriptive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Confidence values of the scale, and their meaning.
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``n`` with the estimate and its Clopper–Pearson interval (NaN when n = 0)."""

    successes: int
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95


@dataclass(frozen=True)
class BinomialTest:
    """A proportion tested against ``null`` with an exact two-sided binomial test."""

    proportion: Proportion
    null: float
    p_value: float


@dataclass(frozen=True)
class RocCurve:
    """ROC of the confidence scale.

    Attributes:
        fpr: false positive rates (real cases called synthetic), from 0 to 1.
        tpr: true positive rates (synthetic cases called synthetic), from 0 to 1.
        thresholds: the rule of each point, "synthetic when score >= threshold"; the first
            point (0, 0) has threshold +inf.
        auc: area under the curve (NaN without both classes).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


@dataclass(frozen=True)
class Detection:
    """How well answers told real from synthetic.

    Attributes:
        n: answers analysed (all, including unsure).
        n_real: answers to real cases.
        n_synthetic: answers to synthetic cases.
        n_unsure: answers of 3 ("unsure"), left out of accuracy, sensitivity and specificity.
        accuracy: correct calls of all calls made, tested against 0.5.
        sensitivity: synthetic cases called synthetic (positive = synthetic).
        specificity: real cases called real.
        roc: ROC curve and AUC of the confidence scale.
    """

    n: int
    n_real: int
    n_synthetic: int
    n_unsure: int
    accuracy: BinomialTest
    sensitivity: Proportion
    specificity: Proportion
    roc: RocCurve


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation (n - 1), median, quartiles and total of a set of numbers (NaN when empty)."""

    n: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    total: float


def clopper_pearson(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) confidence interval of a binomial proportion.

    Args:
        successes: k, 0 <= k <= n.
        n: trials.
        confidence: coverage, e.g. 0.95.

    Returns:
        (low, high); (NaN, NaN) when n = 0.
    """
    from scipy.stats import beta

    k, n = _check_counts(successes, n)
    if n == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def proportion(successes: int, n: int, *, confidence: float = 0.95) -> Proportion:
    """A proportion with its Clopper–Pearson interval."""
    k, n = _check_counts(successes, n)
    low, high = clopper_pearson(k, n, confidence=confidence)
    return Proportion(k, n, k / n if n else float("nan"), low, high, confidence)


def binomial_test(successes: int, n: int, *, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value of ``successes`` in ``n`` against probability ``p``.

    The two-sided p-value is the probability of every outcome whose probability under the
    null is at most that of the observed one (relative tolerance 1e-7 for rounding), the
    definition of ``scipy.stats.binomtest``. NaN when n = 0.
    """
    from scipy.stats import binom

    k, n = _check_counts(successes, n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"null probability must be in [0, 1], got {p}")
    if n == 0:
        return float("nan")
    pmf = binom.pmf(np.arange(n + 1), n, p)
    observed = pmf[k]
    return float(min(1.0, pmf[pmf <= observed * (1 + 1e-7)].sum()))


def roc_curve(truth_synthetic: Sequence[bool], scores: Sequence[float]) -> RocCurve:
    """ROC points and AUC of scores where higher means "more synthetic".

    Args:
        truth_synthetic: True for synthetic (positive) cases.
        scores: e.g. the 1..5 confidence answers, same length.

    Returns:
        One point per distinct score (plus (0, 0)), thresholds decreasing.
    """
    truth = np.asarray(truth_synthetic, dtype=bool)
    score = np.asarray(scores, dtype=float)
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError("truth and scores must be 1-D and of the same length")
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    tp = np.array([np.count_nonzero(truth & (score >= t)) for t in thresholds], dtype=float)
    fp = np.array([np.count_nonzero(~truth & (score >= t)) for t in thresholds], dtype=float)
    tpr = tp / n_pos if n_pos else np.full_like(tp, np.nan)
    fpr = fp / n_neg if n_neg else np.full_like(fp, np.nan)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if n_pos and n_neg else float("nan")
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auc=auc)


def roc_auc(truth_synthetic: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve, computed as the Mann–Whitney statistic (ties count 1/2).

    Equal to the trapezoidal area of :func:`roc_curve`; computed independently here so the
    two check each other. NaN without both classes.
    """
    truth = np.asarray(truth_synthetic, dtype=bool)
    score = np.asarray(scores, dtype=float)
    pos, neg = score[truth], score[~truth]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def detection(truth_synthetic: Sequence[bool], confidence: Sequence[int], *, ci: float = 0.95) -> Detection:
    """Accuracy, sensitivity, specificity and ROC of real-vs-synthetic answers.

    Args:
        truth_synthetic: True where the case was synthetic.
        confidence: the answers on the 1..5 scale (1 certainly real … 5 certainly synthetic).
        ci: coverage of the intervals.
    """
    truth = np.asarray(truth_synthetic, dtype=bool)
    conf = np.asarray(confidence, dtype=int)
    if truth.shape != conf.shape or truth.ndim != 1:
        raise ValueError("truth and confidence must be 1-D and of the same length")
    if conf.size and (conf.min() < 1 or conf.max() > 5):
        raise ValueError("confidence values must be from 1 to 5")
    called_synthetic = conf >= 4
    called_real = conf <= 2
    decided = called_synthetic | called_real
    correct = (truth & called_synthetic) | (~truth & called_real)
    n_correct, n_decided = int(correct.sum()), int(decided.sum())
    return Detection(
        n=int(conf.size),
        n_real=int((~truth).sum()),
        n_synthetic=int(truth.sum()),
        n_unsure=int((~decided).sum()),
        accuracy=BinomialTest(
            proportion(n_correct, n_decided, confidence=ci), 0.5, binomial_test(n_correct, n_decided, p=0.5)
        ),
        sensitivity=proportion(int((truth & called_synthetic).sum()), int((truth & decided).sum()), confidence=ci),
        specificity=proportion(int((~truth & called_real).sum()), int((~truth & decided).sum()), confidence=ci),
        roc=roc_curve(truth, conf),
    )


def cohen_kappa(
    rater_a: Sequence, rater_b: Sequence, *, labels: Sequence | None = None, weights: str | None = None
) -> float:
    """Cohen's kappa between two raters of the same subjects.

    kappa = 1 - sum(w * observed) / sum(w * expected), where observed is the joint table of
    the two raters' labels, expected the product of its margins, and w the disagreement
    weights: 0/1 (unweighted), |i - j| (``"linear"``) or (i - j)^2 (``"quadratic"``) for the
    positions i, j of the labels in ``labels``.

    Args:
        rater_a: first rater's labels, one per subject.
        rater_b: second rater's labels, same subjects in the same order.
        labels: the categories in order (matters for weights); default: sorted union.
        weights: None, "linear" or "quadratic".

    Returns:
        kappa; NaN when chance disagreement is 0 (e.g. both raters always gave one label).
    """
    a, b = list(rater_a), list(rater_b)
    if len(a) != len(b):
        raise ValueError("both raters must rate the same subjects")
    if not a:
        return float("nan")
    cats = list(labels) if labels is not None else sorted(set(a) | set(b))
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    observed = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        observed[index[x], index[y]] += 1
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(float)
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    chance = float((w * expected).sum())
    if chance == 0:
        return float("nan")
    return float(1.0 - (w * observed).sum() / chance)


def fleiss_table(ratings: Sequence[Sequence], categories: Sequence) -> np.ndarray:
    """Subjects x categories table of counts from each subject's list of ratings (one per rater)."""
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(ratings), len(index)), dtype=int)
    for row, subject in enumerate(ratings):
        for value in subject:
            table[row, index[value]] += 1
    return table


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) from a subjects x categories table of rating counts.

    Every subject must be rated by the same number n >= 2 of raters (rows sum to n).
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar = mean P_i, p_j = column share,
    P_e = sum_j p_j^2, kappa = (P_bar - P_e) / (1 - P_e).

    Returns:
        kappa; NaN when P_e = 1 (every rating in one category) or there are no subjects.
    """
    counts = np.asarray(table, dtype=float)
    if counts.ndim != 2:
        raise ValueError("the table must be subjects x categories")
    if counts.shape[0] == 0:
        return float("nan")
    per_subject = counts.sum(axis=1)
    n = per_subject[0]
    if not np.all(per_subject == n) or n < 2:
        raise ValueError("every subject must be rated by the same number (at least 2) of raters")
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = float(p_i.mean())
    p_j = counts.sum(axis=0) / (counts.shape[0] * n)
    p_e = float((p_j**2).sum())
    if np.isclose(p_e, 1.0):
        return float("nan")
    return (p_bar - p_e) / (1.0 - p_e)


def summarise(values: Sequence[float]) -> Summary:
    """Summary of numbers, ignoring None and NaN."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, 0.0)
    q1, median, q3 = (float(q) for q in np.percentile(arr, [25, 50, 75]))
    return Summary(
        n=int(arr.size),
        mean=float(arr.mean()),
        sd=float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
        median=median,
        q1=q1,
        q3=q3,
        total=float(arr.sum()),
    )


def ratings_by_class(truth_synthetic: Sequence[bool], ratings: Sequence[float | None]) -> dict[str, Summary]:
    """Summary of one rating question for real and for synthetic cases: ``{"real": ..., "synthetic": ...}``."""
    truth = list(truth_synthetic)
    values = list(ratings)
    if len(truth) != len(values):
        raise ValueError("truth and ratings must have the same length")
    return {
        "real": summarise([v for t, v in zip(truth, values, strict=True) if not t]),
        "synthetic": summarise([v for t, v in zip(truth, values, strict=True) if t]),
    }


@dataclass(frozen=True)
class RankSumTest:
    """Wilcoxon rank-sum (Mann–Whitney U) test of one rating, real against synthetic cases.

    Attributes:
        n_real, n_synthetic: ratings compared.
        u_real: U of the real ratings (the number of (real, synthetic) pairs where the real case
            was rated higher, ties counting one half).
        effect: ``u_real / (n_real · n_synthetic)``, the probability that a real case is rated
            higher than a synthetic one (0.5: no difference).
        p_value: two-sided p-value (NaN without both classes).
        method: "exact" or "asymptotic".
        p_holm: the p-value after Holm's correction across the questions it was tested with
            (equal to ``p_value`` until :func:`holm` is applied).
    """

    n_real: int
    n_synthetic: int
    u_real: float
    effect: float
    p_value: float
    method: str
    p_holm: float = float("nan")


def _exact_u_counts(m: int, n: int) -> np.ndarray:
    """Number of arrangements of m and n untied values giving each U = 0..m·n (the null distribution)."""
    # counts[i][j] is the distribution for i values against j, built up one value at a time.
    table = [[np.ones(1, dtype=float) for _ in range(n + 1)] for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            out = np.zeros(i * j + 1)
            out[j : j + table[i - 1][j].size] += table[i - 1][j]  # the largest value is one of the m: +j
            out[: table[i][j - 1].size] += table[i][j - 1]
            table[i][j] = out
    return table[m][n]


def rank_sum_test(real: Sequence[float], synthetic: Sequence[float]) -> RankSumTest:
    """Two-sided Wilcoxon rank-sum (Mann–Whitney U) test of real against synthetic ratings.

    Exact (the permutation distribution of U) when there are no ties and the smaller sample has
    at most 8 values; otherwise the normal approximation with the tie-corrected variance
    n₁n₂/12 · ((N + 1) − Σ(t³ − t)/(N(N − 1))) and a continuity correction of ½. This is what
    ``scipy.stats.mannwhitneyu(x, y, method="auto")`` computes.
    """
    from scipy.stats import norm, rankdata

    x = np.asarray([v for v in real if v is not None], dtype=float)
    y = np.asarray([v for v in synthetic if v is not None], dtype=float)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        return RankSumTest(n1, n2, float("nan"), float("nan"), float("nan"), "", float("nan"))
    both = np.concatenate([x, y])
    ranks = rankdata(both)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u2 = n1 * n2 - u1
    _, ties = np.unique(both, return_counts=True)
    has_ties = bool((ties > 1).any())
    if not has_ties and min(n1, n2) <= 8:
        counts = _exact_u_counts(n1, n2)
        total = counts.sum()
        big = round(max(u1, u2))
        p = min(1.0, 2.0 * counts[big:].sum() / total)
        method = "exact"
    else:
        n = n1 + n2
        variance = n1 * n2 / 12.0 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1)))
        if variance <= 0:
            p = 1.0  # every rating the same: no evidence of a difference
        else:
            z = (max(u1, u2) - n1 * n2 / 2.0 - 0.5) / np.sqrt(variance)
            p = min(1.0, float(2.0 * norm.sf(z)))
        method = "asymptotic"
    return RankSumTest(n1, n2, u1, u1 / (n1 * n2), float(p), method, float(p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN).

    Sorted ascending, the i-th smallest of m is multiplied by (m − i + 1), made non-decreasing
    and capped at 1: reject where the adjusted value is below the level.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return out.tolist()


def _check_counts(successes: int, n: int) -> tuple[int, int]:
    k, n = int(successes), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= n, got {k} of {n}")
    return k, n
