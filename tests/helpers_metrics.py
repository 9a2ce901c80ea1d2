"""Tiny brain-like volumes and random MedicalNet weights files for the evaluation tests.

Volumes are in BrainSynth standard space [0, 1000] on small grids (32^3 by default) so every
metric runs in well under a second per call on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

SHAPE = (32, 32, 32)


def brain(seed: int, *, shape: tuple[int, int, int] = SHAPE, offset: float = 0.0) -> np.ndarray:
    """A skull-stripped "brain": an ellipsoid of grey and white matter with dark ventricles and
    smooth subject-specific texture, background exactly 0; ``offset`` shifts all brain intensities.

    Args:
        seed: subject seed (radii, texture).
        shape: grid shape (voxels).
        offset: added to brain voxels (standard units), to make a shifted set.

    Returns:
        float32 standard-space volume.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    radii = np.array([0.8, 0.9, 0.75]) * rng.uniform(0.97, 1.03, 3)
    r = np.sqrt(((grid / radii) ** 2).sum(-1))
    data = np.zeros(shape, np.float64)
    data[r < 1.0] = 550.0
    data[r < 0.8] = 850.0
    for side in (-0.2, 0.2):
        rv = np.sqrt((((grid - [side, 0.0, 0.05]) / [0.1, 0.35, 0.15]) ** 2).sum(-1))
        data[rv < 1.0] = 200.0
    texture = gaussian_filter(rng.standard_normal(shape), 1.5)
    brain_mask = r < 1.0
    data[brain_mask] += 60.0 * texture[brain_mask] / texture.std() + offset
    return np.clip(data, 0.0, 1000.0).astype(np.float32)


def brains(seeds, **kwargs) -> list[np.ndarray]:
    return [brain(s, **kwargs) for s in seeds]


def save_random_medicalnet(path: Path, *, block: str = "basic", layers=(1, 1, 1, 1), shortcut: str = "B") -> Path:
    """A randomly initialised MedicalNet ResNet saved as MedicalNet ships its files:
    ``{"state_dict": {"module.<key>": tensor}}`` (DataParallel prefixes), plus a seg head to ignore."""
    from engine.metrics.medicalnet import MedicalNetResNet

    torch.manual_seed(0)
    model = MedicalNetResNet(block=block, layers=layers, shortcut_type=shortcut)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)  # MedicalNet's head, unused here
    torch.save({"state_dict": state}, path)
    return path
