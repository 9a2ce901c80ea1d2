"""The leakage check before readers see anything: could simple image statistics tell real from synthetic?

Blinding is a property of the pixels: if real scans are int16 files and synthetic volumes are
continuous, or one kind has a noisy background and the other a constant one, a reader (or a
model) tells them apart without looking at anatomy. This module measures, on each case **as it
is displayed** (:func:`engine.study.display.display_array`), statistics that need no anatomy:

* histogram shape inside the brain: mean, spread, skewness, kurtosis, percentiles, and the
  share of brain voxels in each of ten fixed bins of the display window;
* quantisation: the number of distinct grey levels, the share of whole-number values, the
  smallest step between levels;
* background noise level: spread of the values outside the brain and the share that is not 0;
* smoothness: the mean absolute difference between neighbouring brain voxels, relative to
  the brain's spread (a smooth volume has small steps);
* brain volume in mL.

A logistic regression on the standardised statistics (L2, C = 1) is cross-validated with
stratified folds (at most 5; each tests at least one case of each kind, so at least two of
each kind are needed), and the out-of-fold
probabilities give an AUC of real against synthetic. Above :data:`AUC_WARNING` the check warns,
names the statistics that separate the kinds best (each one's own AUC, either direction) and
says how to fix it. scikit-learn is used when installed; otherwise a small numpy
implementation of the same model (Newton's method), which the tests check against it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.study.statistics import roc_auc

#: Above this cross-validated AUC, the statistics give the kinds away.
AUC_WARNING = 0.7
#: Number of fixed histogram bins over the display window.
HISTOGRAM_BINS = 10
#: Most folds of the cross-validation.
MAX_FOLDS = 5

#: Statistic name prefix → what to do when it gives the kinds away.
_ADVICE = {
    "histogram": (
        "the intensity distributions differ: normalise both kinds alike (the display pipeline's percentile "
        "scaling; a histogram standardisation applied to both)"
    ),
    "quantisation": (
        "real and synthetic values are quantised differently: round both kinds to the same step in the "
        "display pipeline (whole numbers of the window), so integer scans and continuous volumes look alike"
    ),
    "background": (
        "the background differs: give both kinds the same noise floor in the display pipeline (or set every "
        "voxel outside the brain to exactly 0 for both)"
    ),
    "smoothness": (
        "one kind is smoother: resample or smooth both kinds alike (the same interpolation and anti-aliasing), "
        "or add the same light noise to both"
    ),
    "brain volume": (
        "brain volumes differ: choose real scans from the population the model was trained on (or condition the "
        "model on it), and keep the same brain mask rule for both kinds"
    ),
}

#: Percentiles of the in-brain histogram, by their names.
_PERCENTILES = {1: "1st", 5: "5th", 50: "50th", 95: "95th"}

#: ``progress(done, total)`` while cases are measured.
ProgressCallback = Callable[[int, int], None]


def case_statistics(data: np.ndarray, *, window: tuple[float, float], voxel_ml: float) -> dict[str, float]:
    """The statistics of one displayed case (see the module docstring).

    Args:
        data: the displayed 3-D array (standard space); the brain is found by the one background
            rule (:func:`engine.masking.brain_region`), everything else is background.
        window: the display window (lowest, highest), which sets the fixed histogram bins.
        voxel_ml: the volume of one voxel in mL (mm³ / 1000).

    Returns:
        Statistic name → value; every value finite (0 where undefined, e.g. an empty brain).
    """
    from engine.masking import brain_region

    array = np.asarray(data, dtype=np.float64)
    # The brain by the one background rule (its window's top is the scale), so that a noisy
    # background is measured as background, not counted as brain.
    brain = brain_region(array, scale=float(window[1])) if array.ndim == 3 else array > 0
    values = array[brain]
    background = array[~brain]
    out: dict[str, float] = {}
    lo, hi = float(window[0]), float(window[1])
    if values.size:
        mean, sd = float(values.mean()), float(values.std())
        centred = (values - mean) / sd if sd > 0 else np.zeros_like(values)
        out["histogram mean"] = mean
        out["histogram spread (SD)"] = sd
        out["histogram skewness"] = float((centred**3).mean())
        out["histogram kurtosis"] = float((centred**4).mean() - 3.0)
        for q, name in _PERCENTILES.items():
            out[f"histogram {name} percentile"] = float(np.percentile(values, q))
        counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
        step = (hi - lo) / HISTOGRAM_BINS
        for i, count in enumerate(counts):
            out[f"histogram share {lo + i * step:g}–{lo + (i + 1) * step:g}"] = float(count / values.size)
        levels = np.unique(values)
        out["quantisation: distinct levels"] = float(levels.size)
        out["quantisation: whole-number share"] = float(np.mean(values == np.rint(values)))
        out["quantisation: smallest step"] = float(np.diff(levels).min()) if levels.size > 1 else 0.0
        # Neighbour steps inside the brain, along each axis, relative to the brain's spread.
        steps = []
        for axis in range(array.ndim):
            a = np.moveaxis(array, axis, 0)
            m = np.moveaxis(brain, axis, 0)
            both = m[1:] & m[:-1]
            steps.append(np.abs(a[1:] - a[:-1])[both])
        joined = np.concatenate(steps) if steps else np.zeros(0)
        out["smoothness: neighbour step / SD"] = float(joined.mean() / sd) if joined.size and sd > 0 else 0.0
    else:
        names = ["histogram mean", "histogram spread (SD)", "histogram skewness", "histogram kurtosis"]
        names += [f"histogram {name} percentile" for name in _PERCENTILES.values()]
        step = (hi - lo) / HISTOGRAM_BINS
        names += [f"histogram share {lo + i * step:g}–{lo + (i + 1) * step:g}" for i in range(HISTOGRAM_BINS)]
        names += ["quantisation: distinct levels", "quantisation: whole-number share", "quantisation: smallest step"]
        out.update(dict.fromkeys([*names, "smoothness: neighbour step / SD"], 0.0))
    out["background: noise level (SD)"] = float(background.std()) if background.size else 0.0
    out["background: share not 0"] = float(np.mean(background != 0)) if background.size else 0.0
    out["brain volume (mL)"] = float(brain.sum() * voxel_ml)
    return {k: (v if math.isfinite(v) else 0.0) for k, v in out.items()}


@dataclass(frozen=True)
class BlindingReport:
    """The result of the leakage check.

    Attributes:
        n_real, n_synthetic: cases measured.
        auc: cross-validated AUC of the logistic regression (NaN with too few cases).
        folds: folds used (0 with too few cases).
        feature_auc: statistic → its own AUC of real vs synthetic, either direction (0.5 none, 1 perfect).
        backend: "scikit-learn" or "numpy".
    """

    n_real: int
    n_synthetic: int
    auc: float
    folds: int
    feature_auc: dict[str, float] = field(default_factory=dict)
    backend: str = ""

    @property
    def too_few(self) -> bool:
        return self.folds == 0

    @property
    def leaks(self) -> bool:
        """Whether the statistics separate the kinds (AUC above :data:`AUC_WARNING`)."""
        return not self.too_few and self.auc > AUC_WARNING

    def worst(self, count: int = 3) -> list[tuple[str, float]]:
        """The statistics that separate best, best first (those above the warning level, at least one)."""
        ranked = sorted(self.feature_auc.items(), key=lambda kv: -kv[1])
        above = [kv for kv in ranked if kv[1] > AUC_WARNING]
        return (above or ranked[:1])[:count]

    def advice(self) -> list[str]:
        """How to fix what gives the kinds away (one line per kind of statistic among :meth:`worst`)."""
        lines = []
        for name, _ in self.worst():
            for prefix, text in _ADVICE.items():
                if name.startswith(prefix) and text not in lines:
                    lines.append(text)
        return lines

    def lines(self) -> list[str]:
        """The report as short lines for a terminal or a dialog."""
        head = f"{self.n_real} real and {self.n_synthetic} synthetic cases as displayed"
        if self.too_few:
            return [f"{head}: too few cases to cross-validate (at least 2 of each kind are needed)"]
        verdict = (
            f"WARNING: simple image statistics tell real from synthetic (cross-validated AUC {self.auc:.2f} "
            f"> {AUC_WARNING:g})"
            if self.leaks
            else f"no leak found: simple image statistics do not tell real from synthetic (cross-validated "
            f"AUC {self.auc:.2f} <= {AUC_WARNING:g})"
        )
        out = [f"{head}, logistic regression with {self.folds}-fold cross-validation ({self.backend}): {verdict}"]
        label = "separated by" if self.leaks else "closest to separating them"
        out.append(f"{label}: " + "; ".join(f"{name} (AUC {auc:.2f})" for name, auc in self.worst()))
        if self.leaks:
            out += [f"fix: {text}" for text in self.advice()]
        return out


def separation_auc(values: Sequence[float], truth_synthetic: Sequence[bool]) -> float:
    """How well one statistic alone separates the kinds, either direction (0.5 none, 1.0 perfect)."""
    auc = roc_auc(truth_synthetic, values)
    return float("nan") if math.isnan(auc) else max(auc, 1.0 - auc)


def _fit_numpy(x: np.ndarray, y: np.ndarray, *, c: float = 1.0, iterations: int = 100) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression (intercept not penalised), as scikit-learn's lbfgs solves it:
    minimise C·Σ log-loss + ½‖w‖², by Newton's method."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.diag([1.0 / c] * d + [0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - y) + penalty @ theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(d + 1)
        update = np.linalg.solve(hessian, gradient)
        theta -= update
        if np.max(np.abs(update)) < 1e-10:
            break
    return theta[:d], float(theta[d])


def _folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified folds: each kind shuffled with ``seed`` and dealt round the folds (test indices)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (0, 1):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        for i, index in enumerate(members):
            folds[i % k].append(int(index))
    return [np.asarray(sorted(f)) for f in folds]


def out_of_fold_probabilities(
    features: np.ndarray, truth_synthetic: Sequence[bool], *, folds: int, seed: int = 0, backend: str = "auto"
) -> tuple[np.ndarray, str]:
    """Each case's probability of "synthetic" from a model fitted without it (standardised within the fold).

    Args:
        features: cases x statistics.
        truth_synthetic: True for synthetic cases.
        folds: number of stratified folds.
        seed: seed of the fold assignment.
        backend: "auto" (scikit-learn when installed), "sklearn" or "numpy".

    Returns:
        (probabilities, the backend used).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(truth_synthetic, dtype=bool).astype(np.float64)
    use_sklearn = backend == "sklearn"
    if backend == "auto":
        try:
            import sklearn  # noqa: F401

            use_sklearn = True
        except ImportError:
            use_sklearn = False
    probabilities = np.zeros(len(y))
    for test in _folds(y, folds, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        mean = x[train].mean(axis=0)
        sd = x[train].std(axis=0)
        sd[sd == 0] = 1.0
        x_train, x_test = (x[train] - mean) / sd, (x[test] - mean) / sd
        if use_sklearn:
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=1.0, max_iter=1000, tol=1e-10)  # converged, like the numpy fit
            model.fit(x_train, y[train])
            probabilities[test] = model.predict_proba(x_test)[:, 1]
        else:
            w, b = _fit_numpy(x_train, y[train])
            probabilities[test] = 1.0 / (1.0 + np.exp(-(x_test @ w + b)))
    return probabilities, "scikit-learn" if use_sklearn else "numpy"


