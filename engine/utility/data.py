"""Labelled scans for the utility experiment: real ones from their covariates, synthetic ones
from their sidecars, loaded onto one grid.

Real scans are found and labelled exactly as conditional training finds its covariates
(:func:`engine.training.data.discover` for folders, files and CSV manifests;
:class:`engine.training.covariates.CovariateSources` for ``participants.tsv`` beside the scans,
or one given with ``--labels``, and manifest columns). A real scan's subject is the manifest's
``subject_id``, else the ``sub-<label>`` its name starts with, else its file name without the
extension (what ``demo-data`` and ``prepare`` write, and what ``participants.tsv`` keys).

Synthetic volumes are labelled by the conditions they were generated with (their sidecar's
``conditions``, as ``brainsynth-cli sample`` writes it); each is its own subject.

Every volume must lie on one grid (shape and affine) in standard intensity space
(``brainsynth-cli prepare`` and ``sample`` write both); the network sees standard / scale.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.conditions import MISSING_VALUES, as_number
from engine.errors import BrainSynthError
from engine.utility.errors import UtilityError

TASKS = ("classify", "regress")
_SHOWN = 5
_AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class LabelledScan:
    """One scan of the experiment.

    Attributes:
        path: the file.
        subject: who it belongs to (real: the subject id; synthetic: ``synthetic:<file name>``).
        label: the label's text as the source gives it ("ftd", "71.3").
        kind: ``"real"`` or ``"synthetic"``.
        sha256: hex digest of the file's bytes.
        target: the value the network learns: 1.0/0.0 (positive or not) or the number.
        checkpoint: for synthetic volumes, ``(name, sha256)`` of the model that made it.
        array: the volume in standard space / scale (float32, RAS+), once loaded.
    """

    path: Path
    subject: str
    label: str
    kind: str
    sha256: str = ""
    target: float = 0.0
    checkpoint: tuple[str | None, str | None] | None = None
    array: np.ndarray | None = field(default=None, repr=False)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def subject_of(item) -> str:
    """The subject of a real :class:`engine.training.data.DataItem` (see the module docstring)."""
    from engine.volumes import strip_extension

    if item.subject_id:
        return str(item.subject_id)
    stem = strip_extension(item.path)
    if stem.startswith("sub-"):
        return stem.split("_")[0]
    for parent in item.path.parents:
        if parent.name.startswith("sub-"):
            return parent.name
    return stem


def real_scans(
    sources: Sequence[str | os.PathLike], *, label: str, labels_file: str | os.PathLike | None = None
) -> list[LabelledScan]:
    """The real scans and their labels (texts; :func:`assign_targets` makes the targets).

    Raises:
        UtilityError: no scans, no label column, or scans whose label is missing (all listed).
    """
    from engine.training.covariates import CovariateSources
    from engine.training.data import discover, sha256_file

    try:
        items = discover(sources)
        covariates = CovariateSources(Path(labels_file) if labels_file else None)
        rows = [(item, covariates.row(item)) for item in items]
    except BrainSynthError as exc:
        raise UtilityError(f"--real: {exc}") from None
    columns = sorted({name for _, row in rows if row for name in row})
    if rows and not any(row and label in row for _, row in rows):
        raise UtilityError(
            f"--label {label!r}: no real scan has that column (the label files have: {', '.join(columns) or 'none'}; "
            "labels come from participants.tsv beside the scans, --labels, or manifest columns)"
        )
    missing = [
        item.path.name for item, row in rows if row is None or (row.get(label) or "").strip().lower() in MISSING_VALUES
    ]
    if missing:
        raise UtilityError(
            f"{len(missing)} of {len(rows)} real scans have no {label!r} label: {_listed(missing)}; "
            "add their rows to participants.tsv (or the manifest), or leave the scans out"
        )
    scans = []
    for item, row in rows:
        if not item.path.is_file():
            raise UtilityError(f"{item.path} does not exist")
        scans.append(
            LabelledScan(
                path=item.path,
                subject=subject_of(item),
                label=row[label].strip(),
                kind="real",
                sha256=sha256_file(item.path),
            )
        )
    return scans


def synthetic_scans(sources: Sequence[str | os.PathLike], *, label: str) -> list[LabelledScan]:
    """The synthetic volumes in ``sources`` (folders or files) labelled from their sidecars.

    Raises:
        UtilityError: no volumes, a missing or unreadable sidecar, or sidecars without the label.
    """
    from engine.export import sidecar_path
    from engine.training.data import sha256_file
    from engine.volumes import find_volumes

    try:
        paths = find_volumes(sources)
    except BrainSynthError as exc:
        raise UtilityError(f"--synthetic: {exc}") from None
    scans: list[LabelledScan] = []
    without: list[str] = []
    for path in paths:
        sidecar = sidecar_path(path)
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UtilityError(
                f"synthetic volume {path.name} has no sidecar ({sidecar.name}), so its label is unknown; "
                "use volumes exported by 'brainsynth-cli sample' or the app"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UtilityError(f"cannot read the sidecar {sidecar}: {exc}") from None
        conditions = meta.get("conditions") if isinstance(meta, dict) else None
        value = conditions.get(label) if isinstance(conditions, dict) else None
        if value is None or str(value).strip().lower() in MISSING_VALUES:
            without.append(path.name)
            continue
        scans.append(
            LabelledScan(
                path=path,
                subject=f"synthetic:{path.name}",
                label=str(value).strip(),
                kind="synthetic",
                sha256=sha256_file(path),
                checkpoint=(meta.get("checkpoint"), meta.get("checkpoint_sha256")),
            )
        )
    if without:
        raise UtilityError(
            f"{len(without)} of {len(paths)} synthetic volumes have no {label!r} condition in their sidecars: "
            f"{_listed(without)}; generate them with --condition {label}=... from a conditional model"
        )
    return scans


def _spelling(value: str) -> str:
    """A label's spelling-blind form: case and surrounding space ignored, numbers by value."""
    number = as_number(value)
    return repr(number) if number is not None else value.strip().casefold()


