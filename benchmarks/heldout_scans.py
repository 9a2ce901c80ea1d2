"""Held-out scans for the demo-model benchmarks: prepared onto a model grid, and their main modes.

Shared by ``demo_model_quality.py``, ``denoising_error_by_timestep.py``,
``global_layout_recovery.py`` and ``volume_set_statistics.py`` (run as scripts, so this folder
is on ``sys.path``), so every figure is computed on the same scans and the same components.
"""

from __future__ import annotations

import numpy as np

from engine.preprocessing import prepare_scan
from engine.specs import ModelSpec
from engine.volumes import find_volumes, load_volume


def prepared_scans(folder: str, spec: ModelSpec, count: int | None = None) -> np.ndarray:
    """The first ``count`` scans found in ``folder`` (all when None) on the model grid,
    standard intensities, shape ``(n, *grid)``."""
    paths = find_volumes([folder])[:count]
    return np.stack([prepare_scan(load_volume(p), spec).data for p in paths])


def principal_components(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, axes, variances)`` of the first ``k`` principal components of ``(n, voxels)``
    rows, in float64: ``axes`` is ``(k, voxels)``, ``variances`` the components' sample variances."""
    flat = flat.astype(np.float64)
    mean = flat.mean(0)
    _, singular, axes = np.linalg.svd(flat - mean, full_matrices=False)
    return mean, axes[:k], singular[:k] ** 2 / (len(flat) - 1)
