"""A demo population built from the MNI152 2009a T1 template (not patients).

No public MRI data set can be downloaded where BrainSynth is often first tried, but the
ICBM 2009a symmetric template (with its grey- and white-matter maps) ships inside nilearn's
package data. Each demo "subject" is that one brain, changed the way real brains and
scanners differ:

* a smooth random diffeomorphic deformation (a stationary velocity field integrated by
  scaling and squaring, so folds never cross), a few mm at most;
* a global affine: scaling (head size), small rotations and shifts;
* an age (45 to 85 years) that drives one atrophy score, as ageing does: ventricle
  enlargement (a radial pull towards the lateral ventricles) and cortical atrophy (grey
  matter partly replaced by CSF signal);
* a sex that shifts head size (F about 2.5 % smaller, M about 2.5 % larger in each axis);
* for a share of subjects (``ftd_fraction``), an FTD-like pattern: extra frontal and anterior
  temporal cortical atrophy, enlarged frontal horns, stronger on one side. This pattern is a
  caricature made from one template, drawn by hand from the textbook description of
  behavioural-variant FTD; it is not a model of the disease and no real patient contributed;
* a smooth multiplicative bias field and Rician scanner noise, a random scanner gain.

They are written as skull-stripped float NIfTI volumes in the 1 mm MNI box
(181 x 217 x 181, RAS+), like a real preprocessed data set, so they go through the same
``prepare``/``train`` path a real data set does. They are template-derived: every one is the
same anatomy, deformed. Use them to try the software, never as evidence about brains.
``participants.tsv`` (BIDS style: participant_id, age, sex, group) lists every subject's
covariates; its participant_id is the file name without ``.nii.gz``.

Template notice (ICBM 2009a, reproduced as distributed by the MNI): Copyright (C) 1993–2009
Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
University. Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no
representations about the suitability of this software for any purpose. It is provided
"as is" without express or implied warranty.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.errors import BrainSynthError
from engine.geometry import MNI_BOX_SHAPE, mni_box_affine

TEMPLATE_NOTICE = __doc__.split("Template notice")[1].strip(" :\n")
# Approximate centre of the lateral ventricles in MNI space (mm, RAS).
VENTRICLE_CENTRE_MM = np.array([0.0, -12.0, 18.0])
BRAIN_CENTRE_MM = np.array([0.0, -18.0, 18.0])
# Frontal horns of the lateral ventricles and the anterior temporal poles (mm, RAS; left first).
FRONTAL_HORNS_MM = np.array([[-13.0, 14.0, 12.0], [13.0, 14.0, 12.0]])
TEMPORAL_POLES_MM = np.array([[-40.0, 10.0, -28.0], [40.0, 10.0, -28.0]])
AGE_RANGE = (45.0, 85.0)
GROUPS = ("control", "ftd")
PARTICIPANTS_FILE = "participants.tsv"
_COARSE_STEP_MM = 4  # velocity fields live on a 4 mm grid and are upsampled once


@dataclass(frozen=True)
class SubjectParameters:
    """The random draws that make one demo subject (all reproducible from its seed)."""

    seed: int
    scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    deformation_mm: float
    atrophy: float
    bias_strength: float
    noise_fraction: float
    gain: float
    age: float = 65.0
    sex: str = "F"
    group: str = "control"
    ftd_severity: float = 0.0
    ftd_laterality: float = 0.0


@dataclass
class DemoTemplate:
    """The MNI152 2009a T1 template and tissue maps, resampled into the 1 mm MNI box."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray

    @classmethod
    def load(cls) -> DemoTemplate:
        try:
            from nilearn import datasets
        except ImportError:
            raise BrainSynthError(
                "building demo data needs nilearn (it ships the MNI152 template): pip install 'brainsynth[demo]'"
            ) from None
        images = [
            datasets.load_mni152_template(resolution=1),
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1),
        ]
        box = mni_box_affine()
        arrays = []
        for image in images:
            # Template and box are both 1 mm RAS; only the origin differs, so this is a pure shift.
            to_source = np.linalg.inv(image.affine) @ box
            arrays.append(
                ndimage.affine_transform(
                    np.asarray(image.dataobj, dtype=np.float32), to_source, output_shape=MNI_BOX_SHAPE, order=1
                )
            )
        return cls(*arrays)