def _counted(scans: Sequence[LabelledScan]) -> str:
    counts: dict[str, int] = {}
    for s in scans:
        counts[s.label] = counts.get(s.label, 0) + 1
    return ", ".join(f"{value!r} ({n})" for value, n in sorted(counts.items()))


def check_vocabulary(scans: Sequence[LabelledScan], *, positive: str, label: str) -> None:
    """Refuse classification labels that real and synthetic scans spell differently.

    A label is compared as text, exactly, on both sides: a synthetic volume whose sidecar says
    ``FTD`` where ``participants.tsv`` says ``ftd`` would otherwise silently count as a
    negative, and a synthetic-only model would learn the classes the wrong way round (or
    from one class only). So every synthetic value must be one of the real scans' values,
    and ``positive`` must be among the synthetic values too.

    Raises:
        UtilityError: ``positive`` missing on either side, or a synthetic value the real scans
            do not have (the message names the real spelling when only case or form differ).
    """
    real = [s for s in scans if s.kind == "real"]
    synthetic = [s for s in scans if s.kind != "real"]
    real_values = {s.label for s in real}
    if positive not in real_values:
        near = sorted(v for v in real_values if _spelling(v) == _spelling(positive))
        hint = f"; the real scans spell it {near[0]!r}" if near else ""
        raise UtilityError(
            f"--positive {positive!r}: no real scan has that {label!r} (values: {', '.join(sorted(real_values))}){hint}"
        )
    if not synthetic:
        return
    unknown = [s for s in synthetic if s.label not in real_values]
    if unknown:
        by_spelling = {_spelling(v): v for v in sorted(real_values)}
        respelt = sorted(
            {(s.label, by_spelling[_spelling(s.label)]) for s in unknown if _spelling(s.label) in by_spelling}
        )
        if respelt:
            pairs = ", ".join(f"{syn!r} for {real!r}" for syn, real in respelt)
            raise UtilityError(
                f"the synthetic volumes' {label!r} conditions are spelt differently from the real labels ({pairs}); "
                "labels must match exactly (case included): generate with the real scans' spelling, or use a "
                "labels file that spells them as the generator does"
            )
        raise UtilityError(
            f"{len(unknown)} of {len(synthetic)} synthetic volumes have a {label!r} that no real scan has "
            f"(synthetic: {_counted(synthetic)}; real: {', '.join(sorted(real_values))}); "
            "real and synthetic labels must come from one vocabulary"
        )
    if positive not in {s.label for s in synthetic}:
        raise UtilityError(
            f"--positive {positive!r}: no synthetic volume has that {label!r} (synthetic: {_counted(synthetic)}); "
            f"generate some with --condition {label}={positive}"
        )


