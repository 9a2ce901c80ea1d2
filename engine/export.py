"""Writing NIfTI files: prepared scans, synthetic batches and denoising trajectories.

Every file is written through :func:`engine.atomic.atomic_path`, so it is either complete or
absent, and nothing is overwritten unless asked. Every NIfTI carries its grid affine in both
sform and qform with code MNI (4), so it overlays the MNI152 template in any viewer, and
holds standard-space intensities (background 0, brain upper percentile at ``scale``) so real
and synthetic volumes compare directly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.atomic import atomic_group, atomic_path, check_writable, remove_orphaned_temporaries
from engine.errors import ExportError

if TYPE_CHECKING:  # engine.specs imports torch; not needed at run time here
    from engine.specs import ModelSpec

#: NIfTI xform code for MNI152 space (nibabel's name "mni").
NIFTI_XFORM_MNI = 4
SIDECAR_FORMAT = "brainsynth-export"
# 2: flat provenance keys (GenerationRequest.provenance) instead of a nested "sampler" record.
SIDECAR_FORMAT_VERSION = 2

ProgressCallback = Callable[[int, int], None]


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _nifti_stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    raise ExportError(f"{name}: NIfTI files must end in .nii.gz or .nii")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a NIfTI file: ``x.nii.gz`` → ``x.json``."""
    path = Path(path)
    return path.with_name(_nifti_stem(path) + ".json")


def _check_target(path: Path, *, overwrite: bool) -> None:
    """Refuse a target that exists (unless overwrite) or that can never be a file."""
    if path.is_dir():
        raise ExportError(f"{path} is a folder; cannot write a file there")
    check_writable(path, overwrite=overwrite)


def _build_nifti(data: np.ndarray, affine: np.ndarray, *, description: str):
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ExportError("the affine to export must be a finite 4x4 matrix")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim not in (3, 4):
        raise ExportError(f"cannot export an array of shape {data.shape}; a 3-D volume or 4-D series is needed")
    if not np.all(np.isfinite(data)):
        raise ExportError("the volume to export contains NaN or infinite values")
    img = nib.Nifti1Image(data, affine)
    header = img.header
    # Both xforms: some viewers read only the qform, others prefer the sform.
    img.set_sform(affine, code=NIFTI_XFORM_MNI)
    img.set_qform(affine, code=NIFTI_XFORM_MNI)
    header.set_xyzt_units(xyz="mm", t="unknown")
    header.set_data_dtype(np.float32)
    # A display range so viewers open the volume with a sensible window.
    header["cal_min"] = float(data.min()) if data.size else 0.0
    header["cal_max"] = float(data.max()) if data.size else 0.0
    # descrip is 80 bytes of ASCII in the NIfTI-1 header.
    header["descrip"] = description.encode("ascii", "replace")[:79]
    return img


def _write_nifti(img, path: Path, *, overwrite: bool) -> None:
    import nibabel as nib

    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            nib.save(img, tmp)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_nifti_and_sidecar(img, path: Path, sidecar: Path, payload: dict, *, overwrite: bool) -> None:
    """Write a NIfTI image and its JSON sidecar as one atomic group: both or neither.

    The sidecar is renamed into place last, so a reader that finds it finds its image too.
    """
    import nibabel as nib

    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    try:
        with atomic_group() as group:
            nib.save(img, group.path(path, overwrite=overwrite))
            group.path(sidecar, overwrite=overwrite).write_text(text, encoding="utf-8")
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc


def save_nifti_with_sidecar(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    sidecar: dict,
    *,
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """:func:`save_nifti` plus its JSON sidecar (:func:`sidecar_path`), both or neither.

    Raises:
        ExportError: as :func:`save_nifti`, for either file.
    """
    path = Path(path)
    js = sidecar_path(path)
    _check_target(path, overwrite=overwrite)
    _check_target(js, overwrite=overwrite)
    img = _build_nifti(data, affine, description=description)
    _write_nifti_and_sidecar(img, path, js, sidecar, overwrite=overwrite)
    return path


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """Write a float32 NIfTI-1 file atomically with the affine in sform and qform (code MNI).

    Args:
        path: target ending in .nii.gz (compressed) or .nii.
        data: 3-D volume (or 4-D series, time last) in RAS+ voxel order.
        affine: 4x4 voxel→mm affine (RAS+); must be rigid+scaling to fit the qform exactly.
        overwrite: replace an existing file; otherwise an existing file is an error.
        description: free text for the header's ``descrip`` field (ASCII, first 79 characters).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ExportError: the file exists (and ``overwrite`` is False), the path is a folder or
            not .nii/.nii.gz, the data are not finite, or the file cannot be written.
    """
    path = Path(path)
    _nifti_stem(path)
    _check_target(path, overwrite=overwrite)
    img = _build_nifti(data, affine, description=description)
    _write_nifti(img, path, overwrite=overwrite)
    return path


def now_iso() -> str:
    """Local time with its UTC offset, e.g. ``2025-01-31T14:02:11+01:00``."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def export_targets(
    out_dir: str | os.PathLike, *, prefix: str, items: Sequence[tuple[int, int]], overwrite: bool
) -> list[tuple[Path, Path]]:
    """The (NIfTI, sidecar) paths :func:`export_batch` writes for (file number, seed) pairs, checked.

    Front ends call this before a long sampling run so that a name clash is reported at
    once rather than after hours of work.

    Raises:
        TargetExistsError: a target exists (without ``overwrite``).
        ExportError: a bad prefix, ``out_dir`` is a file, or a target is a folder.
    """
    if not prefix or any(sep in prefix for sep in ("/", "\\", os.sep)) or prefix.startswith("."):
        raise ExportError(f"file name prefix {prefix!r} must be a plain name without folders")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; choose a folder to export into")
    targets = []
    for number, seed in items:
        stem = f"{prefix}_{int(number):04d}_seed{int(seed)}"
        targets.append((out_dir / f"{stem}.nii.gz", out_dir / f"{stem}.json"))
    for nii, js in targets:
        _check_target(nii, overwrite=overwrite)
        _check_target(js, overwrite=overwrite)
    return targets


@dataclass(frozen=True)
class ExportVolume:
    """One synthetic volume to write.

    Attributes:
        number: its number in the file name (``<prefix>_<number:04d>_seed<seed>``): the index
            in a CLI run (global across shards) or the volume's number in an app session.
        array: model-space float32 array on the model grid.
        provenance: how it was made, :meth:`engine.generation.GenerationRequest.provenance`
            (holds ``"seed"``); written into the sidecar as it is.
    """

    number: int
    array: np.ndarray = field(repr=False)
    provenance: dict

    @property
    def seed(self) -> int:
        return int(self.provenance["seed"])


def export_batch(
    volumes: Sequence[ExportVolume],
    *,
    spec: ModelSpec,
    out_dir: str | os.PathLike,
    prefix: str = "synthetic",
    resample_to_1mm: bool = False,
    resample_order: int = 1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write synthetic volumes as NIfTI files with JSON sidecars, all or none.

    Each volume becomes ``<prefix>_<number:04d>_seed<seed>.nii.gz`` in standard intensity
    space (``spec.intensity.model_to_standard``) with every voxel outside the brain exactly 0
    (the one background rule, :mod:`engine.masking`, which every reader-study case passes), on
    the model grid's affine or, with ``resample_to_1mm``, on the 181 x 217 x 181 1 mm MNI box. Beside it
    ``<same stem>.json``
    holds the volume's provenance (checkpoint and its SHA-256, weights, sampler, steps, eta,
    seed, precision, device, software version, time), the model spec, intensity mapping, grid
    and the background rule (``"background"``: value, rule, brain voxels on the model grid).

    All target paths are checked before anything is written, so a name clash writes nothing.
    Each file is written atomically; if writing fails midway (disk full, a file appearing,
    a progress callback raising :class:`engine.errors.CancelledError` to cancel), the files
    this call already created are removed again, so a batch is either complete or absent.

    Args:
        volumes: the volumes, with their file numbers and provenance.
        spec: the :class:`engine.specs.ModelSpec` the volumes were sampled with.
        out_dir: folder to write into; created if missing.
        prefix: file name prefix (no path separators).
        resample_to_1mm: also resample onto the 1 mm MNI box (larger files, same positions).
        resample_order: interpolation for that resampling, 1 (trilinear) or 3 (cubic).
        overwrite: replace existing files of the same names.
        progress: called as ``progress(done, total)`` after each volume; may raise
            :class:`engine.errors.CancelledError`.

    Returns:
        Paths of the NIfTI files written, in order.

    Raises:
        TargetExistsError: a target exists (without ``overwrite``).
        ExportError: a target is a folder, a volume has the wrong shape or non-finite values,
            or a file cannot be written.
    """
    from engine.geometry import MNI_BOX_SHAPE, GridGeometry, mni_box_affine
    from engine.masking import RULE_DESCRIPTION, zero_background
    from engine.preprocessing import resample_grid_to_grid

    items = list(volumes)
    if not items:
        raise ExportError("nothing to export: the batch is empty")
    grid: GridGeometry = spec.grid
    for volume in items:
        if tuple(np.shape(volume.array)) != tuple(grid.shape):
            raise ExportError(
                f"volume with seed {volume.seed} has shape {tuple(np.shape(volume.array))}, "
                f"but the model grid is {tuple(grid.shape)}"
            )
        if not np.all(np.isfinite(volume.array)):
            raise ExportError(f"volume with seed {volume.seed} contains NaN or infinite values; sampling diverged")

    out_dir = Path(out_dir)
    targets = export_targets(out_dir, prefix=prefix, items=[(v.number, v.seed) for v in items], overwrite=overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK):
        raise ExportError(f"{out_dir} is not writable; choose another output folder")
    remove_orphaned_temporaries(out_dir)  # what an earlier, killed export left

    if resample_to_1mm:
        out_affine, out_shape = mni_box_affine(), tuple(MNI_BOX_SHAPE)
    else:
        out_affine, out_shape = grid.affine, tuple(grid.shape)
    created: list[Path] = []
    written: list[Path] = []
    total = len(items)
    try:
        for done, (volume, (nii, js)) in enumerate(zip(items, targets, strict=True), start=1):
            standard = np.asarray(
                spec.intensity.model_to_standard(np.asarray(volume.array, dtype=np.float32)), np.float32
            )
            # Background exactly 0 by the rule every reader-study case passes too (the network's
            # faint background would otherwise tell a synthetic volume from a real one).
            standard, brain = zero_background(standard, scale=float(spec.intensity.scale))
            if resample_to_1mm:
                standard = resample_grid_to_grid(
                    standard, grid, target_affine=out_affine, target_shape=out_shape, order=resample_order
                )
            img = _build_nifti(standard, out_affine, description=f"BrainSynth synthetic T1, seed {volume.seed}")
            new_targets = [t for t in (nii, js) if not t.exists()]
            sidecar = {
                "format": SIDECAR_FORMAT,
                "format_version": SIDECAR_FORMAT_VERSION,
                "kind": "synthetic",
                "file": nii.name,
                "index": int(volume.number),
                **volume.provenance,
                "model_spec": spec.to_dict(),
                "intensity": {
                    **spec.intensity.to_dict(),
                    "space": "standard",
                    "description": (
                        f"model space [-1, 1] mapped linearly to [0, {spec.intensity.scale:g}]; background 0"
                    ),
                },
                "background": {"value": 0.0, "rule": RULE_DESCRIPTION, "brain_voxels": int(brain.sum())},
                "grid": {
                    "shape": list(out_shape),
                    "affine": np.asarray(out_affine).tolist(),
                    "space": "MNI152",
                    "orientation": "RAS+",
                },
                "model_grid": grid.to_dict(),
                "resampled_to_1mm": bool(resample_to_1mm),
                "resample_order": int(resample_order) if resample_to_1mm else None,
            }
            _write_nifti_and_sidecar(img, nii, js, sidecar, overwrite=overwrite)
            created.extend(new_targets)
            written.append(nii)
            if progress is not None:
                progress(done, total)
    except BaseException:
        # Roll back what this call created; files it overwrote cannot be restored.
        for path in created:
            if path.is_file():
                path.unlink(missing_ok=True)
        raise
    return written


def save_trajectory_nifti(
    path: str | os.PathLike,
    frames: np.ndarray,
    affine: np.ndarray,
    *,
    steps: Sequence[int],
    overwrite: bool = False,
    description: str = "",
    metadata: dict | None = None,
) -> Path:
    """Write recorded denoising frames as one 4-D NIfTI plus a JSON sidecar with the step numbers.

    The NIfTI's fourth (time) axis is the recorded step, in the order given, as NIfTI
    viewers expect; the sidecar's ``steps[i]`` is the diffusion timestep of volume ``i``.
    Frames are written in whatever intensity space they are given (state it in ``metadata``,
    e.g. ``{"space": "model"}``); float16 frames are widened to float32.

    Args:
        path: target ending in .nii.gz or .nii; the sidecar is ``<stem>.json`` beside it.
        frames: array (F, D, H, W), F recorded steps of a (D, H, W) RAS+ volume.
        affine: 4x4 voxel→mm affine of one frame (RAS+).
        steps: F timestep numbers, one per frame.
        overwrite: replace existing files.
        description: header ``descrip`` text.
        metadata: extra fields for the sidecar (sampler settings, seed, what the frames hold).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ExportError: wrong shapes, a step count that does not match, or a file clash.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ExportError(f"trajectory frames must be (frames, D, H, W), got shape {frames.shape}")
    steps = [int(s) for s in steps]
    if len(steps) != frames.shape[0]:
        raise ExportError(f"{frames.shape[0]} trajectory frames but {len(steps)} step numbers")
    js = sidecar_path(path)
    _check_target(path, overwrite=overwrite)
    _check_target(js, overwrite=overwrite)
    img = _build_nifti(np.moveaxis(frames.astype(np.float32, copy=False), 0, -1), affine, description=description)
    payload = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "kind": "trajectory",
        "file": path.name,
        "frame_axis": 3,
        "steps": steps,
        "created": now_iso(),
        **(metadata or {}),
    }
    _write_nifti_and_sidecar(img, path, js, payload, overwrite=overwrite)
    return path