def blinding_check(
    statistics: Sequence[dict[str, float]], truth_synthetic: Sequence[bool], *, seed: int = 0, backend: str = "auto"
) -> BlindingReport:
    """Cross-validated logistic regression of real vs synthetic on per-case statistics.

    Args:
        statistics: one :func:`case_statistics` dict per case (same keys).
        truth_synthetic: True for synthetic cases.
        seed: seed of the folds.
        backend: as in :func:`out_of_fold_probabilities`.
    """
    truth = np.asarray(truth_synthetic, dtype=bool)
    n_syn, n_real = int(truth.sum()), int((~truth).sum())
    names = list(statistics[0]) if statistics else []
    x = np.asarray([[s[name] for name in names] for s in statistics], dtype=np.float64).reshape(len(truth), -1)
    feature_auc = {name: separation_auc(x[:, i], truth) for i, name in enumerate(names)}
    feature_auc = {k: v for k, v in feature_auc.items() if not math.isnan(v)}
    folds = min(MAX_FOLDS, n_real, n_syn)  # every fold tests at least one case of each kind
    if folds < 2:
        return BlindingReport(n_real, n_syn, float("nan"), 0, feature_auc, "")
    probabilities, used = out_of_fold_probabilities(x, truth, folds=folds, seed=seed, backend=backend)
    return BlindingReport(n_real, n_syn, roc_auc(truth, probabilities), folds, feature_auc, used)


