"""Covariates of the training scans, for conditional training: where they come from, checked.

Two sources, merged per scan (the manifest wins where both have a column):

* a BIDS-style ``participants.tsv`` (tab-separated, a ``participant_id`` column and any
  others) in the scan's folder or up to two folders above it; a scan belongs to the row whose
  participant_id is its file name without the extension (what ``demo-data`` writes), the
  ``sub-<label>`` its file name starts with, or a ``sub-<label>`` folder it lies in (BIDS);
* the extra columns of a CSV manifest (:func:`engine.training.data.read_manifest`), and its
  ``group`` column.

:func:`build_conditions` turns the covariates named by ``--conditions`` into the model's
:class:`engine.conditions.ConditionSpec` (kinds inferred where not given; ranges and
vocabularies from the usable scans) and each scan's checked condition. Nothing is dropped
silently: an unknown column, a non-number for a continuous covariate, a category seen in
only one scan, or a scan without a row stop with a message naming them; a missing value is a
listed warning (that scan trains with that covariate dropped: its null).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.conditions import KINDS, MISSING_VALUES, ConditionSpec, Covariate, as_number
from engine.training.errors import TrainingError

PARTICIPANTS_FILE = "participants.tsv"
_SCAN_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
_SHOWN = 5


@dataclass(frozen=True)
class ConditionRequest:
    """One covariate asked for with ``--conditions``: its column, kind (None = infer) and dropout."""

    name: str
    kind: str | None = None
    dropout: float | None = None


def parse_conditions(text: str) -> list[ConditionRequest]:
    """``"age:continuous,sex:categorical:0.2,group"`` -> requests (name[:kind[:dropout]]).

    Raises:
        TrainingError: an empty name, an unknown kind, a dropout outside [0, 1] or a repeat.
    """
    requests: list[ConditionRequest] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        fields = [f.strip() for f in part.split(":")]
        if len(fields) > 3 or not fields[0]:
            raise TrainingError(f"--conditions: {part!r} is not name[:kind[:dropout]] (e.g. age:continuous)")
        kind = fields[1].lower() if len(fields) > 1 and fields[1] else None
        if kind == "auto":
            kind = None
        if kind is not None and kind not in KINDS:
            raise TrainingError(f"--conditions: kind of {fields[0]!r} must be continuous or categorical (got {kind!r})")
        dropout = None
        if len(fields) == 3:
            dropout = as_number(fields[2])
            if dropout is None or not 0.0 <= dropout <= 1.0:
                raise TrainingError(f"--conditions: dropout of {fields[0]!r} must be in [0, 1] (got {fields[2]!r})")
        requests.append(ConditionRequest(fields[0], kind, dropout))
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise TrainingError(f"--conditions names a covariate twice: {', '.join(names)}")
    return requests


def read_participants(path: Path) -> dict[str, dict[str, str]]:
    """``participant_id -> {column: text}`` from a BIDS ``participants.tsv``.

    Raises:
        TrainingError: unreadable file, no participant_id column, a row of the wrong length
            or a repeated participant.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from None
    rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t") if r and any(c.strip() for c in r)]
    if not rows:
        raise TrainingError(f"{path} is empty")
    header = [c.strip() for c in rows[0]]
    if "participant_id" not in header:
        raise TrainingError(f"{path} has no participant_id column (columns: {', '.join(header)}); is it tab-separated?")
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TrainingError(f"{path.name}, line {line}: {len(row)} cells where the header has {len(header)}")
        cells = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
        pid = cells.pop("participant_id")
        if pid in table:
            raise TrainingError(f"{path.name}, line {line}: participant {pid!r} appears twice")
        table[pid] = cells
    return table


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class CovariateSources:
    """Finds each scan's covariates (``participants.tsv`` files are read once each).

    Args:
        participants: one ``participants.tsv`` to use for every scan instead of those beside
            the scans (``brainsynth-cli utility --labels``); None searches beside the scans.
    """

    def __init__(self, participants: Path | None = None) -> None:
        self._tables: dict[Path, dict[str, dict[str, str]] | None] = {}
        self._fixed = read_participants(Path(participants)) if participants is not None else None

    def _table(self, folder: Path) -> dict[str, dict[str, str]] | None:
        if self._fixed is not None:
            return self._fixed
        if folder not in self._tables:
            path = folder / PARTICIPANTS_FILE
            self._tables[folder] = read_participants(path) if path.is_file() else None
        return self._tables[folder]

    def row(self, item) -> dict[str, str] | None:
        """The covariates of a :class:`engine.training.data.DataItem`, or None when no source has it."""
        path = Path(item.path)
        found: dict[str, str] | None = None
        stem = _stem(path)
        keys = [stem] + ([stem.split("_")[0]] if stem.startswith("sub-") else [])
        keys += [p.name for p in path.parents if p.name.startswith("sub-")]
        for folder in list(path.parents)[:3]:
            table = self._table(folder)
            if table is None:
                continue
            for key in keys:
                if key in table:
                    found = dict(table[key])
                    break
            if found is not None:
                break
        manifest = dict(item.covariates)
        if item.group:
            manifest["group"] = item.group
        if manifest:
            found = {**(found or {}), **manifest}
        return found