def assign_targets(scans: Sequence[LabelledScan], *, task: str, positive: str | None, label: str) -> None:
    """Set each scan's ``target``: 1.0 for ``positive`` and 0.0 otherwise, or the number.

    Real and synthetic scans are encoded by one rule (the label's text equals ``positive``),
    after :func:`check_vocabulary` has made sure both sides spell the labels alike.

    Raises:
        UtilityError: an unknown task, no --positive for classification, labels that real and
            synthetic scans spell differently (see :func:`check_vocabulary`), or a non-number
            for regression.
    """
    if task not in TASKS:
        raise UtilityError(f"--task must be classify or regress (got {task!r})")
    values = sorted({s.label for s in scans})
    if task == "classify":
        if positive is None:
            raise UtilityError(
                f"--positive: which value of {label!r} is the positive class? (values: {', '.join(values)})"
            )
        check_vocabulary(scans, positive=positive, label=label)
        for s in scans:
            s.target = 1.0 if s.label == positive else 0.0
        return
    bad = [f"{s.label!r} ({s.path.name})" for s in scans if as_number(s.label) is None]
    if bad:
        raise UtilityError(f"--task regress needs numbers, but {label!r} is not a number in: {_listed(bad)}")
    for s in scans:
        s.target = float(as_number(s.label))


def load_arrays(scans: Sequence[LabelledScan], *, scale: float = 1000.0, progress=None) -> tuple[int, int, int]:
    """Load every volume into ``scan.array`` (standard / ``scale``) and check they share one grid.

    Args:
        scans: real scans first (the first real scan's grid is the reference).
        scale: standard space's scale (the intensity mapping's, 1000).
        progress: optional ``progress(done, total)``.

    Returns:
        The grid's shape.

    Raises:
        UtilityError: an unreadable scan, grids that differ (listed), or values outside
            standard space (a scan that was not prepared).
    """
    from engine.volumes import load_volume

    reference = None
    differing: list[str] = []
    for done, scan in enumerate(scans):
        try:
            volume = load_volume(scan.path)
        except BrainSynthError as exc:
            raise UtilityError(str(exc)) from None
        if reference is None:
            reference = volume
        elif volume.shape != reference.shape or not np.allclose(
            volume.affine, reference.affine, atol=_AFFINE_TOLERANCE_MM
        ):
            differing.append(f"{scan.path.name} ({scan.kind}, {'x'.join(map(str, volume.shape))})")
            continue
        data = volume.data
        if float(data.min()) < 0.0 or float(data.max()) > scale * (1 + 1e-3):
            raise UtilityError(
                f"{scan.path.name} is not in standard intensity space (values {float(data.min()):.4g} to "
                f"{float(data.max()):.4g}, expected 0 to {scale:g}); put real scans on the model grid with "
                "'brainsynth-cli prepare' first"
            )
        scan.array = np.ascontiguousarray(data, dtype=np.float32) / np.float32(scale)
        if progress is not None:
            progress(done + 1, len(scans))
    if differing:
        shape = "x".join(map(str, reference.shape))
        raise UtilityError(
            f"{len(differing)} volumes lie on another grid than {scans[0].path.name} ({shape}): {_listed(differing)}; "
            "real and synthetic volumes must share one model grid (prepare the real scans with the generator's preset)"
        )
    return reference.shape


#: Largest factor by which the real and the synthetic brains' typical bright level may differ.
MAX_SCALE_RATIO = 2.0


def brain_level(array: np.ndarray) -> float:
    """A volume's bright level: the 99.5th percentile of its non-zero (brain) voxels, in the
    array's own units (0 for an empty volume). Standard space puts it at the scale for
    prepared scans and exports alike, so real and synthetic levels should agree."""
    brain = array[array > 0]
    return float(np.percentile(brain, 99.5)) if brain.size else 0.0


def check_intensity_scales(scans: Sequence[LabelledScan]) -> dict[str, float]:
    """Check that real and synthetic volumes, as loaded, share one intensity scale.

    Both are meant to be in standard space; a set of volumes on another scale (say [0, 1]
    instead of [0, 1000]) still passes the range check of :func:`load_arrays`, but a network
    trained on one scale says nothing about the other.

    Returns:
        The median :func:`brain_level` of each kind present (``{"real": ..., "synthetic": ...}``),
        in standard / scale units.

    Raises:
        UtilityError: the two medians differ by more than :data:`MAX_SCALE_RATIO`.
    """
    levels: dict[str, float] = {}
    for kind in ("real", "synthetic"):
        values = [brain_level(s.array) for s in scans if s.kind == kind and s.array is not None]
        if values:
            levels[kind] = float(np.median(values))
    if len(levels) == 2:
        real, synthetic = levels["real"], levels["synthetic"]
        if min(real, synthetic) <= 0 or max(real, synthetic) / min(real, synthetic) > MAX_SCALE_RATIO:
            raise UtilityError(
                f"the synthetic volumes are on another intensity scale than the real scans (the brain's 99.5th "
                f"percentile: median {synthetic:.3g} vs {real:.3g} of the standard scale); use volumes "
                "exported by 'brainsynth-cli sample' or the app and real scans put through 'brainsynth-cli prepare'"
            )
    return levels