def check_files(
    real: Sequence[str | os.PathLike],
    synthetic: Sequence[str | os.PathLike],
    settings,
    *,
    progress: ProgressCallback | None = None,
) -> BlindingReport:
    """The leakage check of volumes as they would be displayed with ``settings`` (a study's
    :class:`~engine.study.display.DisplaySettings`).

    Raises:
        VolumeError: a file cannot be read or is not in MNI space (named: for the organiser).
    """
    from engine.study.display import display_array

    voxel_ml = float(np.prod(settings.grid.spacing_mm)) / 1000.0
    entries = [(Path(p), False) for p in real] + [(Path(p), True) for p in synthetic]
    stats = []
    for done, (path, _) in enumerate(entries, start=1):
        stats.append(case_statistics(display_array(path, settings), window=settings.window, voxel_ml=voxel_ml))
        if progress is not None:
            progress(done, len(entries))
    return blinding_check(stats, [t for _, t in entries])


def check_study(db, study: str, *, progress: ProgressCallback | None = None) -> BlindingReport:
    """The leakage check of a study's cases, displayed as its readers see them.

    Raises:
        StudyError: unknown study, or a case file missing or changed (run ``study check``).
    """
    from engine.study.errors import StudyError

    info = db.study(study)
    problems = db.check_cases(study)
    if problems:
        raise StudyError(f"the case files must be intact for the blinding check: {problems[0]}")
    with db.read() as conn:
        rows = conn.execute(
            "SELECT c.truth, c.source_path FROM cases c JOIN studies s ON s.id = c.study_id WHERE s.name = ? "
            "ORDER BY c.number",
            (study,),
        ).fetchall()
    real = [p for t, p in rows if t == "real"]
    synthetic = [p for t, p in rows if t == "synthetic"]
    return check_files(real, synthetic, info.display, progress=progress)
