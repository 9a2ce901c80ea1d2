"""Evaluating a synthetic set against a real one: the reference study's table and more.

Two entry points, one computation:

* :func:`evaluate_volumes` takes volumes in memory (lists of numpy arrays, as the app holds
  them after generating) and returns an :class:`~engine.metrics.results.EvaluationResult`;
* :func:`evaluate_folders` loads folders of NIfTI/MGH files one file at a time into scratch
  memory-mapped arrays beside the output (so a set of hundreds of volumes never sits in RAM),
  then calls :func:`evaluate_volumes` on them.

:func:`write_report` writes the result as ``evaluation.json`` (every figure with its
parameters), ``report.md`` (laid out like the reference study's Table 1, then the extra
measures) and PNG figures, each file atomically.

Bounded memory: the MMD and the memorisation check read voxel blocks of every volume sized to
``memory_budget_mb``; everything else holds one or two volumes (or one FID batch) at a time.

Intensities: every volume must be in BrainSynth's standard space [0, 1000] (prepared real
scans and exported samples are); metrics divide by 1000, so MS-SSIM's ``data_range`` is 1 and
the MMD is computed on [0, 1] intensities.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.atomic import atomic_path, atomic_write_text, check_writable
from engine.errors import DeviceError
from engine.metrics.errors import EvaluationError
from engine.metrics.fid import FIDResult, fid_2d, frechet_distance
from engine.metrics.gram import gram_statistics
from engine.metrics.histograms import (
    HistogramSettings,
    brain_volumes,
    compare_histograms,
    set_statistics,
)
from engine.metrics.memorisation import (
    ClosestPair,
    MemorisationResult,
    assess,
    nearest,
)
from engine.metrics.mmd import mmd_from_gram
from engine.metrics.msssim import MSSSIMSettings, choose_settings, ms_ssim, sample_pairs, summarise
from engine.metrics.results import EvaluationOptions, EvaluationResult, IntensityResult, MSSSIMResult
from engine.metrics.volume_sets import VolumeSet, check_same_shape, check_standard_range, make_set
from engine.precision import PrecisionChoice

if TYPE_CHECKING:
    from engine.volumes import Volume

#: ``progress(stage, done, total)``: stage is a short human-readable name ("MS-SSIM pairs").
ProgressCallback = Callable[[str, int, int], None]

#: Files :func:`write_report` may write into the output folder.
REPORT_FILES = (
    "evaluation.json",
    "report.md",
    "intensity_histograms.png",
    "brain_volume.png",
    "msssim.png",
    "nearest_neighbours.png",
    "closest_pairs.png",
)


def _stage(progress: ProgressCallback | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def evaluate_volumes(
    real: Sequence[np.ndarray],
    synthetic: Sequence[np.ndarray],
    *,
    train: Sequence[np.ndarray] | None = None,
    options: EvaluationOptions | None = None,
    real_labels: Sequence[str] | None = None,
    synthetic_labels: Sequence[str] | None = None,
    train_labels: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    sources: dict | None = None,
) -> EvaluationResult:
    """Compute every figure for a real and a synthetic set (and optionally the training set).

    Args:
        real: real volumes, standard space [0, 1000], all of one shape (RAS+ on one grid).
        synthetic: synthetic volumes, same shape.
        train: training volumes for the memorisation check; None skips it (reported unavailable).
        options: evaluation settings; defaults as documented on :class:`EvaluationOptions`.
        real_labels: display names of the real volumes (file names).
        synthetic_labels: display names of the synthetic volumes.
        train_labels: display names of the training volumes.
        progress: called as ``progress(stage, done, total)``; never prints.
        sources: free-form provenance stored in the result (e.g. folders).

    Returns:
        The figures.

    Raises:
        EvaluationError: empty sets, a set of one (MMD, FID and within-set MS-SSIM need pairs),
            shapes that differ, intensities outside standard space, unusable FID weights.
    """
    options = options or EvaluationOptions()
    need = "the MMD, FID and within-set MS-SSIM"
    real_set = make_set("real", real, labels=real_labels, min_count=2, why=need)
    synth_set = make_set("synthetic", synthetic, labels=synthetic_labels, min_count=2, why=need)
    train_set = make_set("training", train, labels=train_labels) if train is not None else None
    shape = check_same_shape(real_set, synth_set, *([train_set] if train_set else []))
    settings = choose_settings(shape, kernel_size=options.msssim_kernel)  # fail early on tiny grids
    budget = int(options.memory_budget_mb * 2**20)

    hist_settings = HistogramSettings(
        scale=options.scale, mask_threshold=options.mask_threshold, n_bins=options.histogram_bins
    )
    stats = {
        s.name: set_statistics(s, settings=hist_settings, progress=_stage(progress, f"reading {s.name} volumes"))
        for s in (real_set, synth_set, *([train_set] if train_set else []))
    }

    gram = gram_statistics(
        [real_set, synth_set], scale=options.scale, budget_bytes=budget, progress=progress, stage="MMD"
    )
    mmd = mmd_from_gram(gram.gram, len(real_set), n_voxels=real_set.n_voxels)

    msssim = _msssim(real_set, synth_set, settings=settings, options=options, progress=progress)
    fid3 = _fid_3d(real_set, synth_set, options=options, progress=progress)
    fid2 = (
        fid_2d(
            real_set.volumes,
            synth_set.volumes,
            scale=options.scale,
            slices_per_axis=options.fid_2d_slices,
            progress=_stage(progress, "2-D slice descriptors"),
        )
        if options.fid_2d
        else None
    )

    thresholds, comparisons = compare_histograms(stats["real"], stats["synthetic"], settings=hist_settings)
    intensity = IntensityResult(
        thresholds=thresholds,
        comparisons=tuple(comparisons),
        bin_edges=tuple(float(e) for e in hist_settings.edges),
        method=(
            f"brain mask: intensity > {options.mask_threshold:g} standard units, enclosed holes filled; "
            f"tissue classes: 3-class Otsu (skimage.filters.threshold_multiotsu) of the pooled real histogram "
            f"({options.histogram_bins} bins over [0, {options.scale:g}]), applied to every set; "
            f"distances: Wasserstein-1 (standard units) and Jensen-Shannon distance (base 2)"
        ),
    )
    spacing = tuple(float(s) for s in (options.spacing_mm or _mni_grid_spacing(shape)))
    volumes = brain_volumes(stats["real"], stats["synthetic"], voxel_volume_ml=float(np.prod(spacing)) / 1000.0)

    if train_set is None:
        memo = MemorisationResult(
            available=False,
            reason="no training set given (pass --train DIR, the scans the model was trained on)",
            threshold=options.copy_threshold,
        )
    else:
        union = stats["real"].union_mask | stats["synthetic"].union_mask | stats["training"].union_mask
        memo = _memorisation(
            train_set, synth_set, real_set, union=union, options=options, budget=budget, progress=progress
        )

    return EvaluationResult(
        shape=shape,
        spacing_mm=spacing,
        n_real=len(real_set),
        n_synthetic=len(synth_set),
        n_train=len(train_set) if train_set else 0,
        real_labels=real_set.labels,
        synthetic_labels=synth_set.labels,
        options=options,
        mmd=mmd,
        msssim=msssim,
        fid_3d=fid3,
        fid_2d=fid2,
        intensity=intensity,
        brain_volume=volumes,
        memorisation=memo,
        sources=dict(sources or {}),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _mni_grid_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    from engine.geometry import GridGeometry

    return GridGeometry.over_mni_box(shape).spacing_mm


def _msssim(
    real: VolumeSet,
    synth: VolumeSet,
    *,
    settings: MSSSIMSettings,
    options: EvaluationOptions,
    progress: ProgressCallback | None,
) -> MSSSIMResult:
    # One generator per comparison, so adding pairs to one never changes the others' pairs.
    jobs = {
        "within_real": (real, real, sample_pairs(len(real), None, n_pairs=options.n_pairs, rng=_rng(options, 1))),
        "within_synthetic": (
            synth,
            synth,
            sample_pairs(len(synth), None, n_pairs=options.n_pairs, rng=_rng(options, 2)),
        ),
        "between": (real, synth, sample_pairs(len(real), len(synth), n_pairs=options.n_pairs, rng=_rng(options, 3))),
    }
    total = sum(len(pairs) for _, _, (pairs, _) in jobs.values())
    done = 0
    out = {}
    for key, (first, second, (pairs, n_possible)) in jobs.items():
        values = []
        for i, j in pairs:
            a = first.volume(i, scale=options.scale)
            b = second.volume(j, scale=options.scale)
            values.append(ms_ssim(a, b, settings).value)
            done += 1
            if progress is not None:
                progress("MS-SSIM pairs", done, total)
        out[key] = summarise(values, pairs, n_possible)
    return MSSSIMResult(settings=settings, seed=options.seed, **out)


def _rng(options: EvaluationOptions, stream: int) -> np.random.Generator:
    return np.random.default_rng([options.seed, stream])


def _fid_3d(
    real: VolumeSet, synth: VolumeSet, *, options: EvaluationOptions, progress: ProgressCallback | None
) -> FIDResult:
    from engine.metrics.medicalnet import DOWNLOAD_HINT, extract_features, load_medicalnet

    if options.fid_weights is None:
        return FIDResult(available=False, reason=f"no MedicalNet weights given; {DOWNLOAD_HINT}")
    from engine.device import resolve_device

    try:
        device = resolve_device(options.device)
    except DeviceError as exc:  # the same message, as this command's error type
        raise EvaluationError(str(exc)) from exc
    network = load_medicalnet(options.fid_weights, device=device)
    choice = _fid_precision(network, real, options=options, device=device)
    total = len(real) + len(synth)

    def features(vset: VolumeSet, offset: int) -> np.ndarray:
        report = _stage(progress, "FID features")
        return extract_features(
            network,
            vset.volumes,
            batch_size=options.fid_batch_size,
            precision=choice.precision,
            progress=(lambda d, _t: report(offset + d, total)) if report else None,
        )

    f_real = features(real, 0)
    f_synth = features(synth, len(real))
    return FIDResult(
        available=True,
        value=frechet_distance(f_real, f_synth),
        features=network.name,
        feature_dim=int(f_real.shape[1]),
        n_real=len(real),
        n_synthetic=len(synth),
        parameters={
            "weights_file": str(network.weights_path),
            "weights_sha256": network.sha256,
            "input_normalisation": "whole-volume z-score per volume",
            "device": str(device),
            "precision": choice.precision,
            "precision_reason": choice.reason,
            "note": (
                "fewer volumes than feature dimensions: the covariances are singular and FID is biased upwards; "
                "compare only evaluations with the same numbers of volumes"
                if min(len(real), len(synth)) <= f_real.shape[1]
                else ""
            ),
        },
    )


def _fid_precision(network, real: VolumeSet, *, options: EvaluationOptions, device) -> PrecisionChoice:
    """The FID network's precision (``options.precision`` checked; ``auto`` times one forward
    pass of a batch of the first real volume in fp32 and bf16, cached like the generator's)."""
    import torch

    from engine.errors import SamplingError
    from engine.metrics.medicalnet import zscore
    from engine.precision import autocast, choose_precision, model_cache_key

    model = network.model
    batch = np.stack([zscore(real.volume(0, scale=options.scale))] * min(options.fid_batch_size, len(real)))[:, None]
    x = torch.from_numpy(batch).to(device)

    def step(precision: str) -> None:
        with torch.no_grad(), autocast(device, precision):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        return choose_precision(
            options.precision, device=device, step=step, cache_key=f"fid|{model_cache_key(model, tuple(x.shape))}"
        )
    except SamplingError as exc:  # the same message, as this command's error type
        raise EvaluationError(str(exc)) from None


