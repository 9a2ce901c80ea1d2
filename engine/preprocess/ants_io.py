"""Moving RAS+ arrays in and out of ANTs images without losing their world position.

BrainSynth holds arrays in RAS+ with a voxel→mm (RAS) affine; ITK/ANTs describe an image by
origin, spacing and direction in LPS millimetres. ``physical_LPS = diag(-1, -1, 1) @ affine``,
so the array keeps its index order and an ANTs resampling onto an image made here from a
BrainSynth grid hands back an array in that grid's (RAS+) order.
"""

from __future__ import annotations

import os

import numpy as np

from engine.preprocess.errors import missing

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def require_ants():
    """The ``ants`` module (antspyx), or a one-line error with the install hint."""
    try:
        import ants
    except ImportError:
        raise missing("antspyx", "preprocessing raw scans (denoising, bias field, registration)") from None
    return ants


def set_threads(threads: int) -> None:
    """Use ``threads`` compute threads in ITK (ANTs) and torch (deepbet) in this process.

    ITK reads its environment variable when it creates its thread pool, so set it first.
    """
    threads = max(1, int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image of a RAS+ array with its voxel→mm affine.

    Args:
        data: 3-D array (any dtype; stored as float32).
        affine: 4x4 voxel→mm (RAS) affine; rotation and scaling (no shear).
    """
    ants = require_ants()
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = _RAS_TO_LPS @ affine[:3, :3] / spacing
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in origin),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def to_array(image) -> np.ndarray:
    """The voxels of an ANTs image made by :func:`to_ants` (or resampled onto one), float32."""
    return np.asarray(image.numpy(), dtype=np.float32)
