"""Refusing synthetic volumes made by a model that saw a test subject.

A synthetic volume's sidecar names the checkpoint that made it (file name and SHA-256). The
checkpoint's provenance names its training run (``training.run_dir``), whose ``split.csv``
(or, for a checkpoint copied out of its run, ``NAME.split.csv`` beside it) lists every scan
the run trained and validated on (path, subject id, SHA-256; written by
:func:`engine.training.data.write_split`), and the checkpoint it started from
(``training.init_from`` / ``init_from_sha256``), whose run is checked the same way.

A test subject counts as seen when a training row has the same file content (SHA-256), the
same subject id, or the same file name stem (``prepare`` keeps stems, so a prepared copy of a
training scan still matches). Seen in a *training* row: the experiment is refused. Seen only
in a validation row (the run never fitted it, it only chose the best epoch): a warning.

A checkpoint that cannot be checked (not given with ``--checkpoint``, an imported file with
no training record, a run folder not reachable from here) is refused with what to do, unless
the check is waived (``--no-leakage-check``), which the report records.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import BrainSynthError
from engine.utility.data import LabelledScan
from engine.utility.errors import UtilityError

_MAX_PARENTS = 8


@dataclass
class LeakageReport:
    """What the check found.

    Attributes:
        checked: checkpoints whose run split was compared with the test subjects (name → run split path).
        warnings: lines for the report (validation overlaps, parents that could not be checked).
        waived: True when the check was skipped on request.
    """

    checked: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    waived: bool = False

    def to_dict(self) -> dict:
        return {"checked": dict(self.checked), "warnings": list(self.warnings), "waived": self.waived}


def _stem(path: str) -> str:
    from engine.volumes import strip_extension

    return strip_extension(Path(path))


def split_beside(checkpoint: Path) -> Path:
    """Where a checkpoint copied out of its run keeps the run's split: ``NAME.split.csv`` beside it."""
    return checkpoint.with_name(f"{_stem(str(checkpoint))}.split.csv")


def _read_split_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UtilityError(f"cannot read the training split {path}: {exc}") from None


def _training_record(path: Path) -> dict:
    from engine.checkpoint import read_metadata

    try:
        meta = read_metadata(path)
    except BrainSynthError as exc:
        raise UtilityError(f"--checkpoint {path.name}: {exc}") from None
    provenance = meta.get("provenance") if isinstance(meta, dict) else None
    training = provenance.get("training") if isinstance(provenance, dict) else None
    return training if isinstance(training, dict) else {}


def index_checkpoints(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """``sha256 → path`` of the checkpoints given with ``--checkpoint``."""
    from engine.training.data import sha256_file

    out: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UtilityError(f"--checkpoint {path} does not exist")
        out[sha256_file(path)] = path
    return out


def check_leakage(
    synthetic: Sequence[LabelledScan],
    test_scans: Sequence[LabelledScan],
    *,
    checkpoints: Sequence[str | os.PathLike] = (),
    waive: bool = False,
) -> LeakageReport:
    """Refuse synthetic volumes whose generator (or its parents) trained on a test subject.

    Args:
        synthetic: the synthetic volumes (their ``checkpoint`` from the sidecars).
        test_scans: the real scans of every repeat's test set.
        checkpoints: the generator checkpoint files (matched to sidecars by SHA-256).
        waive: skip the check (recorded in the report).

    Raises:
        UtilityError: a generator that trained on a test subject, or one that cannot be checked.
    """
    report = LeakageReport(waived=waive)
    if waive or not synthetic:
        return report
    given = index_checkpoints(checkpoints)
    used: dict[str, str | None] = {}
    for scan in synthetic:
        name, sha = scan.checkpoint or (None, None)
        if not sha:
            raise UtilityError(
                f"the sidecar of {scan.path.name} names no checkpoint SHA-256, so whether its model saw a test "
                "subject cannot be checked; use volumes exported by 'brainsynth-cli sample', or --no-leakage-check"
            )
        used.setdefault(sha, name)
    for sha, name in used.items():
        if sha not in given:
            raise UtilityError(
                f"the synthetic volumes were made by {name or 'a checkpoint'} (sha256 {sha[:12]}…), which was not "
                "given: pass that file with --checkpoint so its training split can be checked against the test "
                "subjects, or --no-leakage-check to skip the check (the report then says so)"
            )
    by_sha = {s.sha256: s for s in test_scans}
    by_subject = {s.subject: s for s in test_scans}
    by_stem = {_stem(str(s.path)): s for s in test_scans}
    for sha in used:
        _check_run(given[sha], sha, by_sha, by_subject, by_stem, report, depth=0)
    return report


def _check_run(path: Path, sha: str, by_sha, by_subject, by_stem, report: LeakageReport, *, depth: int) -> None:
    training = _training_record(path)
    run_dir = training.get("run_dir")
    if not run_dir:
        message = (
            f"{path.name} has no training record (imported, or not trained by 'brainsynth-cli train'), so its "
            "training subjects are unknown"
        )
        if depth == 0:
            raise UtilityError(message + "; --no-leakage-check skips the check (the report then says so)")
        report.warnings.append(message + " (a parent model; not checked)")
        return
    split_file = Path(run_dir) / "split.csv"
    beside = split_beside(path)
    if not split_file.is_file() and beside.is_file():
        split_file = beside  # a checkpoint copied out of its run, with its split (the bundled demo model)
    if not split_file.is_file():
        message = (
            f"the training split of {path.name} ({split_file}) is not reachable from here, so whether its model saw "
            "a test subject cannot be checked"
        )
        if depth == 0:
            raise UtilityError(
                message + f"; copy the run's split.csv to that path or beside the checkpoint as {beside.name}, or "
                "pass --no-leakage-check (the report then says so)"
            )
        report.warnings.append(message + " (a parent model)")
        return
    seen_train: list[str] = []
    seen_val: list[str] = []
    for row in _read_split_rows(split_file):
        hit = (
            by_sha.get(row.get("sha256", ""))
            or (by_subject.get(row["subject_id"]) if row.get("subject_id") else None)
            or by_stem.get(_stem(row.get("path", "")))
        )
        if hit is not None:
            (seen_train if row.get("split") == "train" else seen_val).append(f"{hit.subject} ({hit.path.name})")
    if seen_train:
        shown = ", ".join(sorted(set(seen_train))[:5])
        raise UtilityError(
            f"{path.name} was trained on {len(set(seen_train))} subject(s) of the real test set ({shown}; its run "
            f"split {split_file}): synthetic volumes from it would leak the test subjects; use real scans the "
            "generator never saw, or a generator trained without them"
        )
    if seen_val:
        report.warnings.append(
            f"{path.name}'s run validated (never trained) on {len(set(seen_val))} test subject(s): "
            + ", ".join(sorted(set(seen_val))[:5])
        )
    report.checked[path.name] = str(split_file)
    parent = training.get("init_from")
    if parent and depth < _MAX_PARENTS:
        parent_path = Path(parent)
        if parent_path.is_file():
            _check_run(
                parent_path, training.get("init_from_sha256", ""), by_sha, by_subject, by_stem, report, depth=depth + 1
            )
        else:
            report.warnings.append(
                f"{path.name} started from {parent_path.name} ({parent}), which is not reachable here; the subjects "
                "that model trained on were not checked"
            )
