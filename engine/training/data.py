"""Training data: finding scans, preparing them once (cached), splitting them by seed.

Sources are folders of NIfTI/MGZ scans, single scan files, or CSV manifests with a ``path``
column and optional ``subject_id`` and ``group`` columns (a header row is optional; without
one the columns are taken in that order). Relative manifest paths are relative to the CSV.
With a header, any further columns are the scan's covariates (age, sex...), which conditional
training reads (:mod:`engine.training.covariates`, which also reads BIDS ``participants.tsv``).

Preparation puts every scan onto the preset's model grid in standard intensity space
(:mod:`engine.preprocessing`). A scan that is already exactly on that grid with standard
intensities (what ``brainsynth-cli prepare`` writes) is used as is, so preparing twice never
changes the data (on the grid, values in [0, scale] and the foreground's upper percentile
at the scale, as the intensity mapping leaves them). Results are cached on disk keyed by
the file's SHA-256, the grid, the intensity mapping and the engine version: a second run,
a resume or another run on the same files reads the cache instead of resampling again. A
file that fails is cached as a failure with its reason too, so it is reported, not retried,
until the file itself changes.

The split is by subject (scans without a subject id are their own subject), stratified by
group (a manifest's ``group`` column or the ``group`` column of a ``participants.tsv`` beside
the scans, whichever the data come with: :func:`engine.training.covariates.group_strata`), and
a pure function of the seed and the files' contents: renaming or moving files does not change
it, and scans of one subject (longitudinal data such as OASIS-2) never end up on both sides.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import __version__
from engine.atomic import atomic_group, atomic_write_text, remove_orphaned_temporaries
from engine.errors import BrainSynthError
from engine.training.errors import TrainingError

#: Bump when the cached array format or the on-grid shortcut changes.
CACHE_FORMAT = 1
MANIFEST_SUFFIXES = (".csv",)
SPLIT_FILE = "split.csv"
FAILED_FILE = "failed_files.csv"
# An on-grid file counts as "already prepared" when its affine matches the grid to this (mm).
_AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class DataItem:
    """One input scan as listed by the user.

    Attributes:
        path: the scan file.
        subject_id: subject it belongs to (from a manifest), or None.
        group: diagnostic or cohort group (from a manifest), or None.
        covariates: the manifest's other columns for this scan, ``(name, text)`` pairs.
    """

    path: Path
    subject_id: str | None = None
    group: str | None = None
    covariates: tuple[tuple[str, str], ...] = ()


@dataclass
class PreparedItem:
    """The outcome of preparing one :class:`DataItem`.

    Attributes:
        item: the input.
        sha256: hex digest of the input file ("" when it could not be read at all).
        array_path: the cached standard-space float32 ``.npy`` on the model grid, or None on failure.
        reason: why the file cannot be used (None on success).
        warnings: load-time notes (e.g. NaN voxels replaced).
        from_cache: whether the result came from the cache.
    """

    item: DataItem
    sha256: str
    array_path: Path | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.array_path is not None


@dataclass
class Split:
    """Which prepared scans train and which validate.

    Attributes:
        train: prepared items for training, in a fixed order.
        val: prepared items for validation, in a fixed order.
        seed: the seed that fixed it.
    """

    train: list[PreparedItem]
    val: list[PreparedItem]
    seed: int


def discover(sources: Sequence[str | os.PathLike]) -> list[DataItem]:
    """Expand folders, scan files and CSV manifests into the list of scans to use.

    Raises:
        TrainingError: a manifest that cannot be read, or nothing found at all.
    """
    from engine.volumes import find_volumes

    items: list[DataItem] = []
    plain: list[Path] = []
    for raw in sources:
        path = Path(raw).expanduser()
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            items.extend(read_manifest(path))
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            raise TrainingError(f"manifest {path} does not exist")
        else:
            plain.append(path)
    if plain:
        try:
            items.extend(DataItem(p) for p in find_volumes(plain))
        except BrainSynthError as exc:
            raise TrainingError(str(exc)) from None
    unique = list({item.path.resolve() if item.path.exists() else item.path: item for item in items}.values())
    if not unique:
        raise TrainingError("no training scans found in the given --data sources")
    return unique


def read_manifest(path: Path) -> list[DataItem]:
    """Read a ``path[,subject_id,group]`` CSV; the header row is optional.

    Raises:
        TrainingError: unreadable file, no path column, or empty path cells.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read manifest {path}: {exc}") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(cell.strip() for cell in r)]
    if not rows:
        raise TrainingError(f"manifest {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    extra: dict[str, int] = {}
    if "path" in header:
        columns = {name: header.index(name) for name in ("path", "subject_id", "group") if name in header}
        extra = {name: i for i, name in enumerate(header) if name and name not in columns}
        rows = rows[1:]
    else:
        columns = {name: i for i, name in enumerate(("path", "subject_id", "group")) if i < len(rows[0])}
    items = []
    for line_no, row in enumerate(rows, start=2 if "path" in header else 1):
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in columns.items()}
        if not cells.get("path"):
            raise TrainingError(f"{path.name}, line {line_no}: the path cell is empty")
        scan = Path(cells["path"]).expanduser()
        if not scan.is_absolute():
            scan = path.parent / scan
        covariates = tuple((name, row[i].strip() if i < len(row) else "") for name, i in extra.items())
        items.append(DataItem(scan, cells.get("subject_id") or None, cells.get("group") or None, covariates))
    return items


