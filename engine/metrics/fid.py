"""Fréchet distances between feature distributions (FID, Heusel et al. 2017) and 2-D slice descriptors.

The Fréchet distance between Gaussians fitted to two sets of feature vectors is

    FD = ||μ_1 - μ_2||² + Tr(Σ_1 + Σ_2 - 2 (Σ_1 Σ_2)^{1/2})

with sample covariances (divisor n - 1), as MONAI's :class:`monai.metrics.FIDMetric` defines it
(a test checks the two agree). We never take a general matrix square root: Tr((Σ_1 Σ_2)^{1/2})
is the sum of the square roots of the eigenvalues of Σ_1 Σ_2, which we get either from the
symmetric positive semi-definite Σ_1^{1/2} Σ_2 Σ_1^{1/2} (more samples than features) or, when
the covariances are singular (fewer volumes than features, the usual case for 3-D MRI), as the
nuclear norm of the centred samples' cross product. Both stay real and exact where scipy's
``sqrtm`` (MONAI's route) can return complex round-off.

FID with fewer samples than feature dimensions is strongly biased upwards; the report gives
the numbers of samples so that only like is compared with like.

2-D option (``--fid-2d``): no 2-D network and no download. Each volume contributes
``slices_per_axis`` slices per orientation from the central half of each axis; each slice is
described by a 16 x 16 area-averaged thumbnail of its intensities and a 16 x 16 area-averaged
map of its gradient magnitude (512 values: coarse anatomy plus edge sharpness, which blurry
samples lose). The Fréchet distance is computed per orientation over all slices and averaged.
It is a Fréchet distance on low-level descriptors, *not* comparable with Inception or
RadImageNet FIDs published elsewhere; use it to compare your own models with each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.metrics.errors import EvaluationError

THUMBNAIL = 16
AXIS_NAMES = ("sagittal", "coronal", "axial")  # slicing RAS+ axis 0, 1, 2


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        features_a: (n_a, d) feature vectors.
        features_b: (n_b, d) feature vectors.

    Raises:
        EvaluationError: fewer than 2 samples in a set, or different feature sizes.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise EvaluationError(f"FID needs two (samples, features) arrays of one width (got {a.shape} and {b.shape})")
    if len(a) < 2 or len(b) < 2:
        raise EvaluationError(f"FID needs at least 2 volumes in each set (got {len(a)} and {len(b)})")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b  # Σ_a = ca^T ca / (n_a - 1), Σ_b likewise
    na, nb = len(a) - 1, len(b) - 1
    if min(na, nb) < a.shape[1]:
        # Fewer samples than features: the non-zero eigenvalues of Σ_a Σ_b are the squared singular
        # values of ca cb^T / sqrt(na nb) (an n_a x n_b matrix), so Tr((Σ_a Σ_b)^{1/2}) is its nuclear
        # norm: exact, cheap and free of the round-off that singular d x d matrices bring.
        tr_covmean = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / np.sqrt(na * nb)
    else:
        cov_a, cov_b = ca.T @ ca / na, cb.T @ cb / nb
        eigval, eigvec = np.linalg.eigh(cov_a)
        sqrt_a = (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T
        middle = sqrt_a @ cov_b @ sqrt_a
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu_a - mu_b
    trace_a, trace_b = float((ca * ca).sum()) / na, float((cb * cb).sum()) / nb
    return float(diff @ diff + trace_a + trace_b - 2.0 * tr_covmean)


@dataclass(frozen=True)
class FIDResult:
    """A Fréchet distance, or why it could not be computed.

    Attributes:
        available: whether ``value`` was computed.
        value: the distance (None when unavailable).
        reason: why it is unavailable, with what to do.
        features: what the feature vectors are.
        feature_dim: length of a feature vector.
        n_real: feature vectors from the real set.
        n_synthetic: feature vectors from the synthetic set.
        parameters: everything else needed to repeat it (weights file and hash, normalisation,
            slices, per-orientation values).
    """

    available: bool
    value: float | None = None
    reason: str = ""
    features: str = ""
    feature_dim: int = 0
    n_real: int = 0
    n_synthetic: int = 0
    parameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def slice_indices(n: int, slices_per_axis: int) -> list[int]:
    """Evenly spaced slice indices over the central half of an axis of ``n`` voxels."""
    lo, hi = n * 0.25, n * 0.75 - 1
    return sorted({round(float(v)) for v in np.linspace(lo, max(lo, hi), slices_per_axis)})


def slice_descriptors(volume: np.ndarray, *, slices_per_axis: int = 8) -> list[np.ndarray]:
    """2-D descriptors of one volume, one (slices, 512) array per orientation.

    Args:
        volume: 3-D volume, intensities on [0, 1] (standard space / 1000).
        slices_per_axis: slices taken per orientation.
    """
    volume = np.asarray(volume, dtype=np.float32)
    out = []
    for axis in range(3):
        idx = slice_indices(volume.shape[axis], slices_per_axis)
        slices = np.stack([np.take(volume, i, axis=axis) for i in idx])  # (S, H, W)
        gy, gx = np.gradient(slices, axis=(1, 2))
        stacked = torch.from_numpy(np.stack([slices, np.hypot(gx, gy)], axis=1))  # (S, 2, H, W)
        pooled = F.adaptive_avg_pool2d(stacked, THUMBNAIL)
        out.append(pooled.reshape(len(idx), -1).double().numpy())
    return out


def fid_2d(
    real: Sequence[np.ndarray],
    synthetic: Sequence[np.ndarray],
    *,
    scale: float,
    slices_per_axis: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> FIDResult:
    """Fréchet distance on 2-D slice descriptors, averaged over the three orientations.

    Args:
        real: real volumes (standard space).
        synthetic: synthetic volumes (standard space).
        scale: standard-space maximum (volumes are divided by it).
        slices_per_axis: slices per orientation and volume.
        progress: called as ``progress(done, total)`` over all volumes.
    """
    per_axis: list[list[list[np.ndarray]]] = [[[], [], []], [[], [], []]]
    total = len(real) + len(synthetic)
    done = 0
    for which, volumes in enumerate((real, synthetic)):
        for volume in volumes:
            for axis, desc in enumerate(slice_descriptors(np.asarray(volume) / scale, slices_per_axis=slices_per_axis)):
                per_axis[which][axis].append(desc)
            done += 1
            if progress is not None:
                progress(done, total)
    values = {}
    for axis, name in enumerate(AXIS_NAMES):
        values[name] = frechet_distance(np.concatenate(per_axis[0][axis]), np.concatenate(per_axis[1][axis]))
    n_slices = [sum(len(d) for d in per_axis[0][a]) for a in range(3)]
    return FIDResult(
        available=True,
        value=float(np.mean(list(values.values()))),
        features=(
            f"2-D slice descriptors: {THUMBNAIL}x{THUMBNAIL} area-averaged intensity + gradient-magnitude thumbnails "
            f"of {slices_per_axis} slices per orientation from the central half of each axis (no network)"
        ),
        feature_dim=2 * THUMBNAIL * THUMBNAIL,
        n_real=len(real),
        n_synthetic=len(synthetic),
        parameters={
            "per_orientation": values,
            "slices_per_axis": slices_per_axis,
            "real_slices_per_orientation": n_slices,
            "intensities": "standard space / 1000",
            "comparable_with_published_fid": False,
        },
    )