def draw_parameters(seed: int, *, ftd: bool = False) -> SubjectParameters:
    """The subject's random parameters; a fixed function of ``seed`` and ``ftd``.

    Age is uniform over :data:`AGE_RANGE`; the atrophy score rises with age (0.05 at 45 to
    0.65 at 85, plus individual spread of 0.07); sex scales the head by 0.975 (F) or 1.025 (M).
    An FTD-like subject also gets a severity in [0.5, 1] and a laterality in [-0.5, 0.5]
    (negative: the left side more affected).
    """
    rng = np.random.default_rng(seed)
    age = round(float(rng.uniform(*AGE_RANGE)), 1)
    sex = "F" if rng.random() < 0.5 else "M"
    head = rng.normal(1.0, 0.035) * (0.975 if sex == "F" else 1.025)
    young, old = AGE_RANGE
    atrophy = float(np.clip(0.05 + 0.6 * (age - young) / (old - young) + rng.normal(0.0, 0.07), 0.0, 1.0))
    params = {
        "seed": int(seed),
        "scale": tuple(float(head * rng.normal(1.0, 0.015)) for _ in range(3)),
        "rotation_deg": tuple(float(v) for v in rng.normal(0.0, 2.0, 3)),
        "shift_mm": tuple(float(v) for v in rng.normal(0.0, 1.5, 3)),
        "deformation_mm": float(rng.uniform(1.5, 4.0)),
        "atrophy": atrophy,
        "bias_strength": float(rng.uniform(0.03, 0.12)),
        "noise_fraction": float(rng.uniform(0.01, 0.03)),
        "gain": float(rng.uniform(600.0, 1400.0)),
        "age": age,
        "sex": sex,
    }
    severity, laterality = float(rng.uniform(0.5, 1.0)), float(rng.uniform(-0.5, 0.5))
    if ftd:
        params.update(group="ftd", ftd_severity=severity, ftd_laterality=laterality)
    return SubjectParameters(**params)


def synthesize_subject(template: DemoTemplate, params: SubjectParameters) -> np.ndarray:
    """One demo T1 volume in the 1 mm MNI box (scanner-like units, background 0)."""
    rng = np.random.default_rng([params.seed, 1])
    t1 = _atrophied_t1(template, params.atrophy, rng)
    if params.ftd_severity > 0:
        t1 = _ftd_atrophy(t1, template, params, np.random.default_rng([params.seed, 2]))
    coords = _sampling_coordinates(params, rng)
    warped = ndimage.map_coordinates(t1, coords, order=1, mode="constant", cval=0.0)
    brain = ndimage.map_coordinates((template.t1 > 0.05).astype(np.float32), coords, order=1) > 0.5
    del coords
    warped *= _bias_field(params.bias_strength, rng)
    sigma = params.noise_fraction * float(np.percentile(warped[brain], 99))
    noisy = np.hypot(warped + rng.normal(0.0, sigma, warped.shape), rng.normal(0.0, sigma, warped.shape))
    noisy[~brain] = 0.0  # skull-stripped, like the reference study's preprocessing
    return (noisy * params.gain).astype(np.float32)


def _atrophied_t1(template: DemoTemplate, atrophy: float, rng: np.random.Generator) -> np.ndarray:
    """Cortical atrophy: part of the outer grey matter takes CSF-like signal, patchily."""
    coarse_shape = _coarse_shape()
    patchiness = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 2.0)
    patchiness = _upsample(patchiness / (patchiness.std() + 1e-6), coarse_shape)
    cortex = template.gm * (1.0 - template.wm)
    loss = np.clip(atrophy * 0.6 * (1.0 + 0.5 * patchiness), 0.0, 0.9)
    csf_level = 0.25
    return template.t1 - loss * cortex**2 * np.clip(template.t1 - csf_level, 0.0, None)


def _box_world_mm() -> np.ndarray:
    """World coordinates (mm, RAS) of every voxel of the 1 mm box, float32 (3, *MNI_BOX_SHAPE)."""
    box = mni_box_affine()
    grid = np.indices(MNI_BOX_SHAPE, dtype=np.float32)
    return np.tensordot(box[:3, :3].astype(np.float32), grid, axes=1) + box[:3, 3, None, None, None].astype(np.float32)


