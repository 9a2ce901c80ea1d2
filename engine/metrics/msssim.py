"""Multi-scale structural similarity (MS-SSIM, Wang, Simoncelli & Bovik 2003) for 3-D volumes.

Computed as MONAI's :class:`monai.metrics.MultiScaleSSIMMetric` does (tests check both against
it, and the per-scale SSIM against scikit-image's ``structural_similarity``):

* at each scale, SSIM and the contrast-structure term cs with a Gaussian window, "valid"
  filtering (no padding), population (not sample) variances, C1 = (0.01 R)², C2 = (0.03 R)²;
* the next scale is a 2 x 2 x 2 average pool (odd sizes lose their last voxel);
* MS-SSIM = Π_{s<S} relu(cs_s)^{w_s} · relu(ssim_S)^{w_S}, with the spatial means taken per scale.

Differences from MONAI, all deliberate:

* the filtering is separable and in float64 (MONAI's is a full 3-D convolution in float32);
  results agree with MONAI to ~1e-6 and with scikit-image's per-scale SSIM to ~1e-12;
* the window is chosen from the volume shape (:func:`choose_settings`) instead of MONAI's fixed
  11 voxels, which is too large for brain grids: MONAI requires every
  dimension // (S-1)² > kernel - 1, so 84 voxels and 5 scales allow a window of at most 5
  (84 // 16 = 5). When we shrink the window we shrink σ with it (σ = 1.5 · k / 11), so the
  window always spans ±3.5 σ as the standard 11-voxel, σ = 1.5 setting does; that is also
  exactly scikit-image's Gaussian window for that σ (its radius is int(3.5 σ + 0.5));
* grids too small for 5 scales (the 40 x 48 x 40 demo grid) use fewer scales and the first S
  of the standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), renormalised to sum to 1;
  the report says so.

Intensities are standard space divided by 1000, so ``data_range`` is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import correlate1d

from engine.metrics.errors import EvaluationError

STANDARD_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
STANDARD_KERNEL = 11
STANDARD_SIGMA = 1.5


@dataclass(frozen=True)
class MSSSIMSettings:
    """Parameters of one MS-SSIM computation.

    Attributes:
        kernel_size: Gaussian window width in voxels (odd), the same along every axis.
        sigma: Gaussian σ in voxels.
        weights: one exponent per scale, finest first (the standard five, or a renormalised subset).
        data_range: intensity range of the inputs (1 for standard space / 1000).
        k1: luminance stability constant.
        k2: contrast stability constant.
        note: why these settings were chosen, for the report.
    """

    kernel_size: int
    sigma: float
    weights: tuple[float, ...]
    data_range: float = 1.0
    k1: float = 0.01
    k2: float = 0.03
    note: str = ""

    @property
    def n_scales(self) -> int:
        return len(self.weights)

    def to_dict(self) -> dict:
        return {**asdict(self), "n_scales": self.n_scales}


def scale_fits(shape: Sequence[int], *, n_scales: int, kernel_size: int) -> bool:
    """Whether ``n_scales`` scales with a ``kernel_size`` window fit a volume of ``shape``.

    Two conditions: the coarsest scale (after n_scales - 1 halvings, rounding down) is at least
    one window wide, and MONAI's own check (dim // (n_scales - 1)² > kernel_size - 1) passes, so
    every setting we pick can be reproduced with ``MultiScaleSSIMMetric``.
    """
    monai_div = max(1, n_scales - 1) ** 2
    for dim in shape:
        coarsest = int(dim)
        for _ in range(n_scales - 1):
            coarsest //= 2
        if coarsest < kernel_size or int(dim) // monai_div <= kernel_size - 1:
            return False
    return True


def choose_settings(shape: Sequence[int], *, kernel_size: int | None = None, max_scales: int = 5) -> MSSSIMSettings:
    """The most scales, then the widest window (≤ 11, odd), that fit ``shape``.

    Args:
        shape: volume shape in voxels.
        kernel_size: force this window width (odd, ≥ 3); scales are still chosen to fit.
        max_scales: at most this many scales (≤ 5).

    Raises:
        EvaluationError: the volume is too small for even 2 scales with a 3-voxel window.
    """
    if kernel_size is not None and (kernel_size < 3 or kernel_size % 2 == 0):
        raise EvaluationError(f"the MS-SSIM window must be an odd number of voxels ≥ 3 (got {kernel_size})")
    kernels = [kernel_size] if kernel_size else list(range(STANDARD_KERNEL, 2, -2))
    for n_scales in range(min(max_scales, len(STANDARD_WEIGHTS)), 1, -1):
        for k in kernels:
            if scale_fits(shape, n_scales=n_scales, kernel_size=k):
                weights = STANDARD_WEIGHTS[:n_scales]
                # The standard five sum to 1.0001; keep them exactly (as MONAI), renormalise a subset.
                total = sum(weights) if n_scales < len(STANDARD_WEIGHTS) else 1.0
                notes = []
                if k != STANDARD_KERNEL:
                    notes.append(
                        f"window {k} voxels (σ = 1.5·{k}/11 = {STANDARD_SIGMA * k / STANDARD_KERNEL:.3f}) instead of "
                        f"11 (σ = 1.5): the largest that fits {n_scales} scales of a "
                        f"{' x '.join(str(d) for d in shape)} grid"
                    )
                if n_scales < len(STANDARD_WEIGHTS):
                    notes.append(
                        f"{n_scales} scales instead of 5 (the grid is too small), weights = the first {n_scales} "
                        f"standard weights renormalised to sum to 1"
                    )
                return MSSSIMSettings(
                    kernel_size=k,
                    sigma=STANDARD_SIGMA * k / STANDARD_KERNEL,
                    weights=tuple(w / total for w in weights),
                    note="; ".join(notes) or "standard settings (5 scales, window 11, σ = 1.5)",
                )
    raise EvaluationError(
        f"volumes of {' x '.join(str(d) for d in shape)} voxels are too small for MS-SSIM "
        f"(2 scales with a 3-voxel window need at least 6 voxels along every axis)"
    )


@dataclass(frozen=True)
class MSSSIMValue:
    """MS-SSIM of one pair, with its per-scale terms.

    Attributes:
        value: MS-SSIM.
        ssim: mean SSIM per scale (finest first).
        cs: mean contrast-structure term per scale.
    """

    value: float
    ssim: tuple[float, ...]
    cs: tuple[float, ...]


def _gaussian_1d(kernel_size: int, sigma: float) -> np.ndarray:
    dist = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    g = np.exp(-0.5 * (dist / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering along every axis, keeping only the "valid" part.

    scipy's C filters are several times faster than torch's float64 convolutions on the CPU.
    The border mode is irrelevant: the cropped voxels are the only ones it touches.
    """
    radius = (g.size - 1) // 2
    for axis in range(x.ndim):
        x = correlate1d(x, g, axis=axis, mode="nearest")
    return x[tuple(slice(radius, n - radius) for n in x.shape)]


