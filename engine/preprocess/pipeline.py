"""One raw scan through the pipeline, and its outputs on disk.

Steps, in order (the reference study's, with the field's libraries):

1. checks (field of view, signal; 4-D and 2-D files are refused on load);
2. brain extraction with deepbet in the scan's own space, or the scan's own mask when it is
   already skull-stripped. It comes first so that denoising and N4 run only over the brain
   (about five times faster than over the whole field of view) and so that registration is
   brain to brain, matching the skull-stripped template nilearn ships;
3. adaptive non-local means denoising (ANTs), within the slightly dilated brain;
4. N4 bias-field correction (ANTs), within the brain;
5. affine (or SyN) registration of the brain to the MNI152 2009a template (ANTs), skipped
   when the scan is already in MNI space; refused when the result hardly resembles the
   template;
6. resampling of scan and mask onto the 181 x 217 x 181 1 mm MNI box, and the study's
   intensity normalisation within the mask (:class:`engine.intensity.IntensityMapping`:
   background 0, the brain's 99.5th percentile at 1000), which is what ``prepare`` and
   ``train`` take.

Outputs for a scan named ``<stem>`` in the output folder: ``<stem>.nii.gz`` (the scan, sform
and qform code MNI), ``<stem>.json`` (figures, timings, notes, the cache key; written last, so
its presence means the scan is complete), ``masks/<stem>_mask.nii.gz``,
``transforms/<stem>_to_mni.mat`` (plus ``<stem>_to_mni_warp.nii.gz`` for SyN; ANTs format,
apply with ``antsApplyTransforms`` or ``ants.apply_transforms``) and ``qc/<stem>.png``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.atomic import atomic_path, atomic_write_text
from engine.errors import BrainSynthError, CancelledError, ExportError
from engine.preprocess import checks
from engine.preprocess.errors import PreprocessError
from engine.preprocess.registration import REGISTRATIONS, Registration
from engine.volumes import Volume, strip_extension

PIPELINE_VERSION = 1
SIDECAR_FORMAT = "brainsynth-preprocess"
#: Steps a user may leave out.
SKIPPABLE = ("denoise", "bias-field")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class PreprocessSettings:
    """How to preprocess.

    Attributes:
        registration: "affine" (the reference study's) or "syn" (affine, then deformable).
        skip: steps to leave out, from :data:`SKIPPABLE`.
        device: "cpu" or "cuda" for brain extraction (ANTs runs on the CPU).
        threads: compute threads per scan (ITK and torch).
        fast: a smaller denoising search and fewer N4 and registration iterations (tests,
            previews); recorded in the cache key.
    """

    registration: str = "affine"
    skip: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int = 1
    fast: bool = False

    def __post_init__(self) -> None:
        if self.registration not in REGISTRATIONS:
            raise BrainSynthError(f"registration must be one of {', '.join(REGISTRATIONS)}, not {self.registration!r}")
        unknown = sorted(set(self.skip) - set(SKIPPABLE))
        if unknown:
            raise BrainSynthError(
                f"cannot skip {', '.join(unknown)}; steps that can be skipped: {', '.join(SKIPPABLE)}"
            )
        if self.device not in DEVICES:
            raise BrainSynthError(f"device must be cpu or cuda, not {self.device!r}")
        if self.threads < 1:
            raise BrainSynthError("--threads-per-job must be at least 1")

    def cache_key(self) -> dict:
        """What changes the result (not threads or device): part of every scan's cache key."""
        return {
            "pipeline_version": PIPELINE_VERSION,
            "registration": self.registration,
            "skip": sorted(self.skip),
            "fast": self.fast,
        }


@dataclass
class Processed:
    """A scan after the pipeline, in memory (see :func:`process_volume`).

    Attributes:
        scan: standard-space intensities in the MNI box (float32, background 0).
        mask: the brain mask in the MNI box.
        registration: the transforms found (temporary files until written).
        metrics: brain_volume_ml, similarity, compactness.
        seconds: wall time per step.
        notes: skipped steps and why.
    """

    scan: np.ndarray
    mask: np.ndarray
    registration: Registration
    metrics: dict
    seconds: dict
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OutputPaths:
    """Where one scan's outputs go."""

    scan: Path
    sidecar: Path
    mask: Path
    transform: Path
    warp: Path
    qc_png: Path
    refusal: Path

    @classmethod
    def for_stem(cls, out_dir: Path, stem: str) -> OutputPaths:
        return cls(
            scan=out_dir / f"{stem}.nii.gz",
            sidecar=out_dir / f"{stem}.json",
            mask=out_dir / "masks" / f"{stem}_mask.nii.gz",
            transform=out_dir / "transforms" / f"{stem}_to_mni.mat",
            warp=out_dir / "transforms" / f"{stem}_to_mni_warp.nii.gz",
            qc_png=out_dir / "qc" / f"{stem}.png",
            refusal=out_dir / "refused" / f"{stem}.json",
        )


@dataclass
class ScanOutcome:
    """What happened to one input.

    Attributes:
        source: the input file.
        status: "done", "cached" (finished before with the same content and settings) or "failed".
        message: the reason for a failure, else "".
        remembered: a failure found in ``refused/`` (the same content was refused before with the
            same settings), so nothing was recomputed.
        record: the sidecar's content (figures, timings, notes) for done and cached scans.
    """

    source: Path
    status: str
    message: str = ""
    record: dict | None = None
    remembered: bool = False


class _Clock:
    """Per-step wall times, with a cancel check between steps."""

    def __init__(self, on_step: Callable[[str], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self.seconds: dict[str, float] = {}
        self._on_step = on_step
        self._should_stop = should_stop
        self._name: str | None = None
        self._start = 0.0

    def step(self, name: str) -> None:
        self.stop()
        if self._should_stop is not None and self._should_stop():
            raise CancelledError("preprocessing was cancelled")
        if self._on_step is not None:
            self._on_step(name)
        self._name, self._start = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._start, 3)
            self._name = None


def process_volume(
    volume: Volume,
    settings: PreprocessSettings | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Processed:
    """Run the pipeline on a loaded raw scan (in memory; nothing is written).

    Args:
        volume: the raw scan (:func:`engine.volumes.load_volume`), any orientation and voxel size.
        settings: the pipeline settings (defaults: affine, all steps, CPU).
        on_step: called with each step's name as it starts ("brain_extraction", "denoise",
            "bias_field", "registration", "resample", "normalise").
        should_stop: polled between steps; True cancels with :class:`engine.errors.CancelledError`.

    Returns:
        The :class:`Processed` scan; call ``result.registration.cleanup()`` when done with it.

    Raises:
        PreprocessError: the scan is refused (field of view, no signal, not a brain, failed
            registration); MissingDependencyError: antspyx or deepbet is not installed.
    """
    from scipy import ndimage

    from engine.intensity import IntensityMapping
    from engine.preprocess.ants_io import require_ants, to_ants
    from engine.preprocess.bias_field import correct_bias_field
    from engine.preprocess.brain_extraction import extract_brain
    from engine.preprocess.denoise import denoise
    from engine.preprocess.qc import compactness
    from engine.preprocess.registration import register_to_template, to_mni_box
    from engine.preprocess.template import load_template

    settings = settings or PreprocessSettings()
    ants = require_ants()
    clock = _Clock(on_step, should_stop)
    notes: list[str] = []
    checks.check_raw_scan(volume)

    clock.step("brain_extraction")
    mask = checks.stripped_brain_mask(volume)
    if mask is not None:
        notes.append("already skull-stripped: brain extraction skipped")
    else:
        mask = extract_brain(volume.data, device=settings.device)
    brain_ml = float(mask.sum()) * checks.voxel_volume_ml(volume)
    checks.check_brain_volume(volume.name, brain_ml)

    image = to_ants(volume.data, volume.affine)
    mask_image = to_ants(mask.astype(np.float32), volume.affine)
    region = to_ants(ndimage.binary_dilation(mask, iterations=2).astype(np.float32), volume.affine)
    if "denoise" in settings.skip:
        notes.append("denoising skipped (--skip denoise)")
    else:
        clock.step("denoise")
        image = denoise(image, region, fast=settings.fast)
    if "bias-field" in settings.skip:
        notes.append("bias-field correction skipped (--skip bias-field)")
    else:
        clock.step("bias_field")
        image = correct_bias_field(image, mask_image, fast=settings.fast)
    brain = image * mask_image

    clock.step("registration")
    template = load_template()
    reference = to_ants(template.box_t1, _box_affine())
    as_is = ants.resample_image_to_target(brain, reference, interp_type="linear").numpy()
    identity_similarity = checks.similarity(as_is, template.box_t1, template.box_mask | (as_is > 0))
    if identity_similarity >= checks.ALREADY_MNI_SIMILARITY:
        notes.append(f"already in MNI space (similarity {identity_similarity:.2f}): registration skipped")
        registration = Registration(kind="identity", forward=[])
    else:
        registration = register_to_template(brain, kind=settings.registration, fast=settings.fast)
    try:
        clock.step("resample")
        scan_box = to_mni_box(image, registration, interpolator="linear")
        mask_box = to_mni_box(mask_image, registration, interpolator="linear") > 0.5
        if not mask_box.any():
            raise PreprocessError(f"{volume.name}: the brain lies outside the MNI box after registration")
        value = checks.similarity(np.where(mask_box, scan_box, 0.0), template.box_t1, mask_box | template.box_mask)
        checks.check_registration(volume.name, value)

        clock.step("normalise")
        try:
            standard = IntensityMapping().scanner_to_standard(np.clip(scan_box, 0.0, None), mask_box)
        except ValueError as exc:
            raise PreprocessError(f"{volume.name}: the brain's intensities cannot be normalised ({exc})") from exc
        metrics = {
            "brain_volume_ml": round(brain_ml, 1),
            "similarity": round(value, 4),
            "compactness": round(compactness(mask_box), 4),
        }
        clock.stop()
    except BaseException:
        registration.cleanup()
        raise
    return Processed(
        scan=standard, mask=mask_box, registration=registration, metrics=metrics, seconds=clock.seconds, notes=notes
    )


def _box_affine() -> np.ndarray:
    from engine.geometry import mni_box_affine

    return mni_box_affine()


def _cached_record(paths: OutputPaths, key: dict) -> dict | None:
    """The sidecar if it was made with ``key`` and every output it names exists, else None."""
    try:
        record = json.loads(paths.sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("format") != SIDECAR_FORMAT or record.get("cache_key") != key:
        return None
    outputs = [paths.sidecar.parent / p for p in record.get("outputs", {}).values()]
    return record if outputs and all(p.exists() for p in outputs) else None


def preprocess_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    settings: PreprocessSettings | None = None,
    overwrite: bool = False,
    on_step: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScanOutcome:
    """Preprocess one raw scan into ``out_dir`` unless it is done already (same content, same settings).

    Args:
        path: the raw scan (.nii, .nii.gz, .mgh, .mgz).
        out_dir: output folder (created).
        settings: pipeline settings.
        overwrite: redo the scan even if finished, and replace outputs made from other content.
        on_step: see :func:`process_volume`.
        should_stop: see :func:`process_volume`.

    Returns:
        A :class:`ScanOutcome` with status "done" or "cached".

    Raises:
        BrainSynthError: the scan is refused or cannot be written (the message says why);
            nothing of it is left half-written.
    """
    from engine import __version__
    from engine.export import sha256_file
    from engine.volumes import load_volume

    settings = settings or PreprocessSettings()
    path, out_dir = Path(path), Path(out_dir)
    stem = strip_extension(path)
    paths = OutputPaths.for_stem(out_dir, stem)
    start = time.perf_counter()
    if not path.is_file():
        load_volume(path)  # raises the right message (missing, a folder, ...)
    if paths.scan.resolve() == path.resolve():
        raise ExportError(f"{path.name}: the output would replace the raw scan; choose another --out folder")
    # The cache is checked before the scan is read: resuming a batch of thousands costs a hash each.
    key = {**settings.cache_key(), "input_sha256": sha256_file(path)}
    if not overwrite:
        record = _cached_record(paths, key)
        if record is not None:
            return ScanOutcome(source=path, status="cached", record=record)
        if paths.sidecar.exists() or paths.scan.exists():
            raise ExportError(
                f"{paths.scan} already exists but was made from other content or settings (or not by preprocess); "
                f"pass --overwrite to redo it"
            )
    volume = load_volume(path)
    load_s = time.perf_counter() - start
    result = process_volume(volume, settings, on_step=on_step, should_stop=should_stop)
    try:
        write_start = time.perf_counter()
        outputs = _write_outputs(result, paths, name=stem)
        seconds = {"load": round(load_s, 3), **result.seconds, "write": round(time.perf_counter() - write_start, 3)}
        record = {
            "format": SIDECAR_FORMAT,
            "format_version": 1,
            "source": str(path.resolve()),
            "name": stem,
            "cache_key": key,
            "settings": {**settings.cache_key(), "device": settings.device, "threads": settings.threads},
            "registration": result.registration.kind,
            "metrics": result.metrics,
            "notes": result.notes,
            "warnings": list(volume.warnings),
            "seconds": seconds,
            "total_s": round(time.perf_counter() - start, 3),
            "outputs": {k: str(Path(v).relative_to(out_dir)) for k, v in outputs.items()},
            "grid": {"shape": list(result.scan.shape), "space": "MNI152", "orientation": "RAS+", "spacing_mm": 1.0},
            "intensity": {"kind": "brain-percentile", "upper_percentile": 99.5, "scale": 1000.0, "space": "standard"},
            "software_version": __version__,
        }
        atomic_write_text(paths.sidecar, json.dumps(record, indent=2) + "\n", overwrite=True)
    finally:
        result.registration.cleanup()
    return ScanOutcome(source=path, status="done", record=record)


def _write_outputs(result: Processed, paths: OutputPaths, *, name: str) -> dict[str, Path]:
    """Write mask, transforms, QC image, then the scan (each atomically); return them by kind."""
    import nibabel as nib

    from engine.export import NIFTI_XFORM_MNI, save_nifti
    from engine.geometry import mni_box_affine
    from engine.preprocess.ants_io import require_ants
    from engine.preprocess.qc import edge_overlay_png
    from engine.preprocess.template import load_template

    affine = mni_box_affine()
    written: dict[str, Path] = {}
    mask_img = nib.Nifti1Image(result.mask.astype(np.uint8), affine)
    mask_img.set_sform(affine, code=NIFTI_XFORM_MNI)
    mask_img.set_qform(affine, code=NIFTI_XFORM_MNI)
    mask_img.header.set_xyzt_units(xyz="mm")
    with atomic_path(paths.mask, overwrite=True) as tmp:
        nib.save(mask_img, tmp)
    written["mask"] = paths.mask

    forward = result.registration.forward
    matrices = [p for p in forward if p.suffix == ".mat"]
    warps = [p for p in forward if p.name.endswith(".nii.gz")]
    with atomic_path(paths.transform, overwrite=True) as tmp:
        if matrices:
            shutil.copyfile(matrices[0], tmp)
        else:  # already in MNI space: the identity, so every scan has a transform to map back
            ants = require_ants()
            ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(tmp))
    written["transform"] = paths.transform
    if warps:
        with atomic_path(paths.warp, overwrite=True) as tmp:
            shutil.copyfile(warps[0], tmp)
        written["warp"] = paths.warp

    with atomic_path(paths.qc_png, overwrite=True) as tmp:
        edge_overlay_png(tmp, result.scan, load_template().box_t1, title=name)
    written["qc_png"] = paths.qc_png

    save_nifti(
        paths.scan, result.scan, affine, overwrite=True, description="BrainSynth preprocessed T1 (MNI152, stripped)"
    )
    written["scan"] = paths.scan
    return written