def build_conditions(
    items: Sequence,
    requests: Sequence[ConditionRequest],
    *,
    dropout: float,
    covariate_dropout: float,
    sources: CovariateSources | None = None,
) -> tuple[ConditionSpec, dict[str, dict], list[str]]:
    """The model's condition spec and every scan's condition.

    Args:
        items: the usable :class:`engine.training.data.PreparedItem` s (all of them, before
            the split, so the ranges and vocabularies do not depend on it).
        requests: the covariates asked for (:func:`parse_conditions`).
        dropout: probability of dropping the whole condition per training volume.
        covariate_dropout: probability of dropping each covariate where its request gives none.
        sources: where covariates are looked up (a fresh one by default).

    Returns:
        ``(spec, conditions, warnings)``: ``conditions`` maps each item's SHA-256 to its checked
        condition (missing values left out), ``warnings`` are lines for the front end.

    Raises:
        TrainingError: scans without a row, an unknown column, a non-numeric value for a
            continuous covariate or a category seen in only one scan.
    """
    sources = sources or CovariateSources()
    rows = [(it, sources.row(it.item)) for it in items]
    without = [it.item.path.name for it, row in rows if row is None]
    if without:
        raise TrainingError(
            f"{len(without)} of {len(rows)} scans have no covariates (no row in a {PARTICIPANTS_FILE} beside them "
            f"nor covariate columns in a manifest): {_list(without)}; add their rows, or leave the scans out"
        )
    columns = sorted({name for _, row in rows for name in row})
    warnings: list[str] = []
    covariates: list[Covariate] = []
    values: dict[str, dict] = {it.sha256: {} for it, _ in rows}
    for request in requests:
        if request.name not in columns:
            raise TrainingError(
                f"--conditions: no covariate column {request.name!r}; the covariate files have: "
                f"{', '.join(columns) or 'no columns'}"
            )
        cells = [(it, (row.get(request.name) or "").strip()) for it, row in rows]
        present = [(it, cell) for it, cell in cells if cell.lower() not in MISSING_VALUES]
        missing = [it.item.path.name for it, cell in cells if cell.lower() in MISSING_VALUES]
        if not present:
            raise TrainingError(f"covariate {request.name!r} has no value for any scan")
        kind = request.kind or ("continuous" if all(as_number(c) is not None for _, c in present) else "categorical")
        rate = covariate_dropout if request.dropout is None else request.dropout
        if kind == "continuous":
            bad = [f"{c!r} ({it.item.path.name})" for it, c in present if as_number(c) is None]
            if bad:
                raise TrainingError(f"covariate {request.name!r} is continuous but not a number in: {_list(bad)}")
            numbers = [(it, as_number(c)) for it, c in present]
            lo, hi = min(v for _, v in numbers), max(v for _, v in numbers)
            covariates.append(Covariate(request.name, "continuous", minimum=lo, maximum=hi, dropout=rate))
            for it, v in numbers:
                values[it.sha256][request.name] = v
        else:
            counts: dict[str, int] = {}
            for _, c in present:
                counts[c] = counts.get(c, 0) + 1
            once = [
                f"{c!r} ({next(it.item.path.name for it, cc in present if cc == c)})"
                for c, n in counts.items()
                if n == 1
            ]
            if once:
                raise TrainingError(
                    f"covariate {request.name!r}: {_list(once)} appear in only one scan; a model cannot learn a "
                    "category from one scan: merge it with another, mark it missing (n/a) or leave the scan out"
                )
            if len(counts) == 1:
                warnings.append(f"covariate {request.name!r} has one value only ({next(iter(counts))!r})")
            covariates.append(Covariate(request.name, "categorical", categories=tuple(sorted(counts)), dropout=rate))
            for it, c in present:
                values[it.sha256][request.name] = c
        if missing:
            warnings.append(
                f"{request.name} is missing for {len(missing)} scan(s), which train with it dropped: {_list(missing)}"
            )
    return ConditionSpec(tuple(covariates), dropout=dropout), values, warnings