def _downsample(x: np.ndarray) -> np.ndarray:
    """2 x 2 x 2 average pooling; an odd size loses its last voxel (as torch's avg_pool3d)."""
    x = x[tuple(slice(0, n // 2 * 2) for n in x.shape)]
    nx, ny, nz = (n // 2 for n in x.shape)
    return x.reshape(nx, 2, ny, 2, nz, 2).mean(axis=(1, 3, 5))


def ssim_and_cs(x: np.ndarray, y: np.ndarray, settings: MSSSIMSettings) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of one pair at one scale.

    Args:
        x: float64 volume, intensities on [0, ``settings.data_range``].
        y: float64 volume of the same shape.
        settings: window, σ, constants and data range.
    """
    g = _gaussian_1d(settings.kernel_size, settings.sigma)
    c1 = (settings.k1 * settings.data_range) ** 2
    c2 = (settings.k2 * settings.data_range) ** 2
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    sigma_x = _filter_valid(x * x, g) - mu_x * mu_x
    sigma_y = _filter_valid(y * y, g) - mu_y * mu_y
    sigma_xy = _filter_valid(x * y, g) - mu_x * mu_y
    cs_map = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return float(ssim_map.mean()), float(cs_map.mean())


def ms_ssim(x: np.ndarray, y: np.ndarray, settings: MSSSIMSettings) -> MSSSIMValue:
    """MS-SSIM of one pair of volumes.

    Args:
        x: 3-D volume, intensities on [0, ``settings.data_range``].
        y: same shape as ``x``.
        settings: from :func:`choose_settings`.

    Returns:
        MS-SSIM and the per-scale SSIM and cs.

    Raises:
        EvaluationError: shapes differ or the settings do not fit the shape.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise EvaluationError(f"MS-SSIM needs volumes of one shape (got {x.shape} and {y.shape})")
    if not scale_fits(x.shape, n_scales=settings.n_scales, kernel_size=settings.kernel_size):
        raise EvaluationError(
            f"{settings.n_scales} MS-SSIM scales with a {settings.kernel_size}-voxel window do not fit "
            f"{' x '.join(str(d) for d in x.shape)} volumes"
        )
    ssims, css = [], []
    for scale in range(settings.n_scales):
        if scale:
            x, y = _downsample(x), _downsample(y)
        s, c = ssim_and_cs(x, y, settings)
        ssims.append(s)
        css.append(c)
    # MONAI clamps negative terms to 0 (relu) before the weighted geometric mean.
    terms = np.maximum(np.array([*css[:-1], ssims[-1]]), 0.0)
    value = float(np.prod(terms ** np.asarray(settings.weights)))
    return MSSSIMValue(value=value, ssim=tuple(ssims), cs=tuple(css))


@dataclass(frozen=True)
class PairSummary:
    """MS-SSIM over sampled pairs.

    Attributes:
        mean: mean MS-SSIM over the pairs.
        std: sample standard deviation over the pairs (0 for one pair).
        n_pairs: pairs evaluated.
        n_possible: distinct pairs that exist.
        values: MS-SSIM of each pair.
        pairs: (index in first set, index in second set) of each pair.
    """

    mean: float
    std: float
    n_pairs: int
    n_possible: int
    values: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "n_pairs": self.n_pairs,
            "n_possible": self.n_possible,
            "values": list(self.values),
            "pairs": [list(p) for p in self.pairs],
        }


def sample_pairs(
    n_first: int, n_second: int | None, *, n_pairs: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int]], int]:
    """Distinct random pairs, without replacement.

    Args:
        n_first: size of the first set.
        n_second: size of the second set, or None for pairs within the first set (i < j).
        n_pairs: wanted pairs; all pairs when fewer exist.
        rng: random generator (seeded by the caller, so results repeat).

    Returns:
        (pairs, number of distinct pairs that exist).

    Raises:
        EvaluationError: no pair exists (a set of one for within-set pairs).
    """
    if n_second is None:
        n_possible = n_first * (n_first - 1) // 2
        if n_possible == 0:
            raise EvaluationError(f"within-set MS-SSIM needs at least 2 volumes (the set has {n_first})")
        chosen = rng.choice(n_possible, size=min(n_pairs, n_possible), replace=False)
        rows, cols = np.triu_indices(n_first, k=1)
        return [(int(rows[c]), int(cols[c])) for c in np.sort(chosen)], n_possible
    n_possible = n_first * n_second
    if n_possible == 0:
        raise EvaluationError("between-set MS-SSIM needs a volume in each set")
    chosen = rng.choice(n_possible, size=min(n_pairs, n_possible), replace=False)
    return [(int(c // n_second), int(c % n_second)) for c in np.sort(chosen)], n_possible


def summarise(values: Sequence[float], pairs: Sequence[tuple[int, int]], n_possible: int) -> PairSummary:
    """Mean and spread of per-pair MS-SSIM values."""
    arr = np.asarray(values, dtype=np.float64)
    return PairSummary(
        mean=float(arr.mean()),
        std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        n_pairs=int(arr.size),
        n_possible=int(n_possible),
        values=tuple(float(v) for v in arr),
        pairs=tuple((int(a), int(b)) for a, b in pairs),
    )
