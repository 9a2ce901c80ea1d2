"""Tiny training data the training tests make: brain-like blobs already on a preset's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def blob_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth ellipsoid "brain" in standard space (background 0, brain's top percentile at 1000)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radii = 0.7 + 0.1 * rng.random(3)
    r2 = sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True))
    inside = r2 < 1.0
    data = np.where(inside, 600.0 + 300.0 * np.cos(3.0 * r2 + rng.random()) + 50.0 * rng.random(shape), 0.0)
    # As the intensity mapping leaves a scan: the brain's 99.5th percentile at 1000, clipped.
    data = data * (1000.0 / np.percentile(data[inside], 99.5))
    return np.clip(data, 0.0, 1000.0).astype(np.float32)


def write_volumes(folder: Path, spec, n: int, *, start: int = 0, prefix: str = "scan") -> list[Path]:
    """``n`` NIfTI files on ``spec.grid`` (its MNI affine), standard intensities."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        img = nib.Nifti1Image(blob_volume(tuple(spec.grid.shape), seed=i), spec.grid.affine)
        img.set_sform(spec.grid.affine, code=4)
        img.set_qform(spec.grid.affine, code=4)
        path = folder / f"{prefix}_{i:03d}.nii.gz"
        nib.save(img, path)
        paths.append(path)
    return paths


def tiny_run_config(tmp_path: Path, data_dir: Path, /, **overrides):
    """The training tests' short run of the tiny preset on ``data_dir``: one epoch of batch 2, a quarter
    held out, no samples, checkpoints or TensorBoard beyond the run's end; ``overrides`` win."""
    from engine.training.config import load_config

    values = {
        "preset": "tiny",
        "data": [str(data_dir)],
        "out": str(tmp_path / "run"),
        "epochs": 1,
        "batch_size": 2,
        "val_fraction": 0.25,
        "val_timesteps": 2,
        "sample_every": 0,
        "checkpoint_every": 0,
        "resume_every_minutes": 0.0,
        "cache_dir": str(tmp_path / "cache"),
        "tensorboard": False,
        **overrides,
    }
    return load_config(None, values)