def _memorisation(
    train: VolumeSet,
    synth: VolumeSet,
    real: VolumeSet,
    *,
    union: np.ndarray,
    options: EvaluationOptions,
    budget: int,
    progress: ProgressCallback | None,
) -> MemorisationResult:
    stats = gram_statistics(
        [train, synth, real],
        scale=options.scale,
        budget_bytes=budget,
        voxel_mask=union,
        progress=progress,
        stage="memorisation check",
    )
    r = stats.correlation()
    n_train = len(train)
    train_cols = r[:, :n_train]
    result = assess(
        synthetic=nearest(train_cols[stats.offsets[1] : stats.offsets[2]], synth.labels, train.labels),
        real_reference=nearest(train_cols[stats.offsets[2] :], real.labels, train.labels),
        train_reference=(
            nearest(train_cols[:n_train], train.labels, train.labels, exclude_self=True) if n_train > 1 else ()
        ),
        threshold=options.copy_threshold,
        n_mask_voxels=stats.n_voxels,
    )
    closest = sorted(result.synthetic, key=lambda n: -n.r)[: options.n_closest_pairs]
    centre = _mask_centre(union)
    pairs = tuple(
        ClosestPair(
            neighbour=n,
            synthetic_slices=_orthogonal_slices(synth.volume(n.index, scale=options.scale), centre),
            train_slices=_orthogonal_slices(train.volume(n.train_index, scale=options.scale), centre),
        )
        for n in closest
    )
    return MemorisationResult(**{**_shallow(result), "closest_pairs": pairs})


