"""Brain extraction with deepbet (Fisch et al. 2024; its CNN weights ship inside the wheel).

deepbet takes a T1 in (closest) RAS+ orientation, which is how :class:`engine.volumes.Volume`
holds it, and returns a brain mask on the same voxels.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from engine.preprocess.errors import missing


@lru_cache(maxsize=2)
def _extractor(device: str):
    if device == "cuda":
        from engine.device import resolve_device

        resolve_device("cuda")  # a clear error when there is no CUDA GPU, not a silent CPU run
    try:
        from deepbet.bet import BrainExtraction
    except ImportError:
        raise missing("deepbet", "brain extraction") from None
    with warnings.catch_warnings():
        # deepbet loads TorchScript files; torch 2.9+ warns that torch.jit.load is deprecated.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
        return BrainExtraction(no_gpu=device != "cuda")


def extract_brain(data: np.ndarray, *, device: str = "cpu", threshold: float = 0.5) -> np.ndarray:
    """The brain mask of a head T1 (RAS+ voxels), from deepbet's two networks.

    Args:
        data: 3-D intensities in RAS+ voxel order (any units).
        device: "cpu" or "cuda".
        threshold: probability above which a voxel is brain.

    Returns:
        bool array of ``data.shape``: the largest connected brain region, holes filled.
    """
    extractor = _extractor(device)
    probability = extractor.run_model(np.ascontiguousarray(data, dtype=np.float32).copy())
    return np.asarray(extractor.postprocess(probability > threshold), dtype=bool)
