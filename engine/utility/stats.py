"""Metrics of the utility experiment and their bootstrap intervals.

* ROC AUC is the Mann-Whitney statistic (ties count one half), the probability that a random
  positive subject scores above a random negative one; balanced accuracy is the mean of
  sensitivity and specificity at probability 0.5; MAE is in the label's own unit.
* Intervals are percentile bootstrap intervals over test subjects *and* repeats: each resample
  draws repeats with replacement, then within each drawn repeat its test subjects with
  replacement, and averages the metric over the drawn repeats. The point estimate is the mean
  over repeats on the full test sets.
* A paired difference (augmented arm − real only) uses the same draws for both arms (every
  arm of a repeat is tested on the same subjects), so the subjects' difficulty cancels. Its
  two-sided p-value is ``2 · min(P*(d ≤ 0), P*(d ≥ 0))`` from the bootstrap distribution
  (with the +1 correction), for the null of no difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS = {"classify": ("auc", "balanced_accuracy"), "regress": ("mae",)}
#: Whether a larger value is better, per metric.
HIGHER_IS_BETTER = {"auc": True, "balanced_accuracy": True, "mae": False}


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``targets`` (1 positive); NaN with one class only."""
    from scipy.stats import rankdata

    targets = np.asarray(targets) >= 0.5
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(targets: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity at ``threshold``; NaN with one class only."""
    targets = np.asarray(targets) >= 0.5
    predicted = np.asarray(scores) >= threshold
    if targets.all() or not targets.any():
        return float("nan")
    return float((predicted[targets].mean() + (~predicted[~targets]).mean()) / 2)


def mae(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Mean absolute error, in the label's unit."""
    return float(np.mean(np.abs(np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64))))


def metric(name: str, targets: np.ndarray, predictions: np.ndarray) -> float:
    """The named metric (``auc``, ``balanced_accuracy`` or ``mae``)."""
    return {"auc": roc_auc, "balanced_accuracy": balanced_accuracy, "mae": mae}[name](targets, predictions)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {"mean": _num(self.mean), "ci_low": _num(self.ci_low), "ci_high": _num(self.ci_high)}


@dataclass(frozen=True)
class Difference:
    """A paired difference (arm − reference) with its interval and two-sided p-value."""

    mean: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict:
        return {
            "mean": _num(self.mean),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "p_value": _num(self.p_value),
        }


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class RepeatPredictions:
    """One arm's test predictions in one repeat, in the repeat's fixed test-subject order."""

    targets: np.ndarray
    predictions: np.ndarray


def bootstrap_draws(test_sizes: Sequence[int], *, n_boot: int, seed: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The resamples: per draw, the repeats drawn and, for each, its test-subject indices.

    The same draws serve every arm, which makes the differences paired.
    """
    rng = np.random.default_rng(seed)
    repeats = len(test_sizes)
    draws = []
    for _ in range(n_boot):
        chosen = rng.integers(0, repeats, size=repeats)
        draws.append((chosen, [rng.integers(0, test_sizes[r], size=test_sizes[r]) for r in chosen]))
    return draws


def _resampled(name: str, runs: Sequence[RepeatPredictions], draws) -> np.ndarray:
    values = np.empty(len(draws))
    for b, (chosen, indices) in enumerate(draws):
        per = [
            metric(name, runs[r].targets[idx], runs[r].predictions[idx]) for r, idx in zip(chosen, indices, strict=True)
        ]
        per = [v for v in per if np.isfinite(v)]
        values[b] = np.mean(per) if per else np.nan
    return values


def point_estimate(name: str, runs: Sequence[RepeatPredictions]) -> float:
    """Mean over repeats of the metric on each repeat's full test set."""
    values = [metric(name, r.targets, r.predictions) for r in runs]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def interval(name: str, runs: Sequence[RepeatPredictions], draws, *, level: float = 0.95) -> Interval:
    """The metric's mean over repeats with its percentile bootstrap interval."""
    values = _resampled(name, runs, draws)
    values = values[np.isfinite(values)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha]) if values.size else (np.nan, np.nan)
    return Interval(point_estimate(name, runs), float(lo), float(hi))


def paired_difference(
    name: str, arm: Sequence[RepeatPredictions], reference: Sequence[RepeatPredictions], draws, *, level: float = 0.95
) -> Difference:
    """``arm − reference`` on the same draws, with its interval and two-sided bootstrap p-value."""
    d = _resampled(name, arm, draws) - _resampled(name, reference, draws)
    d = d[np.isfinite(d)]
    mean = point_estimate(name, arm) - point_estimate(name, reference)
    if not d.size:
        return Difference(mean, float("nan"), float("nan"), float("nan"))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    below = (np.sum(d <= 0) + 1) / (d.size + 1)
    above = (np.sum(d >= 0) + 1) / (d.size + 1)
    return Difference(mean, float(lo), float(hi), float(min(1.0, 2 * min(below, above))))
