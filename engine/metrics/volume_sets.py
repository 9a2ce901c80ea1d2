"""Sets of same-shape volumes, validated once and read block by block with bounded memory.

A *set* is any sequence of 3-D arrays of one shape: a Python list of numpy arrays (what the
app holds), a 4-D numpy array, or a 4-D ``np.memmap`` (what the CLI spills files into so that
hundreds of volumes never sit in RAM at once). Metrics never stack a whole set; they read
contiguous voxel blocks of every volume (:func:`iter_voxel_blocks`) or one volume at a time.

Intensities: volumes are in BrainSynth's standard space [0, ``scale``] (``scale`` = 1000 by
default, see :mod:`engine.intensity`). Every metric divides by ``scale``, so all figures are
computed on [0, 1] with ``data_range = 1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.metrics.errors import EvaluationError

# Volumes may exceed the standard range by a rounding hair (resampling, float16 storage);
# anything further out is a file that was never mapped to standard space.
_RANGE_SLACK = 0.01


@dataclass(frozen=True)
class VolumeSet:
    """A named, validated set of volumes of one shape.

    Attributes:
        name: what the report calls the set ("real", "synthetic", "training").
        volumes: the volumes, each of shape ``shape``, standard-space intensities.
        shape: voxels along (R, A, S).
        labels: one display name per volume (file names from the CLI, "synthetic 3" from the app).
    """

    name: str
    volumes: Sequence[np.ndarray]
    shape: tuple[int, int, int]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def volume(self, index: int, *, scale: float) -> np.ndarray:
        """One volume as float64 divided by ``scale`` (so standard space becomes [0, 1])."""
        return np.asarray(self.volumes[index], dtype=np.float64) / scale


def make_set(
    name: str,
    volumes: Sequence[np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    min_count: int = 1,
    why: str = "",
) -> VolumeSet:
    """Check a set and wrap it.

    Args:
        name: the set's name in messages and reports.
        volumes: 3-D arrays of one shape.
        labels: one display name per volume; defaults to "<name> <i>".
        min_count: fewest volumes the caller's metrics need.
        why: what needs ``min_count`` volumes, for the message.

    Raises:
        EvaluationError: the set is empty, too small, not 3-D, or mixes shapes.
    """
    count = len(volumes)
    if count == 0:
        raise EvaluationError(f"the {name} set is empty; give at least {max(min_count, 1)} volumes")
    if count < min_count:
        raise EvaluationError(
            f"the {name} set has {count} volume{'s' if count != 1 else ''}; {why or 'this evaluation'} "
            f"needs at least {min_count}"
        )
    labels = tuple(labels) if labels is not None else tuple(f"{name} {i}" for i in range(count))
    if len(labels) != count:
        raise ValueError("one label per volume is needed")
    first = tuple(int(n) for n in np.shape(volumes[0]))
    if len(first) != 3:
        raise EvaluationError(f"{labels[0]} has shape {_fmt(first)}; 3-D volumes are needed")
    for label, volume in zip(labels, volumes, strict=True):
        shape = tuple(int(n) for n in np.shape(volume))
        if shape != first:
            raise EvaluationError(
                f"the {name} set mixes shapes: {labels[0]} is {_fmt(first)} but {label} is {_fmt(shape)}; "
                f"all volumes must be on one grid"
            )
    return VolumeSet(name=name, volumes=volumes, shape=first, labels=labels)  # type: ignore[arg-type]


def check_same_shape(*sets: VolumeSet) -> tuple[int, int, int]:
    """The common shape of several sets, or a clear error naming the two that differ."""
    first = sets[0]
    for other in sets[1:]:
        if other.shape != first.shape:
            raise EvaluationError(
                f"the {first.name} volumes are {_fmt(first.shape)} but the {other.name} volumes are "
                f"{_fmt(other.shape)}; compare sets on the same grid (resample with brainsynth-cli prepare)"
            )
    return first.shape


def check_standard_range(label: str, volume: np.ndarray, *, scale: float) -> None:
    """Refuse a volume whose intensities are not in standard space [0, scale].

    Raises:
        EvaluationError: naming the volume, its range and what to do.
    """
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if lo < -_RANGE_SLACK * scale or hi > (1 + _RANGE_SLACK) * scale or not np.isfinite(lo + hi):
        raise EvaluationError(
            f"{label} has intensities from {lo:.4g} to {hi:.4g}, outside BrainSynth's standard range "
            f"[0, {scale:g}]; evaluate volumes written by BrainSynth (brainsynth-cli prepare for real scans, "
            f"exported samples for synthetic ones)"
        )


def block_voxels(n_volumes: int, *, budget_bytes: int, bytes_per_value: int = 8) -> int:
    """Voxels per block so that one block of every volume fits in ``budget_bytes``.

    Two copies are counted: the float32 read and its float64 conversion.
    """
    per_voxel = max(1, n_volumes) * (bytes_per_value + 4)
    return max(4096, int(budget_bytes // per_voxel))


def iter_voxel_blocks(
    sets: Sequence[VolumeSet], *, scale: float, budget_bytes: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (voxel slice, float64 block of shape (volumes, voxels)) over the flattened grid.

    Volumes of all ``sets`` are stacked in order (set 0's volumes first). Each block holds the
    same contiguous run of voxels from every volume, divided by ``scale``.
    """
    n_voxels = sets[0].n_voxels
    n_volumes = sum(len(s) for s in sets)
    step = block_voxels(n_volumes, budget_bytes=budget_bytes)
    for start in range(0, n_voxels, step):
        window = slice(start, min(start + step, n_voxels))
        rows = [np.asarray(v).reshape(-1)[window] for s in sets for v in s.volumes]
        block = np.stack(rows).astype(np.float64)
        block /= scale
        yield window, block


def _fmt(shape: Sequence[int]) -> str:
    return " x ".join(str(n) for n in shape)
