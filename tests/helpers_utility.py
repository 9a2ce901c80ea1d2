"""Tiny labelled data sets for the utility tests: 16^3 "brains", a bright blob marks a patient.

Real scans are NIfTI files with a ``participants.tsv`` beside them (as ``demo-data`` writes);
synthetic volumes carry sidecars with ``conditions`` and the checkpoint that made them (as
``brainsynth-cli sample`` writes). Every volume is in standard space (0 to 1000) on one grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers_volumes import write_nifti

SHAPE = (16, 16, 16)
AFFINE = np.array([[4.0, 0, 0, -30.0], [0, 4.0, 0, -30.0], [0, 0, 4.0, -30.0], [0, 0, 0, 1.0]])


def brain(rng: np.random.Generator, *, patient: bool, shape=SHAPE) -> np.ndarray:
    """A ball of tissue (about 500) with noise; a patient has a bright blob (1000) inside it."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-0.5, 0.5, 3)
    r = np.sqrt(((ijk - centre) ** 2).sum(-1))
    data = np.where(r < min(shape) * 0.42, 500.0 + rng.normal(0, 40, shape), 0.0)
    if patient:
        blob = np.sqrt(((ijk - (centre + np.array([2.5, 1.5, 0.0]))) ** 2).sum(-1))
        data = np.where(blob < 2.6, 1000.0, data)
    return np.clip(data, 0, 1000).astype(np.float32)


def write_real(
    folder: Path,
    *,
    patients: int,
    controls: int,
    seed: int = 0,
    prefix: str = "s",
    shuffle_labels: bool = False,
    missing: int = 0,
    shape=SHAPE,
    affine=AFFINE,
) -> list[Path]:
    """Real scans ``<prefix>NNN.nii.gz`` and ``participants.tsv`` (group ftd/control, age).

    Args:
        shuffle_labels: write the labels in a random order (the task then cannot be learnt).
        missing: leave the group of this many subjects empty ("n/a").
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = ["ftd"] * patients + ["control"] * controls
    rng.shuffle(groups)
    labels = list(groups)
    if shuffle_labels:
        labels = list(rng.permutation(labels))
    rows = ["participant_id\tgroup\tage"]
    paths = []
    for i, (truth, label) in enumerate(zip(groups, labels, strict=True)):
        name = f"{prefix}{i:03d}"
        paths.append(write_nifti(folder / f"{name}.nii.gz", brain(rng, patient=truth == "ftd", shape=shape), affine))
        age = 60 + (10 if truth == "ftd" else 0) + rng.normal(0, 2)
        rows.append(f"{name}\t{'n/a' if i < missing else label}\t{age:.1f}")
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return paths


def write_synthetic(
    folder: Path,
    *,
    patients: int,
    controls: int,
    seed: int = 100,
    checkpoint_name: str = "generator.safetensors",
    checkpoint_sha256: str | None = "0" * 64,
    label: str | None = "group",
    shape=SHAPE,
    affine=AFFINE,
) -> list[Path]:
    """Synthetic volumes with ``sample``-style sidecars (conditions, checkpoint, its SHA-256)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, group in enumerate(["ftd"] * patients + ["control"] * controls):
        path = write_nifti(
            folder / f"synthetic_{i:04d}.nii.gz", brain(rng, patient=group == "ftd", shape=shape), affine
        )
        conditions = {label: group} if label else {}
        sidecar = {"checkpoint": checkpoint_name, "checkpoint_sha256": checkpoint_sha256, "seed": i}
        if label is not None:
            sidecar["conditions"] = conditions
        (folder / f"synthetic_{i:04d}.json").write_text(json.dumps(sidecar), encoding="utf-8")
        paths.append(path)
    return paths
