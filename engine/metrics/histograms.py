"""Brain masks, per-tissue intensity histograms and brain volumes.

Brain mask: voxels brighter than ``mask_threshold`` standard units (20 of 1000 by default:
above the near-zero background of exported samples, below any tissue) with enclosed holes
filled (dark ventricles inside the brain belong to it). Its volume is the voxel count times the
voxel volume, in mL.

Tissue classes: three intensity classes within the brain mask — dark (CSF-like), middle
(grey-matter-like) and bright (white-matter-like) in a T1 — separated by the two thresholds
of a 3-class Otsu split (``skimage.filters.threshold_multiotsu``) of the pooled histogram of
the **real** set. The same thresholds label every set, so a synthetic set whose intensities
drift shows it as changed class fractions as well as changed histograms. They are intensity
classes, not an anatomical segmentation.

Distances between the pooled real and pooled synthetic histograms of each class:

* Wasserstein-1 (earth mover's) distance in standard intensity units (how far, on average,
  intensity mass must move);
* Jensen-Shannon distance (base 2), from 0 (same shape) to 1 (no overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_fill_holes
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from skimage.filters import threshold_multiotsu

from engine.metrics.volume_sets import VolumeSet, check_standard_range

TISSUE_NAMES = ("dark (CSF-like)", "middle (GM-like)", "bright (WM-like)")


@dataclass(frozen=True)
class HistogramSettings:
    """How brain masks and histograms are made.

    Attributes:
        scale: standard-space maximum (intensity units).
        mask_threshold: brain-mask threshold in standard units.
        n_bins: histogram bins over [0, scale].
    """

    scale: float = 1000.0
    mask_threshold: float = 20.0
    n_bins: int = 100

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.scale, self.n_bins + 1)

    @property
    def centres(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


def brain_mask(volume: np.ndarray, *, threshold: float) -> np.ndarray:
    """Boolean brain mask: above ``threshold`` (standard units), enclosed holes filled."""
    return binary_fill_holes(np.asarray(volume) > threshold)


@dataclass
class SetStatistics:
    """Per-volume figures of one set, from one pass over it.

    Attributes:
        histograms: (N, n_bins) counts of brain-mask intensities.
        mask_voxels: (N,) brain-mask voxel counts.
        union_mask: voxels inside the brain mask of any volume of the set.
    """

    histograms: np.ndarray
    mask_voxels: np.ndarray
    union_mask: np.ndarray


def set_statistics(
    vset: VolumeSet,
    *,
    settings: HistogramSettings,
    validate: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SetStatistics:
    """Histogram and mask every volume of ``vset`` (one volume in memory at a time).

    Args:
        vset: the set.
        settings: mask threshold, bins and scale.
        validate: refuse volumes outside standard space [0, scale] (see
            :func:`engine.metrics.volume_sets.check_standard_range`).
        progress: called as ``progress(done, total)``.

    Raises:
        EvaluationError: a volume is not in standard space.
    """
    hists = np.zeros((len(vset), settings.n_bins), dtype=np.int64)
    voxels = np.zeros(len(vset), dtype=np.int64)
    union = np.zeros(vset.shape, dtype=bool)
    edges = settings.edges
    for i, volume in enumerate(vset.volumes):
        volume = np.asarray(volume)
        if validate:
            check_standard_range(vset.labels[i], volume, scale=settings.scale)
        mask = brain_mask(volume, threshold=settings.mask_threshold)
        union |= mask
        voxels[i] = int(mask.sum())
        # Clip so that values at exactly ``scale`` (or a rounding hair above) land in the last bin.
        hists[i] = np.histogram(np.clip(volume[mask], 0.0, settings.scale), bins=edges)[0]
        if progress is not None:
            progress(i + 1, len(vset))
    return SetStatistics(histograms=hists, mask_voxels=voxels, union_mask=union)


def tissue_thresholds(pooled_counts: np.ndarray, settings: HistogramSettings) -> tuple[float, float]:
    """Two 3-class Otsu thresholds (standard units) of a pooled histogram."""
    t = threshold_multiotsu(classes=3, hist=(np.asarray(pooled_counts, dtype=np.float64), settings.centres))
    return float(t[0]), float(t[1])


def tissue_bins(thresholds: tuple[float, float], settings: HistogramSettings) -> np.ndarray:
    """Class (0, 1, 2) of every histogram bin, by its centre (``np.digitize``, as scikit-image labels)."""
    return np.digitize(settings.centres, bins=np.asarray(thresholds))


@dataclass(frozen=True)
class HistogramComparison:
    """Real vs synthetic intensity distribution of one tissue class (or the whole brain).

    Attributes:
        name: class name.
        range: (low, high) intensity range of the class in standard units.
        wasserstein: Wasserstein-1 distance of the pooled histograms, standard units.
        js_distance: Jensen-Shannon distance (base 2) of the pooled histograms, in [0, 1].
        real_fraction: mean and sd over real volumes of the class's share of brain voxels.
        synthetic_fraction: the same over synthetic volumes.
        real_density: pooled real histogram of the class, normalised to sum to 1.
        synthetic_density: pooled synthetic histogram, normalised to sum to 1.
    """

    name: str
    range: tuple[float, float]
    wasserstein: float | None
    js_distance: float | None
    real_fraction: tuple[float, float]
    synthetic_fraction: tuple[float, float]
    real_density: tuple[float, ...] = field(repr=False)
    synthetic_density: tuple[float, ...] = field(repr=False)


def _density(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts, dtype=np.float64)


def _fraction_stats(hists: np.ndarray, selector: np.ndarray) -> tuple[float, float]:
    totals = hists.sum(axis=1)
    frac = np.where(totals > 0, hists[:, selector].sum(axis=1) / np.maximum(totals, 1), 0.0)
    return float(frac.mean()), float(frac.std(ddof=1)) if len(frac) > 1 else 0.0


def compare_histograms(
    real: SetStatistics, synthetic: SetStatistics, *, settings: HistogramSettings
) -> tuple[tuple[float, float], list[HistogramComparison]]:
    """Tissue thresholds from the real set, then the whole-brain and per-class comparisons.

    Returns:
        (thresholds in standard units, [whole brain, dark, middle, bright]).
    """
    pooled_real = real.histograms.sum(axis=0)
    pooled_synth = synthetic.histograms.sum(axis=0)
    thresholds = tissue_thresholds(pooled_real, settings)
    classes = tissue_bins(thresholds, settings)
    centres = settings.centres
    edges = settings.edges
    out = []
    selectors = [("whole brain", np.ones_like(classes, dtype=bool))] + [
        (name, classes == k) for k, name in enumerate(TISSUE_NAMES)
    ]
    for name, sel in selectors:
        r_counts, s_counts = pooled_real[sel], pooled_synth[sel]
        if r_counts.sum() > 0 and s_counts.sum() > 0:
            w = float(wasserstein_distance(centres[sel], centres[sel], r_counts, s_counts))
            js = float(jensenshannon(r_counts, s_counts, base=2))
        else:  # a class one set does not have at all: no distance, the fractions tell the story
            w, js = None, None
        idx = np.flatnonzero(sel)
        out.append(
            HistogramComparison(
                name=name,
                range=(float(edges[idx[0]]), float(edges[idx[-1] + 1])) if idx.size else (0.0, 0.0),
                wasserstein=w,
                js_distance=js,
                real_fraction=_fraction_stats(real.histograms, sel),
                synthetic_fraction=_fraction_stats(synthetic.histograms, sel),
                real_density=tuple(float(v) for v in _density(pooled_real * sel)),
                synthetic_density=tuple(float(v) for v in _density(pooled_synth * sel)),
            )
        )
    return thresholds, out


@dataclass(frozen=True)
class BrainVolumeResult:
    """Brain-mask volumes of both sets.

    Attributes:
        voxel_volume_ml: volume of one voxel in mL.
        real_ml: brain-mask volume of each real volume, mL.
        synthetic_ml: brain-mask volume of each synthetic volume, mL.
        real_mean_sd: mean and sd of ``real_ml``.
        synthetic_mean_sd: mean and sd of ``synthetic_ml``.
        wasserstein_ml: Wasserstein-1 distance between the two distributions, mL.
    """

    voxel_volume_ml: float
    real_ml: tuple[float, ...]
    synthetic_ml: tuple[float, ...]
    real_mean_sd: tuple[float, float]
    synthetic_mean_sd: tuple[float, float]
    wasserstein_ml: float


def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def brain_volumes(real: SetStatistics, synthetic: SetStatistics, *, voxel_volume_ml: float) -> BrainVolumeResult:
    """Brain-mask volumes (mL) of both sets and the distance between their distributions."""
    r = real.mask_voxels * voxel_volume_ml
    s = synthetic.mask_voxels * voxel_volume_ml
    return BrainVolumeResult(
        voxel_volume_ml=float(voxel_volume_ml),
        real_ml=tuple(float(v) for v in r),
        synthetic_ml=tuple(float(v) for v in s),
        real_mean_sd=_mean_sd(r),
        synthetic_mean_sd=_mean_sd(s),
        wasserstein_ml=float(wasserstein_distance(r, s)),
    )