def default_cache_dir() -> Path:
    """The per-user cache folder for prepared training volumes."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("brainsynth")) / "training-cache"


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class PreparationCache:
    """Prepared volumes on disk, keyed by input content, grid, intensity mapping and engine version.

    Layout: ``<cache_dir>/<fingerprint[:16]>/<sha256>.npy`` (standard space, float32, model
    grid, RAS+) with ``<sha256>.json`` beside it (source name, warnings), or
    ``<sha256>.failed.json`` holding the reason a file could not be used.
    """

    def __init__(self, cache_dir: str | os.PathLike, spec) -> None:
        self.spec = spec
        payload = json.dumps(
            {
                "grid": spec.grid.to_dict(),
                "intensity": spec.intensity.to_dict(),
                "engine": __version__,
                "format": CACHE_FORMAT,
            },
            sort_keys=True,
        )
        self.fingerprint = hashlib.sha256(payload.encode()).hexdigest()
        self.root = Path(cache_dir).expanduser() / self.fingerprint[:16]
        remove_orphaned_temporaries(self.root)  # what a killed preparation left

    def array_path(self, sha: str) -> Path:
        return self.root / f"{sha}.npy"

    def _failure_path(self, sha: str) -> Path:
        return self.root / f"{sha}.failed.json"

    def prepare(self, item: DataItem) -> PreparedItem:
        """Prepare one scan, or read its earlier outcome from the cache."""
        try:
            sha = sha256_file(item.path)
        except FileNotFoundError:
            return PreparedItem(item, "", reason=f"{item.path} does not exist")
        except IsADirectoryError:
            return PreparedItem(item, "", reason=f"{item.path} is a folder, not a scan")
        except OSError as exc:
            return PreparedItem(item, "", reason=f"{item.path.name} cannot be read: {exc.strerror or exc}")
        target, failure = self.array_path(sha), self._failure_path(sha)
        if target.exists():
            meta = _read_json(target.with_suffix(".json"))
            return PreparedItem(item, sha, array_path=target, warnings=meta.get("warnings", []), from_cache=True)
        if failure.exists():
            reason = _read_json(failure).get("reason", "failed earlier")
            return PreparedItem(item, sha, reason=reason, from_cache=True)
        try:
            data, warnings = self._prepare_array(item.path)
        except BrainSynthError as exc:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(failure, json.dumps({"source": item.path.name, "reason": str(exc)}), overwrite=True)
            return PreparedItem(item, sha, reason=str(exc))
        self.root.mkdir(parents=True, exist_ok=True)
        # Both files or neither; the array, which readers look for, is renamed into place last.
        with atomic_group() as group:
            meta = json.dumps({"source": item.path.name, "warnings": warnings})
            group.path(target.with_suffix(".json"), overwrite=True).write_text(meta, encoding="utf-8")
            np.save(group.path(target, overwrite=True), data, allow_pickle=False)
        return PreparedItem(item, sha, array_path=target, warnings=warnings)

    def _prepare_array(self, path: Path) -> tuple[np.ndarray, list[str]]:
        from engine.preprocessing import prepare_scan
        from engine.volumes import load_volume

        volume = load_volume(path)
        grid = self.spec.grid
        scale = float(self.spec.intensity.scale)
        on_grid = volume.shape == tuple(grid.shape) and np.allclose(
            volume.affine, grid.affine, atol=_AFFINE_TOLERANCE_MM
        )
        if on_grid and _looks_standard(volume.data, scale, self.spec.intensity.upper_percentile):
            # Already prepared (e.g. by `brainsynth-cli prepare`): renormalising again would
            # shift intensities slightly each time, so leave it alone.
            return np.ascontiguousarray(volume.data, dtype=np.float32), list(volume.warnings)
        scan = prepare_scan(volume, self.spec)
        return np.ascontiguousarray(scan.data, dtype=np.float32), list(scan.warnings)


def _looks_standard(data: np.ndarray, scale: float, percentile: float) -> bool:
    """Whether on-grid data are already in standard space: within [0, scale], and the upper
    percentile of the non-background voxels at (nearly) ``scale``, as the mapping makes it.

    The percentile condition keeps a raw scan that merely happens to lie on the grid with
    values below ``scale`` from skipping normalisation.
    """
    lo, hi = float(data.min()), float(data.max())
    if lo < 0.0 or hi > scale * (1 + 1e-6):
        return False
    foreground = data[data > 0]
    return foreground.size > 0 and float(np.percentile(foreground, percentile)) >= 0.95 * scale


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def check_failures(results: Sequence[PreparedItem], *, max_failed_fraction: float) -> list[PreparedItem]:
    """The usable items (duplicates by content dropped); stop if too many inputs failed.

    Args:
        results: outcomes for every input.
        max_failed_fraction: largest tolerated share of failed inputs, in [0, 1].

    Raises:
        TrainingError: none usable, or more than ``max_failed_fraction`` failed; the message
            lists the first failures and their reasons.
    """
    failed = [r for r in results if not r.ok]
    total = len(results)
    if failed and (len(failed) == total or len(failed) / total > max_failed_fraction):
        shown = "; ".join(describe_failure(r) for r in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise TrainingError(
            f"{len(failed)} of {total} training files cannot be used, more than the allowed "
            f"{max_failed_fraction:.0%} (--max-failed-fraction): {shown}{more}"
        )
    usable: dict[str, PreparedItem] = {}
    for r in results:
        if r.ok:
            usable.setdefault(r.sha256, r)
    return list(usable.values())


def describe_failure(result: PreparedItem) -> str:
    """``reason``, prefixed with the file name unless the engine's reason already names it."""
    reason = result.reason or "unknown reason"
    name = result.item.path.name
    return reason if name in reason else f"{name}: {reason}"