#: The covariate the train/validation split is stratified by, whatever file it comes from.
STRATUM_COLUMN = "group"


def group_strata(items: Sequence, *, sources: CovariateSources | None = None) -> dict[str, str]:
    """Each scan's group for the stratified split, from whichever source the data come with.

    The group is the ``group`` column of a manifest or of a ``participants.tsv`` beside the
    scans (:class:`CovariateSources`: the manifest wins where both have it), so a folder with a
    ``participants.tsv`` is split as a manifest with the same column would be.

    Args:
        items: the usable :class:`engine.training.data.PreparedItem` s.
        sources: where covariates are looked up (a fresh one by default; pass the one
            :func:`build_conditions` uses so each ``participants.tsv`` is read once).

    Returns:
        SHA-256 -> group text ("" where a scan has no group or its value is missing).

    Raises:
        TrainingError: a ``participants.tsv`` that cannot be read.
    """
    sources = sources or CovariateSources()
    strata: dict[str, str] = {}
    for it in items:
        row = sources.row(it.item) or {}
        value = (row.get(STRATUM_COLUMN) or "").strip()
        strata[it.sha256] = "" if value.lower() in MISSING_VALUES else value
    return strata


def _list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def conditions_of(values: Mapping[str, dict], items: Sequence) -> list[dict]:
    """The conditions of ``items`` (PreparedItems) in their order."""
    return [values[it.sha256] for it in items]


def carry_participants(
    sources: Sequence[str | Path], stems: Sequence[str], out_dir: Path, *, overwrite: bool = False
) -> Path | None:
    """Write ``out_dir/participants.tsv`` with the rows of the scans named ``stems``.

    ``prepare`` keeps each scan's file name stem, so a prepared folder is labelled like its
    source when it carries the source's rows. The tables are looked for in each source folder
    (a file's folder) and up to two folders above, as training looks for them; a scan's row is
    the one keyed by its stem, or by the ``sub-<label>`` its stem starts with.

    Returns:
        The file written, or None when no source has a ``participants.tsv`` row for these scans.

    Raises:
        TrainingError: an unreadable table, or a different ``participants.tsv`` in ``out_dir``
            without ``overwrite``.
    """
    from engine.atomic import atomic_write_text

    folders: list[Path] = []
    for raw in sources:
        path = Path(raw)
        start = path if path.is_dir() else path.parent
        for folder in [start, *list(start.parents)[:2]]:
            if folder not in folders and (folder / PARTICIPANTS_FILE).is_file():
                folders.append(folder)
    rows: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for folder in folders:
        table = read_participants(folder / PARTICIPANTS_FILE)
        for stem in stems:
            for key in [stem] + ([stem.split("_")[0]] if stem.startswith("sub-") else []):
                if key in table and key not in rows:
                    rows[key] = table[key]
                    columns += [c for c in table[key] if c not in columns]
    if not rows:
        return None
    lines = ["\t".join(["participant_id", *columns])]
    lines += ["\t".join([pid] + [rows[pid].get(c, "n/a") or "n/a" for c in columns]) for pid in sorted(rows)]
    text = "\n".join(lines) + "\n"
    target = out_dir / PARTICIPANTS_FILE
    if target.is_file() and not overwrite:
        if target.read_text(encoding="utf-8") == text:
            return target
        raise TrainingError(f"{target} already exists with other rows; pass --overwrite to replace it")
    atomic_write_text(target, text, overwrite=True)
    return target
