"""Many raw scans: finding them, running them in parallel, failed.csv and the QC report.

Parallel over scans with worker processes ("spawn", so no worker inherits a half-initialised
ITK or torch thread pool), each using ``threads`` compute threads. A scan that is refused does
not stop the batch: it gets one line in ``failed.csv`` (rewritten every run, so it lists the
current run's refusals) and in the outcome stream. Finished scans are skipped on the next run
(:func:`engine.preprocess.pipeline.preprocess_file`), and so are scans refused for their content
before, so a killed job simply resumes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from engine.atomic import atomic_write_text
from engine.errors import BrainSynthError, VolumeError
from engine.preprocess.errors import MissingDependencyError
from engine.preprocess.pipeline import OutputPaths, PreprocessSettings, ScanOutcome, preprocess_file
from engine.volumes import find_volumes, strip_extension

BIDS_PATTERN = "*_T1w.nii*"
FAILED_CSV = "failed.csv"
REPORT_MD = "qc_report.md"


def find_raw_scans(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into raw scans.

    A folder holding BIDS T1 files (``*_T1w.nii``/``*_T1w.nii.gz`` anywhere below it, outside
    ``derivatives`` and hidden folders) contributes those; any other folder its scan files
    (NIfTI, MGH/MGZ) at the top level. Files are kept as given.

    Raises:
        VolumeError: nothing was found.
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            bids = sorted(
                p
                for p in path.rglob(BIDS_PATTERN)
                if p.is_file()
                and not any(part.startswith(".") or part == "derivatives" for part in p.relative_to(path).parts)
            )
            found.extend(bids if bids else find_volumes([path]))
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise VolumeError("no scans found in the given paths")
    return unique


def _refusal_key(path: Path, settings: PreprocessSettings) -> dict:
    from engine.export import sha256_file

    return {**settings.cache_key(), "input_sha256": sha256_file(path)}


def _run_one(path: Path, out_dir: Path, settings: PreprocessSettings, overwrite: bool) -> ScanOutcome:
    """One scan, refusals turned into a failed outcome (other errors still raise).

    A refusal caused by the scan's content (:class:`VolumeError` and so
    :class:`PreprocessError`) is remembered in ``refused/<stem>.json`` with the cache key, so a
    resumed batch does not spend minutes refusing the same scan again; a changed file, other
    settings or ``overwrite`` retry it. Refusals caused by the output folder (an existing file)
    are not remembered.
    """
    refusal = OutputPaths.for_stem(out_dir, strip_extension(path)).refusal
    try:
        if not overwrite and refusal.exists() and path.is_file():
            try:
                known = json.loads(refusal.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                known = {}
            if known.get("cache_key") == _refusal_key(path, settings):
                return ScanOutcome(source=path, status="failed", message=known.get("reason", ""), remembered=True)
        outcome = preprocess_file(path, out_dir, settings=settings, overwrite=overwrite)
    except MissingDependencyError:
        raise
    except VolumeError as exc:
        if path.is_file():
            payload = {"source": str(path.resolve()), "cache_key": _refusal_key(path, settings), "reason": str(exc)}
            atomic_write_text(refusal, json.dumps(payload, indent=2) + "\n", overwrite=True)
        return ScanOutcome(source=path, status="failed", message=str(exc))
    except BrainSynthError as exc:
        return ScanOutcome(source=path, status="failed", message=str(exc))
    refusal.unlink(missing_ok=True)
    return outcome


def _init_worker(threads: int) -> None:
    from engine.preprocess.ants_io import set_threads

    set_threads(threads)


def preprocess_many(
    paths: Sequence[Path],
    out_dir: str | Path,
    *,
    settings: PreprocessSettings | None = None,
    jobs: int = 1,
    overwrite: bool = False,
) -> Iterator[ScanOutcome]:
    """Preprocess scans, ``jobs`` at a time, yielding each outcome as it finishes.

    Two inputs with the same name would write the same outputs: the second is failed at once.
    """
    settings = settings or PreprocessSettings()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BrainSynthError(f"{out_dir} is a file; --out must be a folder")
    if jobs < 1:
        raise BrainSynthError("--jobs must be at least 1")
    if settings.device == "cuda":
        from engine.device import resolve_device

        resolve_device("cuda")  # once for the batch, not once per scan
    claimed: dict[str, Path] = {}
    todo: list[Path] = []
    for path in paths:
        stem = strip_extension(path)
        if stem in claimed:
            yield ScanOutcome(
                source=path, status="failed", message=f"{claimed[stem]} has the same name ({stem}); rename one"
            )
            continue
        claimed[stem] = path
        todo.append(path)
    if jobs == 1 or len(todo) <= 1:
        _init_worker(settings.threads)
        for path in todo:
            yield _run_one(path, out_dir, settings, overwrite)
        return
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)),
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(settings.threads,),
    ) as pool:
        futures = [pool.submit(_run_one, path, out_dir, settings, overwrite) for path in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


@dataclass
class BatchResult:
    """A finished batch.

    Attributes:
        outcomes: one per input, in the order they finished.
        failed_csv: the failures file (header only when nothing failed).
        report: the QC report (Markdown, images in ``qc/``).
    """

    outcomes: list[ScanOutcome] = field(default_factory=list)
    failed_csv: Path | None = None
    report: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def run_preprocess(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    settings: PreprocessSettings | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int, ScanOutcome], None] | None = None,
) -> BatchResult:
    """Find the raw scans, preprocess them, write ``failed.csv`` and ``qc_report.md``.

    Args:
        inputs: files and folders (BIDS folders by ``*_T1w.nii*``).
        out_dir: output folder.
        settings: pipeline settings.
        jobs: scans processed at once (worker processes).
        overwrite: redo finished scans.
        progress: called with (finished, total, outcome) after each scan.

    Returns:
        The :class:`BatchResult`.
    """
    paths = find_raw_scans(inputs)
    out_dir = Path(out_dir)
    result = BatchResult()
    for outcome in preprocess_many(paths, out_dir, settings=settings, jobs=jobs, overwrite=overwrite):
        result.outcomes.append(outcome)
        if progress is not None:
            progress(len(result.outcomes), len(paths), outcome)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.failed_csv = write_failed_csv(out_dir / FAILED_CSV, result.outcomes)
    result.report = write_report(out_dir / REPORT_MD, result.outcomes)
    return result


def write_failed_csv(path: Path, outcomes: Sequence[ScanOutcome]) -> Path:
    """``input,reason`` for every failed scan (atomic)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "reason"])
    for outcome in outcomes:
        if outcome.status == "failed":
            writer.writerow([str(outcome.source), outcome.message])
    atomic_write_text(path, buffer.getvalue(), overwrite=True)
    return path


def write_report(path: Path, outcomes: Sequence[ScanOutcome]) -> Path:
    """The QC report over the batch's finished scans (done now or before), atomic."""
    from engine.preprocess.qc import report_markdown

    rows = []
    for outcome in sorted(outcomes, key=lambda o: str(o.source)):
        if outcome.record is None:
            continue
        record = outcome.record
        rows.append(
            {
                "name": record["name"],
                **record["metrics"],
                "notes": record.get("notes", []),
                "qc_png": record["outputs"]["qc_png"],
                "total_s": record.get("total_s", float("nan")),
            }
        )
    failed = [(o.source.name, o.message) for o in outcomes if o.status == "failed"]
    atomic_write_text(path, report_markdown(rows, failed=failed, title="BrainSynth preprocessing QC"), overwrite=True)
    return path


def load_record(sidecar: Path) -> dict:
    """A scan's sidecar (figures, timings, notes)."""
    return json.loads(Path(sidecar).read_text(encoding="utf-8"))