def _side_weight(x_mm: np.ndarray, laterality: float) -> np.ndarray:
    """1 - laterality on the left (x < 0), 1 + laterality on the right, smoothly across the midline."""
    return (1.0 + laterality * np.tanh(x_mm / 8.0)).astype(np.float32)


def ftd_region(world: np.ndarray, laterality: float = 0.0) -> np.ndarray:
    """Where the FTD-like atrophy falls, in [0, ~1.5]: frontal lobe and anterior temporal poles.

    Frontal: a soft step forward of y = 0 mm (the frontal lobe lies anterior to the central
    sulcus, around y = -20 mm at the vertex; this keeps the motor strip mostly spared);
    temporal: a Gaussian of 16 mm around each temporal pole.
    """
    x, y, z = world
    frontal = 1.0 / (1.0 + np.exp(-(y - 0.0) / 6.0)) * (1.0 / (1.0 + np.exp(-(z + 25.0) / 6.0)))
    poles = sum(
        np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * 16.0**2)) for px, py, pz in TEMPORAL_POLES_MM
    )
    return (np.maximum(frontal, poles) * _side_weight(x, laterality)).astype(np.float32)


def _ftd_atrophy(t1: np.ndarray, template: DemoTemplate, params: SubjectParameters, rng) -> np.ndarray:
    """Extra cortical loss in :func:`ftd_region`, patchy, scaled by the severity."""
    coarse_shape = _coarse_shape()
    patchiness = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 2.0)
    patchiness = _upsample(patchiness / (patchiness.std() + 1e-6), coarse_shape)
    region = ftd_region(_box_world_mm(), params.ftd_laterality)
    cortex = template.gm * (1.0 - template.wm)
    loss = np.clip(params.ftd_severity * 0.75 * region * (1.0 + 0.4 * patchiness), 0.0, 0.9)
    return t1 - loss * cortex**1.5 * np.clip(t1 - 0.25, 0.0, None)


def _sampling_coordinates(params: SubjectParameters, rng: np.random.Generator) -> np.ndarray:
    """For every output voxel, the template voxel it shows (3, *MNI_BOX_SHAPE)."""
    box = mni_box_affine()
    coarse_shape = _coarse_shape()
    displacement = _diffeomorphic_displacement(coarse_shape, params.deformation_mm / _COARSE_STEP_MM, rng)
    grid = np.indices(MNI_BOX_SHAPE, dtype=np.float32)
    world = np.tensordot(box[:3, :3], grid, axes=1) + box[:3, 3, None, None, None]
    del grid
    for axis in range(3):  # coarse displacement (coarse voxels) → 1 mm field in mm
        world[axis] += _upsample(displacement[axis], coarse_shape) * np.float32(_COARSE_STEP_MM)
    # Ventricle enlargement: output voxels near the ventricles show template voxels closer to them.
    offset = world - VENTRICLE_CENTRE_MM[:, None, None, None].astype(np.float32)
    falloff = np.exp(-(offset**2).sum(axis=0) / (2 * 22.0**2)).astype(np.float32)
    world -= np.float32(0.35 * params.atrophy) * offset * falloff
    del offset, falloff
    if params.ftd_severity > 0:
        # Frontal-horn enlargement: a further pull towards each frontal horn, stronger on the
        # more affected side.
        for side, centre in zip((-1.0, 1.0), FRONTAL_HORNS_MM, strict=True):
            offset = world - centre[:, None, None, None].astype(np.float32)
            falloff = np.exp(-(offset**2).sum(axis=0) / (2 * 11.0**2)).astype(np.float32)
            strength = 0.3 * params.ftd_severity * (1.0 + side * params.ftd_laterality)
            world -= np.float32(strength) * offset * falloff
            del offset, falloff
    # Global affine about the brain centre: output = A (template - c) + c + shift, so invert it.
    matrix = _rotation(params.rotation_deg) @ np.diag(params.scale)
    inverse = np.linalg.inv(matrix).astype(np.float32)
    centred = world - (BRAIN_CENTRE_MM + params.shift_mm)[:, None, None, None].astype(np.float32)
    del world
    source_world = np.tensordot(inverse, centred, axes=1) + BRAIN_CENTRE_MM[:, None, None, None].astype(np.float32)
    del centred
    to_voxel = np.linalg.inv(box).astype(np.float32)
    return np.tensordot(to_voxel[:3, :3], source_world, axes=1) + to_voxel[:3, 3, None, None, None]


