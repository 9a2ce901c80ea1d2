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


def assign_targets(scans: Sequence[LabelledScan], *, task: str, positive: str | None, label: str) -> None:
    """Set each scan's ``target``: 1.0 for ``positive`` and 0.0 otherwise, or the number.

    Raises:
        UtilityError: an unknown task, no --positive for classification, a positive value no
            real scan has, or a non-number for regression.
    """
    if task not in TASKS:
        raise UtilityError(f"--task must be classify or regress (got {task!r})")
    values = sorted({s.label for s in scans})
    if task == "classify":
        if positive is None:
            raise UtilityError(
                f"--positive: which value of {label!r} is the positive class? (values: {', '.join(values)})"
            )
        if positive not in {s.label for s in scans if s.kind == "real"}:
            raise UtilityError(
                f"--positive {positive!r}: no real scan has that {label!r} (values: {', '.join(values)})"
            )
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
