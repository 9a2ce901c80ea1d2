"""What an evaluation is asked (:class:`EvaluationOptions`) and what it finds (:class:`EvaluationResult`
and its parts), as plain dataclasses.

They live here, beside the metrics that fill them, so that :mod:`engine.metrics.report` and
:mod:`engine.metrics.plots` read them without importing :mod:`engine.evaluation`, which runs
the metrics: imports point one way, evaluation → metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from engine import __version__
from engine.metrics.errors import EvaluationError
from engine.metrics.fid import FIDResult
from engine.metrics.histograms import BrainVolumeResult, HistogramComparison
from engine.metrics.memorisation import DEFAULT_COPY_THRESHOLD, MemorisationResult
from engine.metrics.mmd import MMDResult
from engine.metrics.msssim import MSSSIMSettings, PairSummary


@dataclass(frozen=True)
class EvaluationOptions:
    """Everything that changes the figures; all of it goes into the JSON.

    Attributes:
        scale: standard-space maximum (1000); intensities are divided by it.
        n_pairs: MS-SSIM pairs sampled within each set and between the sets.
        seed: seed of the pair sampling.
        msssim_kernel: force the MS-SSIM window (odd voxels); None picks the largest that fits.
        fid_weights: MedicalNet weights file for the 3-D FID; None → FID reported unavailable.
        fid_2d: also compute the Fréchet distance on 2-D slice descriptors.
        fid_2d_slices: slices per orientation and volume for ``fid_2d``.
        fid_batch_size: volumes per MedicalNet forward pass.
        device: "auto", "cpu", "cuda", ... for the FID network.
        precision: what the FID network computes in: ``"fp32"`` (the default: a metric that
            is compared between evaluations should not change with the machine), ``"bf16"``
            (autocast, where the device has bf16) or ``"auto"`` (bf16 where one timed forward
            pass says it is faster; :func:`engine.precision.choose_precision`). The FID is the
            only part of an evaluation that runs a network.
        copy_threshold: flag synthetic volumes whose nearest training r exceeds this.
        n_closest_pairs: closest synthetic/training pairs shown in the figure.
        mask_threshold: brain-mask threshold in standard units.
        histogram_bins: intensity histogram bins over [0, scale].
        spacing_mm: voxel size along (R, A, S) in mm, for brain volumes (mL) and figure aspect;
            None → the grid of this shape laid over the 1 mm MNI box (how every BrainSynth grid
            is defined). The CLI takes it from the files' affines.
        memory_budget_mb: memory for one voxel block of all volumes (MMD, memorisation).
    """

    scale: float = 1000.0
    n_pairs: int = 100
    seed: int = 0
    msssim_kernel: int | None = None
    fid_weights: Path | None = None
    fid_2d: bool = False
    fid_2d_slices: int = 8
    fid_batch_size: int = 2
    device: str = "auto"
    precision: str = "fp32"
    copy_threshold: float = DEFAULT_COPY_THRESHOLD
    n_closest_pairs: int = 4
    mask_threshold: float = 20.0
    histogram_bins: int = 100
    spacing_mm: tuple[float, float, float] | None = None
    memory_budget_mb: float = 512.0

    def __post_init__(self) -> None:
        from engine.precision import PRECISION_CHOICES

        if self.precision not in PRECISION_CHOICES:
            choices = ", ".join(PRECISION_CHOICES)
            raise EvaluationError(f"unknown precision {self.precision!r} for the FID network; choose one of: {choices}")
        if self.n_pairs < 1:
            raise EvaluationError(f"the number of MS-SSIM pairs must be at least 1 (got {self.n_pairs})")
        if not 0.0 < self.copy_threshold <= 1.0:
            raise EvaluationError(f"the near-copy threshold is a correlation in (0, 1] (got {self.copy_threshold})")
        if self.scale <= 0 or self.memory_budget_mb <= 0 or self.histogram_bins < 4:
            raise EvaluationError("scale and memory budget must be positive and histograms need at least 4 bins")
        if not 0 <= self.mask_threshold < self.scale:
            raise EvaluationError(f"the brain-mask threshold must lie in [0, {self.scale:g}) standard units")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fid_weights"] = str(self.fid_weights) if self.fid_weights else None
        return d


@dataclass(frozen=True)
class MSSSIMResult:
    """MS-SSIM within each set and between them.

    Attributes:
        settings: window, σ, scales, weights, data range (and why).
        within_real: pairs of distinct real volumes.
        within_synthetic: pairs of distinct synthetic volumes.
        between: (real, synthetic) pairs.
        seed: seed of the pair sampling.
    """

    settings: MSSSIMSettings
    within_real: PairSummary
    within_synthetic: PairSummary
    between: PairSummary
    seed: int


@dataclass(frozen=True)
class IntensityResult:
    """Whole-brain and per-tissue intensity histograms compared.

    Attributes:
        thresholds: the two tissue thresholds (standard units), from the real set.
        comparisons: whole brain first, then dark, middle, bright classes.
        bin_edges: histogram bin edges (standard units).
        method: how masks and classes were made.
    """

    thresholds: tuple[float, float]
    comparisons: tuple[HistogramComparison, ...]
    bin_edges: tuple[float, ...]
    method: str


@dataclass(frozen=True)
class EvaluationResult:
    """Every figure of one evaluation; :meth:`to_dict` is what ``evaluation.json`` holds.

    Attributes:
        shape: grid shape of all volumes (voxels).
        spacing_mm: voxel size along (R, A, S), mm.
        n_real: real volumes.
        n_synthetic: synthetic volumes.
        n_train: training volumes (0 when none were given).
        real_labels: names of the real volumes.
        synthetic_labels: names of the synthetic volumes.
        options: the options used.
        mmd: unbiased MMD (reference-study definition) and its RBF-kernel companion.
        msssim: MS-SSIM within and between sets.
        fid_3d: FID on MedicalNet features, or why it is unavailable.
        fid_2d: Fréchet distance on 2-D slice descriptors, if asked for.
        intensity: per-tissue histogram comparison.
        brain_volume: brain-mask volume distributions.
        memorisation: nearest-training-volume check, or why it is unavailable.
        sources: where the sets came from (folders, for the CLI).
        created: UTC time of the evaluation (ISO 8601).
        version: BrainSynth version.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    n_real: int
    n_synthetic: int
    n_train: int
    real_labels: tuple[str, ...]
    synthetic_labels: tuple[str, ...]
    options: EvaluationOptions
    mmd: MMDResult
    msssim: MSSSIMResult
    fid_3d: FIDResult
    fid_2d: FIDResult | None
    intensity: IntensityResult
    brain_volume: BrainVolumeResult
    memorisation: MemorisationResult
    sources: dict = field(default_factory=dict)
    created: str = ""
    version: str = __version__

    def to_dict(self) -> dict:
        """JSON-ready dict of every figure and parameter (slice images left out)."""
        out = _plain(self)
        out["intensity_space"] = {
            "input": f"BrainSynth standard space [0, {self.options.scale:g}] (engine.intensity)",
            "metrics": f"input / {self.options.scale:g}, i.e. [0, 1]; MS-SSIM data_range = 1",
        }
        return out


def _plain(value):
    """Dataclasses, tuples, numpy scalars and paths → JSON types; ndarray fields are dropped."""
    if isinstance(value, EvaluationOptions):
        return value.to_dict()
    if isinstance(value, MSSSIMSettings):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if not f.name.endswith("slices")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
