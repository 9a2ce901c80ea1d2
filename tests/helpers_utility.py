"""Tiny labelled data sets for the utility tests: 16^3 "brains", a bright blob marks a patient.

Real scans are NIfTI files with a ``participants.tsv`` beside them (as ``demo-data`` writes);
synthetic volumes carry sidecars with ``conditions`` and the checkpoint that made them (as
``brainsynth-cli sample`` writes): :func:`write_synthetic` writes such sidecars by hand,
:func:`write_exported` through the real export path (model-space arrays of a conditional spec,
:func:`engine.export.export_batch`). Every volume is in standard space (0 to 1000) on one grid.
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
    spelling: dict[str, str] | None = None,
    gain: float = 1.0,
    shape=SHAPE,
    affine=AFFINE,
) -> list[Path]:
    """Synthetic volumes with ``sample``-style sidecars (conditions, checkpoint, its SHA-256).

    Args:
        spelling: the label written for each group (e.g. ``{"ftd": "FTD"}``); default as is.
        gain: intensity factor of the written volumes (0.001: on a [0, 1] scale).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, group in enumerate(["ftd"] * patients + ["control"] * controls):
        path = write_nifti(
            folder / f"synthetic_{i:04d}.nii.gz", brain(rng, patient=group == "ftd", shape=shape) * gain, affine
        )
        conditions = {label: (spelling or {}).get(group, group)} if label else {}
        sidecar = {"checkpoint": checkpoint_name, "checkpoint_sha256": checkpoint_sha256, "seed": i}
        if label is not None:
            sidecar["conditions"] = conditions
        (folder / f"synthetic_{i:04d}.json").write_text(json.dumps(sidecar), encoding="utf-8")
        paths.append(path)
    return paths


def blob_spec():
    """A conditional spec (covariate ``group``: control, ftd) on the blobs' grid (:data:`SHAPE`, :data:`AFFINE`)."""
    from dataclasses import replace

    from engine.conditions import ConditionSpec, Covariate
    from engine.geometry import GridGeometry
    from engine.specs import PRESETS

    grid = GridGeometry(shape=SHAPE, spacing_mm=tuple(np.diag(AFFINE)[:3]), origin_mm=tuple(AFFINE[:3, 3]))
    conditions = ConditionSpec((Covariate("group", "categorical", categories=("control", "ftd")),))
    return replace(PRESETS["tiny"], name="blobs", grid=grid, conditions=conditions)


def exported_arrays(*, patients: int, controls: int, seed: int = 100) -> tuple[list[str], list[np.ndarray]]:
    """The groups and standard-space blob volumes that :func:`write_exported` writes."""
    rng = np.random.default_rng(seed)
    groups = ["ftd"] * patients + ["control"] * controls
    return groups, [brain(rng, patient=group == "ftd") for group in groups]


def write_exported(folder: Path, *, patients: int, controls: int, seed: int = 100) -> list[Path]:
    """Synthetic blob volumes written as ``brainsynth-cli sample`` writes them: model-space
    arrays, a conditional :class:`~engine.generation.GenerationRequest`'s provenance (with
    ``conditions``), :func:`engine.export.export_batch` (standard space, background rule,
    the grid's affine, sidecars)."""
    from engine.export import ExportVolume, export_batch
    from engine.generation import GenerationRequest
    from engine.sampler_registry import SamplerSettings

    spec = blob_spec()
    groups, arrays = exported_arrays(patients=patients, controls=controls, seed=seed)
    request = GenerationRequest(
        spec=spec,
        seeds=tuple(range(len(groups))),
        settings=SamplerSettings("ddim", 2),
        device="cpu",
        checkpoint_name="generator.safetensors",
        checkpoint_sha256="0" * 64,
        conditions=tuple({"group": group} for group in groups),
    )
    volumes = [
        ExportVolume(
            number=i,
            array=np.asarray(spec.intensity.standard_to_model(array), dtype=np.float32),
            provenance=request.provenance(i),
        )
        for i, array in enumerate(arrays)
    ]
    return export_batch(volumes, spec=spec, out_dir=folder)


def figures(summary: dict) -> dict:
    """Every figure of a result; run times aside, which differ between runs of course."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip({"arms": summary["arms"], "curve": summary["learning_curve"], "tests": summary["test_subjects"]})
