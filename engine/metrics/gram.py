"""Inner products between every pair of volumes, accumulated over voxel blocks.

Both the MMD (a kernel two-sample statistic) and the memorisation check (Pearson correlation
of every synthetic volume with every training volume) only need inner products, sums and
sums of squares of the flattened volumes. Accumulating them block by block visits each voxel
of each volume once and needs memory for one block of every volume plus the n x n matrix,
whatever the number or size of the volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.metrics.volume_sets import VolumeSet, iter_voxel_blocks

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GramStatistics:
    """Second-order statistics of a stack of flattened volumes (intensities divided by the scale).

    Attributes:
        gram: (n, n) float64 inner products <x_i, x_j> over the counted voxels.
        sums: (n,) sums of each volume over the counted voxels.
        sumsq: (n,) sums of squares (the Gram diagonal, kept for clarity).
        n_voxels: number of voxels counted (the mask's size, or the whole grid).
        offsets: start index of each input set in the stacked order, plus the total at the end.
    """

    gram: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray
    n_voxels: int
    offsets: tuple[int, ...]

    def block(self, a: int, b: int) -> np.ndarray:
        """The Gram block between input set ``a`` and input set ``b``."""
        return self.gram[self.offsets[a] : self.offsets[a + 1], self.offsets[b] : self.offsets[b + 1]]

    def correlation(self) -> np.ndarray:
        """(n, n) Pearson correlation between volumes over the counted voxels.

        A constant volume (zero variance) correlates 0 with everything.
        """
        n = float(self.n_voxels)
        centred = self.gram - np.outer(self.sums, self.sums) / n
        var = np.clip(np.diag(centred), 0.0, None)
        norm = np.sqrt(np.outer(var, var))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(norm > 0, centred / norm, 0.0)
        return np.clip(r, -1.0, 1.0)


def gram_statistics(
    sets: Sequence[VolumeSet],
    *,
    scale: float,
    budget_bytes: int,
    voxel_mask: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    stage: str = "inner products",
) -> GramStatistics:
    """Accumulate inner products of all volumes of ``sets`` (stacked in order).

    Args:
        sets: volume sets of one shape.
        scale: standard-space maximum; volumes are divided by it ([0, 1] intensities).
        budget_bytes: memory for one voxel block of all volumes.
        voxel_mask: boolean array of the grid's shape; only these voxels are counted.
        progress: called as ``progress(stage, voxels_done, voxels_total)``.
        stage: the stage name passed to ``progress``.

    Returns:
        The statistics, in float64.
    """
    n = sum(len(s) for s in sets)
    offsets = tuple(int(v) for v in np.cumsum([0, *[len(s) for s in sets]]))
    gram = np.zeros((n, n))
    sums = np.zeros(n)
    flat_mask = None if voxel_mask is None else np.asarray(voxel_mask, bool).reshape(-1)
    total = sets[0].n_voxels
    for window, block in iter_voxel_blocks(sets, scale=scale, budget_bytes=budget_bytes):
        if flat_mask is not None:
            block = block[:, flat_mask[window]]
        if block.shape[1]:
            gram += block @ block.T
            sums += block.sum(axis=1)
        if progress is not None:
            progress(stage, window.stop, total)
    counted = total if flat_mask is None else int(flat_mask.sum())
    return GramStatistics(gram=gram, sums=sums, sumsq=np.diag(gram).copy(), n_voxels=counted, offsets=offsets)