def write_failures(path: Path, results: Sequence[PreparedItem]) -> None:
    """``failed_files.csv``: path and reason of every input that could not be used."""
    rows = [["path", "reason"]] + [[str(r.item.path), r.reason or ""] for r in results if not r.ok]
    atomic_write_text(path, _csv_text(rows), overwrite=True)


def make_split(
    items: Sequence[PreparedItem],
    *,
    val_fraction: float,
    seed: int,
    strata: Mapping[str, str] | None = None,
) -> Split:
    """Split usable items into training and validation by subject, stratified by group.

    Each subject's position is ``sha256(seed:subject)``, so the split depends only on the
    seed and on what the files contain (a scan without a subject id is keyed by its content
    hash). Within each group the first ``round(val_fraction * n_subjects)`` subjects in that
    order validate; if that gives no validation subject although there are two or more
    subjects and ``val_fraction > 0``, one subject of the largest group validates.

    Args:
        items: the usable prepared scans.
        val_fraction: share of each group's subjects that validate.
        seed: fixes the order of the subjects.
        strata: each item's group by SHA-256 (from any covariate source); None takes the
            manifest's ``group`` column (``item.group``). A subject's group is that of its
            first scan in content order.

    Raises:
        TrainingError: no items, or nothing left to train on.
    """
    if not items:
        raise TrainingError("no usable training scans")
    subjects: dict[str, list[PreparedItem]] = {}
    group_of: dict[str, str] = {}
    for it in sorted(items, key=lambda i: i.sha256):  # content order: the listing order never matters
        key = f"subject:{it.item.subject_id}" if it.item.subject_id else f"sha256:{it.sha256}"
        subjects.setdefault(key, []).append(it)
        group_of.setdefault(key, strata.get(it.sha256, "") if strata is not None else it.item.group or "")

    def order(key: str) -> str:
        return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()

    by_group: dict[str, list[str]] = {}
    for key in sorted(subjects, key=order):
        by_group.setdefault(group_of[key], []).append(key)
    val_keys: set[str] = set()
    for keys in by_group.values():
        val_keys.update(keys[: round(val_fraction * len(keys))])
    if val_fraction > 0 and not val_keys and len(subjects) >= 2:
        largest = max(by_group.values(), key=len)
        val_keys.add(largest[0])
    if len(val_keys) == len(subjects):
        # Happens only for one subject per group with a large fraction: keep one to train on.
        val_keys.discard(sorted(val_keys, key=order)[-1])

    def flatten(keys) -> list[PreparedItem]:
        return [it for k in sorted(keys, key=order) for it in sorted(subjects[k], key=lambda i: i.sha256)]

    train = flatten(k for k in subjects if k not in val_keys)
    val = flatten(val_keys)
    if not train:
        raise TrainingError("no scans left for training after the validation split; lower --val-fraction")
    return Split(train=train, val=val, seed=seed)