def _shallow(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _mask_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Centre of the mask's bounding box (the grid centre for an empty mask), voxels."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return tuple(n // 2 for n in mask.shape)
    return tuple(int(v) for v in (idx.min(0) + idx.max(0)) // 2)


def _orthogonal_slices(volume: np.ndarray, centre: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Sagittal, coronal and axial slices through ``centre``, float32."""
    i, j, k = centre
    return (
        volume[i, :, :].astype(np.float32),
        volume[:, j, :].astype(np.float32),
        volume[:, :, k].astype(np.float32),
    )


# --- folders --------------------------------------------------------------------------------


@dataclass
class _LoadedSet:
    volumes: np.ndarray  # (N, X, Y, Z) float32 memmap
    labels: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    folder: str


def _list_scans(folder: str | Path, name: str) -> list[Path]:
    from engine.errors import VolumeError
    from engine.volumes import find_volumes

    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"the {name} folder {folder} does not exist or is not a folder")
    try:
        return find_volumes([folder])
    except VolumeError as exc:
        raise EvaluationError(f"the {name} folder {folder} holds no scans (.nii, .nii.gz, .mgh, .mgz)") from exc


def _load_set(
    paths: list[Path],
    *,
    name: str,
    folder: str | Path,
    scratch: Path,
    reference: Volume,
    scale: float,
    progress: ProgressCallback | None,
) -> _LoadedSet:
    from engine.volumes import load_volume, strip_extension

    shape = (len(paths), *reference.shape)
    store = np.lib.format.open_memmap(scratch / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)
    for i, path in enumerate(paths):
        vol = load_volume(path)
        _check_grid(vol, name=name, reference=reference, scale=scale)
        store[i] = vol.data
        if progress is not None:
            progress(f"loading {name} scans", i + 1, len(paths))
    store.flush()
    return _LoadedSet(
        volumes=store,
        labels=tuple(strip_extension(p) for p in paths),
        spacing_mm=reference.spacing_mm,
        folder=str(Path(folder).resolve()),
    )


def _check_grid(vol: Volume, *, name: str, reference: Volume, scale: float) -> None:
    """Same grid as the reference (first real) scan and standard-space intensities, or a clear error."""
    where = f"{vol.name} ({name})"
    ref = f"{reference.name} (real)"
    hint = "all sets must be on one grid (resample with brainsynth-cli prepare)"
    if vol.shape != reference.shape:
        raise EvaluationError(
            f"{where} is {' x '.join(map(str, vol.shape))} but {ref} is {' x '.join(map(str, reference.shape))}; {hint}"
        )
    if not np.allclose(vol.spacing_mm, reference.spacing_mm, rtol=1e-3):
        raise EvaluationError(
            f"{where} has voxels of {_mm(vol.spacing_mm)} mm but {ref} has {_mm(reference.spacing_mm)} mm; {hint}"
        )
    if not np.allclose(vol.affine, reference.affine, atol=0.01):
        raise EvaluationError(f"{where} lies at another position in space than {ref} (their affines differ); {hint}")
    check_standard_range(vol.name, vol.data, scale=scale)


def _mm(spacing) -> str:
    return " x ".join(f"{s:.4g}" for s in spacing)


@contextlib.contextmanager
def _scratch_dir(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".brainsynth-evaluate-", dir=parent) as tmp:
        yield Path(tmp)


def evaluate_folders(
    real_dir: str | Path,
    synthetic_dir: str | Path,
    *,
    train_dir: str | Path | None = None,
    options: EvaluationOptions | None = None,
    scratch_parent: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Load three folders of scans and evaluate them (see :func:`evaluate_volumes`).

    Volumes are copied one file at a time into float32 ``.npy`` memory maps in a temporary
    folder under ``scratch_parent`` (4 bytes per voxel and volume on disk, removed afterwards),
    so memory stays bounded whatever the set sizes.

    Args:
        real_dir: folder of real scans (standard space, e.g. written by ``brainsynth-cli prepare``).
        synthetic_dir: folder of synthetic volumes (e.g. exported by ``brainsynth-cli sample``).
        train_dir: folder of the training scans, for the memorisation check.
        options: evaluation settings.
        scratch_parent: where the temporary folder goes (default: the system's temp folder).
        progress: called as ``progress(stage, done, total)``.

    Raises:
        EvaluationError: empty folders, shapes or voxel sizes that differ, non-standard intensities.
        VolumeError: a file cannot be read.
    """
    from engine.volumes import load_volume

    options = options or EvaluationOptions()
    listing = {"real": _list_scans(real_dir, "real"), "synthetic": _list_scans(synthetic_dir, "synthetic")}
    folders = {"real": real_dir, "synthetic": synthetic_dir}
    if train_dir is not None:
        listing["training"] = _list_scans(train_dir, "training")
        folders["training"] = train_dir
    for name, need in (("real", 2), ("synthetic", 2)):
        if len(listing[name]) < need:
            raise EvaluationError(
                f"the {name} folder {folders[name]} holds {len(listing[name])} scan; the MMD, FID and within-set "
                f"MS-SSIM need at least 2"
            )
    first = load_volume(listing["real"][0])
    for name, paths in listing.items():  # a wrong grid fails now, before hundreds of files are read
        _check_grid(load_volume(paths[0]), name=name, reference=first, scale=options.scale)
    parent = Path(scratch_parent) if scratch_parent is not None else Path(tempfile.gettempdir())
    with _scratch_dir(parent) as scratch:
        loaded = {
            name: _load_set(
                paths,
                name=name,
                folder=folders[name],
                scratch=scratch,
                reference=first,
                scale=options.scale,
                progress=progress,
            )
            for name, paths in listing.items()
        }
        if options.spacing_mm is None:
            options = replace(options, spacing_mm=loaded["real"].spacing_mm)
        train = loaded.get("training")
        result = evaluate_volumes(
            loaded["real"].volumes,
            loaded["synthetic"].volumes,
            train=train.volumes if train else None,
            options=options,
            real_labels=loaded["real"].labels,
            synthetic_labels=loaded["synthetic"].labels,
            train_labels=train.labels if train else None,
            progress=progress,
            sources={name: s.folder for name, s in loaded.items()},
        )
        # The memmaps live in the scratch folder: drop our references before it is removed.
        del loaded, train
    return result


# --- output ---------------------------------------------------------------------------------


def report_paths(out_dir: str | Path) -> list[Path]:
    """Every file :func:`write_report` may write into ``out_dir``."""
    return [Path(out_dir) / name for name in REPORT_FILES]


def check_report_target(out_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse (before any work) an output folder that already holds a report, unless overwriting.

    Raises:
        EvaluationError: naming the first file that would be replaced.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"{out} is a file; --out needs a folder")
    for path in report_paths(out):
        try:
            check_writable(path, overwrite=overwrite)
        except Exception as exc:
            raise EvaluationError(f"{path} already exists; choose another --out folder or pass --overwrite") from exc


def write_report(result: EvaluationResult, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``evaluation.json``, ``report.md`` and the PNG figures into ``out_dir``, each atomically.

    Args:
        result: from :func:`evaluate_volumes` or :func:`evaluate_folders`.
        out_dir: output folder (created if missing).
        overwrite: replace files of an earlier report.

    Returns:
        The files written.

    Raises:
        EvaluationError: a file exists and ``overwrite`` is False.
    """
    from engine.metrics.plots import render_figures
    from engine.metrics.report import render_markdown

    out = Path(out_dir)
    check_report_target(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    figures = render_figures(result)  # name → PNG bytes
    written = []
    for name, png in figures.items():
        with atomic_path(out / name, overwrite=overwrite) as tmp:
            tmp.write_bytes(png)
        written.append(out / name)
    atomic_write_text(out / "report.md", render_markdown(result, figures=list(figures)), overwrite=overwrite)
    written.append(out / "report.md")
    payload = json.dumps(result.to_dict(), indent=2, allow_nan=False)
    atomic_write_text(out / "evaluation.json", payload + "\n", overwrite=overwrite)
    written.append(out / "evaluation.json")
    return written