def _coarse_shape() -> tuple[int, int, int]:
    return tuple(int(np.ceil(n / _COARSE_STEP_MM)) for n in MNI_BOX_SHAPE)


def _upsample(field: np.ndarray, coarse_shape: tuple[int, int, int]) -> np.ndarray:
    """Linear upsampling of a coarse-grid field to the 1 mm box, float32."""
    zoom = np.array(MNI_BOX_SHAPE) / np.array(coarse_shape)
    return ndimage.zoom(field.astype(np.float32), zoom, order=1)[tuple(slice(0, n) for n in MNI_BOX_SHAPE)]


def _diffeomorphic_displacement(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Displacement of exp(v) for a smooth random velocity field v (scaling and squaring).

    Args:
        shape: grid shape.
        amplitude: largest velocity magnitude, in grid voxels.
    """
    velocity = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) for _ in range(3)])
    velocity *= amplitude / (np.abs(velocity).max() + 1e-9)
    squarings = 6
    disp = velocity / 2**squarings
    grid = np.indices(shape, dtype=np.float64)
    for _ in range(squarings):
        # phi ∘ phi: u(x) + u(x + u(x))
        disp = disp + np.stack(
            [ndimage.map_coordinates(disp[a], grid + disp, order=1, mode="nearest") for a in range(3)]
        )
    return disp.astype(np.float32)


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bias_field(strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random quadratic polynomial over the box; ``strength`` is its log-amplitude."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in MNI_BOX_SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, x * z, y * z, x**2 - 1 / 3, y**2 - 1 / 3, z**2 - 1 / 3]
    coefficients = rng.normal(0.0, 1.0, len(terms))
    coefficients *= strength / np.sqrt((coefficients**2).sum())
    log_field = sum(c * t for c, t in zip(coefficients, terms, strict=True))
    return np.exp(log_field).astype(np.float32)


def pose_affine(params: SubjectParameters) -> np.ndarray:
    """The subject's head size and pose as a 4x4 map of MNI mm (about the brain centre)."""
    matrix = _rotation(params.rotation_deg) @ np.diag(params.scale)
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = BRAIN_CENTRE_MM + np.asarray(params.shift_mm) - matrix @ BRAIN_CENTRE_MM
    return affine


def without_pose(params: SubjectParameters) -> SubjectParameters:
    """The same subject with no head-size or pose change: what affine registration to MNI gives."""
    return replace(params, scale=(1.0, 1.0, 1.0), rotation_deg=(0.0, 0.0, 0.0), shift_mm=(0.0, 0.0, 0.0))


def subject_seed(population_seed: int, index: int) -> int:
    """Seed of subject ``index``; populations with different seeds share no subject."""
    return int(np.random.SeedSequence([population_seed, index]).generate_state(1)[0])


def is_ftd_subject(population_seed: int, index: int, ftd_fraction: float) -> bool:
    """Whether subject ``index`` gets the FTD-like pattern: evenly spread with a seeded phase,
    so every first n subjects hold ``ftd_fraction * n`` of them to within one, and a subject's
    group does not depend on how many subjects are built (a larger population extends a smaller)."""
    phase = float(np.random.default_rng([population_seed, 3]).random())
    return int(np.floor((index + 1) * ftd_fraction + phase)) > int(np.floor(index * ftd_fraction + phase))


def build_population(
    out_dir: str | Path,
    *,
    count: int,
    seed: int,
    ftd_fraction: float = 0.0,
    overwrite: bool = False,
    raw: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``count`` demo subjects as ``demo_s<seed>_<index>.nii.gz`` plus a JSON sidecar each,
    and ``participants.tsv`` (participant_id, age, sex, group).

    With ``raw``, each subject is also written as a raw scanner-space head scan
    (``raw/demo_s<seed>_<index>.nii.gz``, see :mod:`engine.demo_raw`): test data with a known
    answer for ``preprocess``. The MNI-space file is then its ground truth: the same subject
    without head-size and pose changes (those live in the raw scan's scanner transform, and an
    affine registration to MNI takes them out again).

    Args:
        out_dir: output folder (created).
        count: number of subjects.
        seed: population seed (a held-out population simply uses another seed).
        ftd_fraction: share of subjects with the FTD-like pattern, in [0, 1]
            (:func:`is_ftd_subject`: within one of ``ftd_fraction * count`` for any count).
        overwrite: replace existing files.
        raw: also write the raw scans.
        progress: called with (done, total) after each subject.
    """
    from engine.atomic import atomic_write_text, check_writable
    from engine.export import save_nifti_with_sidecar, sidecar_path

    if count < 1:
        raise BrainSynthError("--count must be at least 1")
    if not 0.0 <= ftd_fraction <= 1.0:
        raise BrainSynthError(f"--ftd-fraction must be between 0 and 1 (got {ftd_fraction:g})")
    out_dir = Path(out_dir)
    names = [out_dir / f"demo_s{seed}_{i:04d}.nii.gz" for i in range(count)]
    raw_names = [out_dir / "raw" / path.name for path in names] if raw else []
    for path in [*names, *raw_names]:
        check_writable(path, overwrite=overwrite)
        check_writable(sidecar_path(path), overwrite=overwrite)
    participants = out_dir / PARTICIPANTS_FILE
    check_writable(participants, overwrite=overwrite)
    ftd_subjects = {i for i in range(count) if is_ftd_subject(seed, i, ftd_fraction)}
    rows = ["participant_id\tage\tsex\tgroup"]
    template = DemoTemplate.load()
    affine = mni_box_affine()
    for i, path in enumerate(names):
        params = draw_parameters(subject_seed(seed, i), ftd=i in ftd_subjects)
        volume = synthesize_subject(template, without_pose(params) if raw else params)
        sidecar = {
            "kind": "BrainSynth demo subject: the MNI152 2009a template, deformed; not a patient",
            "population_seed": seed,
            "index": i,
            "parameters": asdict(params),
            "template_notice": TEMPLATE_NOTICE,
        }
        if raw:
            sidecar["ground_truth_of"] = str(raw_names[i].relative_to(out_dir))
        save_nifti_with_sidecar(  # both files or neither
            path, volume, affine, sidecar, overwrite=overwrite, description="BrainSynth demo subject (MNI152-derived)"
        )
        if raw:
            _write_raw(raw_names[i], volume, params, sidecar, overwrite=overwrite)
        rows.append(f"{path.name[: -len('.nii.gz')]}\t{params.age:.1f}\t{params.sex}\t{params.group}")
        if progress:
            progress(i + 1, count)
    atomic_write_text(participants, "\n".join(rows) + "\n", overwrite=overwrite)
    return names


def _write_raw(path: Path, volume: np.ndarray, params: SubjectParameters, sidecar: dict, *, overwrite: bool) -> None:
    """The subject as a raw head scan in scanner space, with a sidecar naming its ground truth."""
    from engine.atomic import atomic_write_text
    from engine.demo_raw import draw_geometry, head_in_padded_box, save_int16_nifti, to_scanner_space
    from engine.export import sidecar_path

    head, head_affine = head_in_padded_box(volume, seed=params.seed, noise_fraction=params.noise_fraction)
    rotation, shift = draw_geometry(params.seed)
    data, geometry = to_scanner_space(
        head, head_affine, rotation_deg=rotation, shift_mm=shift, subject_affine=pose_affine(params)
    )
    del head
    save_int16_nifti(path, data, np.asarray(geometry.affine), overwrite=overwrite)
    raw_sidecar = {
        **sidecar,
        "kind": "BrainSynth raw demo head scan (scanner space): the MNI152 2009a template, deformed; not a patient",
        "ground_truth": f"../{path.name}",
        "scanner_geometry": geometry.to_dict(),
    }
    raw_sidecar.pop("ground_truth_of", None)
    atomic_write_text(sidecar_path(path), json.dumps(raw_sidecar, indent=2), overwrite=overwrite)