def write_split(path: Path, split: Split, *, strata: Mapping[str, str] | None = None) -> None:
    """``split.csv``: one row per scan with its side, source path, subject, group and SHA-256.

    ``strata`` are the groups the split was stratified by (as given to :func:`make_split`).
    """
    rows = [["split", "path", "subject_id", "group", "sha256"]]
    for side, items in (("train", split.train), ("val", split.val)):
        for it in items:
            group = strata.get(it.sha256, "") if strata is not None else it.item.group or ""
            rows.append([side, str(it.item.path), it.item.subject_id or "", group, it.sha256])
    atomic_write_text(path, _csv_text(rows), overwrite=True)


def read_split(path: Path, prepared: Sequence[PreparedItem], *, seed: int) -> Split:
    """Rebuild a saved split from freshly prepared items (matched by SHA-256).

    Raises:
        TrainingError: a scan of the saved split is missing or changed.
    """
    by_sha = {it.sha256: it for it in prepared if it.ok}
    train, val = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            it = by_sha.get(row["sha256"])
            if it is None:
                raise TrainingError(
                    f"{row['path']} belongs to this run's split ({path.name}) but is missing or has changed; "
                    "restore it, or start a new run"
                )
            (train if row["split"] == "train" else val).append(it)
    return Split(train=train, val=val, seed=seed)


def _csv_text(rows: list[list[str]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class VolumeDataset:
    """Prepared volumes as model-space tensors of shape ``(1, D, H, W)``.

    Arrays are memory-mapped from the cache, so ranks on one node share the operating
    system's page cache instead of each holding a copy.
    """

    def __init__(self, items: Sequence[PreparedItem], intensity) -> None:
        self.paths = [it.array_path for it in items]
        self.intensity = intensity

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        standard = np.load(self.paths[index], mmap_mode="r")
        model = self.intensity.standard_to_model(np.asarray(standard, dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(model, dtype=np.float32)).unsqueeze(0)
