"""Memorisation check: is a synthetic volume a near copy of a training scan?

For every synthetic volume we find the training volume it correlates with most (Pearson r
over the voxels inside the brain mask of any evaluated volume, so that the shared empty
background does not inflate r) and flag it when r exceeds a threshold.

A fixed threshold alone is hard to trust, so two reference distributions are reported next to
it, computed the same way:

* real → training: each held-out real scan's nearest training scan (what "similar but not a
  copy" looks like for scans the model never saw);
* training → training: each training scan's nearest *other* training scan (leave-one-out).

A synthetic volume closer to a training scan than any training scan is to another is also
counted. Default threshold r > 0.98: different subjects' brains, even after affine
registration to MNI space, differ in ventricles and folding enough to keep their correlation
clearly below that, while a copy perturbed only by sampling noise stays above it. It is a
starting point, not a law: compare it with the reference distributions in the report and set
``copy_threshold`` accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_COPY_THRESHOLD = 0.98
# A real scan correlating this much with a training scan is the same file (or a copy of it).
_SAME_SCAN_R = 0.9999


@dataclass(frozen=True)
class NearestNeighbour:
    """One volume's nearest training volume.

    Attributes:
        index: index of the volume in its own set.
        label: its display name.
        train_index: index of the nearest training volume.
        train_label: its display name.
        r: Pearson correlation within the brain mask.
    """

    index: int
    label: str
    train_index: int
    train_label: str
    r: float


@dataclass(frozen=True)
class ClosestPair:
    """A synthetic volume next to its nearest training volume, as three orthogonal mid slices each.

    Attributes:
        neighbour: which pair.
        synthetic_slices: (sagittal, coronal, axial) 2-D arrays through the brain's centre, [0, 1].
        train_slices: the same slices of the training volume.
    """

    neighbour: NearestNeighbour
    synthetic_slices: tuple[np.ndarray, ...] = field(repr=False)
    train_slices: tuple[np.ndarray, ...] = field(repr=False)


@dataclass(frozen=True)
class MemorisationResult:
    """Nearest-training-volume correlations and near-copy flags.

    Attributes:
        available: False when no training set was given (then only ``reason`` is set).
        reason: why it is unavailable.
        threshold: flag synthetic volumes whose nearest r exceeds this.
        n_mask_voxels: voxels the correlations were computed over.
        synthetic: nearest training volume of each synthetic volume.
        real_reference: nearest training volume of each real volume.
        train_reference: each training volume's nearest other training volume (empty for a
            training set of one).
        flagged: synthetic volumes with r > ``threshold``.
        closer_than_any_training_pair: synthetic volumes whose r exceeds the largest
            training → training nearest r.
        real_in_training: real volumes identical to a training volume (r ≥ 0.9999): then the
            real → training reference is not a held-out reference.
        closest_pairs: the synthetic volumes with the highest r, with slices for a figure.
    """

    available: bool
    reason: str = ""
    threshold: float = DEFAULT_COPY_THRESHOLD
    n_mask_voxels: int = 0
    synthetic: tuple[NearestNeighbour, ...] = ()
    real_reference: tuple[NearestNeighbour, ...] = ()
    train_reference: tuple[NearestNeighbour, ...] = ()
    flagged: tuple[NearestNeighbour, ...] = ()
    closer_than_any_training_pair: tuple[NearestNeighbour, ...] = ()
    real_in_training: tuple[str, ...] = ()
    closest_pairs: tuple[ClosestPair, ...] = field(default=(), repr=False)
    measure: str = "Pearson r within the union of all evaluated brain masks"


def nearest(
    r: np.ndarray, labels: tuple[str, ...], train_labels: tuple[str, ...], *, exclude_self: bool = False
) -> tuple[NearestNeighbour, ...]:
    """Nearest training volume of each row of a (volumes, training volumes) correlation block.

    Args:
        r: correlation block.
        labels: names of the rows.
        train_labels: names of the columns.
        exclude_self: the rows are the training set itself; ignore the diagonal.
    """
    r = np.array(r, dtype=np.float64)
    if exclude_self:
        np.fill_diagonal(r, -np.inf)
    best = np.argmax(r, axis=1)
    return tuple(
        NearestNeighbour(index=i, label=labels[i], train_index=int(j), train_label=train_labels[j], r=float(r[i, j]))
        for i, j in enumerate(best)
    )


def assess(
    *,
    synthetic: tuple[NearestNeighbour, ...],
    real_reference: tuple[NearestNeighbour, ...],
    train_reference: tuple[NearestNeighbour, ...],
    threshold: float,
    n_mask_voxels: int,
) -> MemorisationResult:
    """Flags and overlap notes from the nearest-neighbour lists (closest pairs are added later)."""
    flagged = tuple(sorted((n for n in synthetic if n.r > threshold), key=lambda n: -n.r))
    if train_reference:
        ceiling = max(n.r for n in train_reference)
        closer = tuple(sorted((n for n in synthetic if n.r > ceiling), key=lambda n: -n.r))
    else:
        closer = ()
    same = tuple(n.label for n in real_reference if n.r >= _SAME_SCAN_R)
    return MemorisationResult(
        available=True,
        threshold=threshold,
        n_mask_voxels=n_mask_voxels,
        synthetic=synthetic,
        real_reference=real_reference,
        train_reference=train_reference,
        flagged=flagged,
        closer_than_any_training_pair=closer,
        real_in_training=same,
    )


def percentiles(values: list[float] | tuple[float, ...]) -> dict[str, float]:
    """Min, 5th, 50th, 95th percentile and max of a list (empty dict for no values)."""
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": float(arr.min()),
        "p5": float(np.percentile(arr, 5)),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }
