"""The utility experiment: options, checks, the plan of runs, resumable execution, the summary.

Everything that can be wrong with the input is checked before the first step (labels, classes,
split sizes, grids, enough synthetic volumes, leakage). Then each run (one arm, one real
training size, one ratio, one repeat) trains and predicts its repeat's test subjects, and its
result is written atomically to ``OUT/runs/<key>.json`` with the experiment's fingerprint (the
options and the files' contents): a rerun skips the runs already there, so an interrupted
experiment continues where it stopped, and the figures come out the same.

Arms (the same network, budget, batch size, learning rate and augmentation):

* ``real``: the real training subjects of the size (validation subjects carved from them);
* ``real+synthetic`` at ratio r: the same real subjects and validation subjects, plus
  ``r × size`` synthetic volumes with the real subjects' class balance (nested across r);
* ``synthetic``: every synthetic volume (validation volumes carved from them), once per repeat.

A check of the synthetic labels rides along: each ``real`` run's final network also scores
every synthetic volume against the condition it was generated with (``on_synthetic`` in the
run; ``label_fidelity`` in the summary, from the largest real size). A generator whose
volumes do not show the label as real scans show it gives about 0.5 there, and then a
synthetic-only model has nothing to transfer: its figure on real scans is chance, or, on
few test subjects, anything from 0 to 1 (issue 18's smoke run: 0.000 on 6 subjects).

:func:`iter_experiment` is a generator of :class:`UtilityProgress` events (a GUI can cancel
between them) returning the :class:`UtilityResult`; :func:`run_experiment` drives it with a
callback.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine import __version__
from engine.utility import splits
from engine.utility.data import (
    TASKS,
    LabelledScan,
    assign_targets,
    check_intensity_scales,
    load_arrays,
    real_scans,
    synthetic_scans,
)
from engine.utility.errors import UtilityError
from engine.utility.leakage import LeakageReport, check_leakage
from engine.utility.stats import (
    HIGHER_IS_BETTER,
    METRICS,
    RepeatPredictions,
    bootstrap_draws,
    interval,
    metric,
    paired_difference,
)

RESULT_FORMAT = "brainsynth-utility"
RESULT_FORMAT_VERSION = 1
RUNS_DIR = "runs"
RESULT_FILE = "utility.json"
REPORT_FILE = "report.md"


@dataclass(frozen=True)
class UtilityOptions:
    """What an experiment asks for (the flags of ``brainsynth-cli utility``).

    Attributes:
        label: the label column (participants.tsv / manifest) and condition name (sidecars).
        positive: the positive class (classification).
        task: ``"classify"`` or ``"regress"``.
        test_fraction: share of real subjects held out per stratum.
        real_train_sizes: real training subjects per learning-curve point; None = all.
        synthetic_ratios: synthetic volumes per real training subject in ``real+synthetic``.
        repeats: test splits (each with its own runs).
        epochs: the budget, in passes over the largest real training set asked for.
        steps: the budget in optimizer steps (overrides ``epochs`` when set).
        batch_size: volumes per step.
        lr: Adam learning rate.
        width: the network's first-level channels.
        val_fraction: validation share of an arm's training subjects (early stopping).
        bootstrap: bootstrap resamples for the intervals.
        seed: the seed of everything (splits, weights, batches, bootstrap).
        device: torch device (``auto``, ``cpu``, ``cuda``...).
        synthetic_arm: whether to train the synthetic-only arm.
    """

    label: str
    positive: str | None = None
    task: str = "classify"
    test_fraction: float = 0.3
    real_train_sizes: tuple[int | None, ...] = (None,)
    synthetic_ratios: tuple[float, ...] = (1.0,)
    repeats: int = 3
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 8
    val_fraction: float = 0.2
    bootstrap: int = 1000
    seed: int = 0
    device: str = "auto"
    synthetic_arm: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UtilityError(f"--task must be classify or regress (got {self.task!r})")
        if self.repeats < 1:
            raise UtilityError(f"--repeats must be at least 1 (got {self.repeats})")
        if self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise UtilityError("--epochs and --steps must be at least 1")
        if self.batch_size < 1 or self.width < 1 or self.bootstrap < 10:
            raise UtilityError("--batch-size and --width must be at least 1 and --bootstrap at least 10")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UtilityError(f"--val-fraction must be in [0, 1) (got {self.val_fraction:g})")
        if any(r <= 0 for r in self.synthetic_ratios):
            raise UtilityError("--synthetic-ratio values must be above 0")
        if any(s is not None and s < 2 for s in self.real_train_sizes):
            raise UtilityError("--real-train-sizes values must be at least 2 (or 'all')")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UtilityProgress:
    """One progress event: ``stage`` ("loading", "training", "summarising"), counts, a line."""

    stage: str
    done: int
    total: int
    message: str = ""


@dataclass
class UtilityResult:
    """The experiment's outcome: the ``utility.json`` document and where it was written."""

    summary: dict
    out_dir: Path
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class RunPlan:
    """One run: its key, arm, real size, ratio, repeat and the scans on each side."""

    key: str
    arm: str
    repeat: int
    size: int | None
    ratio: float | None
    train: tuple[LabelledScan, ...]
    val: tuple[LabelledScan, ...]
    n_real: int
    n_synthetic: int


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def _ratio_text(r: float) -> str:
    return f"{r:g}"


def _scans(subjects: Sequence[splits.Subject]) -> tuple[LabelledScan, ...]:
    return tuple(scan for s in subjects for scan in s.scans)


@dataclass
class _Prepared:
    options: UtilityOptions
    real: list[LabelledScan]
    synthetic: list[LabelledScan]
    shape: tuple[int, int, int]
    tests: list[list[splits.Subject]]
    plans: list[RunPlan]
    sizes: list[int]
    steps: int
    leakage: LeakageReport
    fingerprint: str
    sources: dict
    #: Median brain level (99.5th percentile, standard / scale) of the real and synthetic inputs.
    intensity_levels: dict = field(default_factory=dict)


def prepare_experiment(
    real_sources: Sequence[str | os.PathLike],
    synthetic_sources: Sequence[str | os.PathLike],
    options: UtilityOptions,
    *,
    labels_file: str | os.PathLike | None = None,
    checkpoints: Sequence[str | os.PathLike] = (),
    waive_leakage_check: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> _Prepared:
    """Every check and the whole plan, before any training.

    Raises:
        UtilityError: labels missing, one class only, a test set too small, grids that differ,
            synthetic sidecars without the label, too few synthetic volumes, or leakage.
    """
    real = real_scans(real_sources, label=options.label, labels_file=labels_file)
    synthetic = synthetic_scans(synthetic_sources, label=options.label) if synthetic_sources else []
    assign_targets(real + synthetic, task=options.task, positive=options.positive, label=options.label)
    real_subjects = splits.group_subjects(real, task=options.task)
    splits.check_split_sizes(real_subjects, task=options.task, test_fraction=options.test_fraction)
    synthetic_subjects = splits.group_subjects(synthetic, task=options.task)
    if options.task == "classify" and synthetic and options.synthetic_arm:
        classes = {s.stratum for s in synthetic_subjects}
        if len(classes) < 2:
            raise UtilityError(
                f"the synthetic volumes hold one class only ({', '.join(classes)}); the synthetic-only arm needs "
                f"both: generate volumes with --condition {options.label}={options.positive} and another value"
            )

    tests: list[list[splits.Subject]] = []
    plans: list[RunPlan] = []
    sizes: list[int] = []
    pools = []
    for repeat in range(options.repeats):
        pool, test = splits.held_out_split(
            real_subjects, test_fraction=options.test_fraction, seed=options.seed, repeat=repeat
        )
        tests.append(test)
        pools.append(pool)
    pool_size = len(pools[0])
    sizes = sorted({pool_size if s is None else s for s in options.real_train_sizes})
    # The budget: `epochs` passes over the largest real training set asked for, the same for every arm.
    largest_scans = len(
        _scans(splits.training_subset(splits.training_order(pools[0], seed=options.seed, repeat=0), sizes[-1]))
    )
    steps = options.steps or max(1, options.epochs * math.ceil(largest_scans / options.batch_size))
    for repeat, pool in enumerate(pools):
        ordered = splits.training_order(pool, seed=options.seed, repeat=repeat)
        for size in sizes:
            chosen = splits.training_subset(ordered, size)
            train, val = splits.validation_split(
                chosen, val_fraction=options.val_fraction, seed=options.seed, salt=f"{repeat}:{size}"
            )
            plans.append(
                RunPlan(
                    f"repeat{repeat}_n{size}_real",
                    "real",
                    repeat,
                    size,
                    None,
                    _scans(train),
                    _scans(val),
                    len(_scans(chosen)),
                    0,
                )
            )
            if not synthetic:
                continue
            for ratio in options.synthetic_ratios:
                count = max(1, round(ratio * size))
                extra = splits.pick_synthetic(
                    synthetic_subjects, like=chosen, count=count, seed=options.seed, salt=f"{repeat}:{size}"
                )
                plans.append(
                    RunPlan(
                        f"repeat{repeat}_n{size}_real+synthetic_x{_ratio_text(ratio)}",
                        "real+synthetic",
                        repeat,
                        size,
                        ratio,
                        _scans(train) + _scans(extra),
                        _scans(val),
                        len(_scans(chosen)),
                        len(extra),
                    )
                )
        if synthetic and options.synthetic_arm:
            train, val = splits.validation_split(
                synthetic_subjects, val_fraction=options.val_fraction, seed=options.seed, salt=f"{repeat}:synthetic"
            )
            plans.append(
                RunPlan(
                    f"repeat{repeat}_synthetic",
                    "synthetic",
                    repeat,
                    None,
                    None,
                    _scans(train),
                    _scans(val),
                    0,
                    len(synthetic),
                )
            )

    test_scans = [scan for test in tests for subject in test for scan in subject.scans]
    leakage = check_leakage(synthetic, test_scans, checkpoints=checkpoints, waive=waive_leakage_check)
    shape = load_arrays(real + synthetic, progress=progress)
    intensity_levels = check_intensity_scales(real + synthetic)
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "options": {k: v for k, v in options.to_dict().items() if k not in ("device", "bootstrap")},
                "real": sorted((s.sha256, s.subject, s.label) for s in real),
                "synthetic": sorted((s.sha256, s.label) for s in synthetic),
                "engine": __version__,
                "format": RESULT_FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    sources = {
        "real": [str(Path(p)) for p in real_sources],
        "labels": str(labels_file) if labels_file else None,
        "synthetic": [str(Path(p)) for p in synthetic_sources],
        "checkpoints": [str(Path(p)) for p in checkpoints],
    }
    return _Prepared(
        options, real, synthetic, shape, tests, plans, sizes, steps, leakage, fingerprint, sources, intensity_levels
    )


def _run_file(out_dir: Path, key: str) -> Path:
    return out_dir / RUNS_DIR / f"{key}.json"


def _read_run(path: Path, fingerprint: str) -> dict | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a damaged file is trained again (writes are atomic, so this is rare)
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        raise UtilityError(
            f"{path} belongs to another experiment (other scans or options); use another --out, or start this "
            "one afresh with --overwrite"
        )
    return saved


def check_target(out_dir: Path, fingerprint: str, *, overwrite: bool) -> None:
    """Refuse an ``--out`` holding another experiment's runs (or clear them with ``overwrite``)."""
    runs = out_dir / RUNS_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise UtilityError(f"{out_dir} is a file; --out must be a folder")
    if not runs.is_dir():
        return
    for path in sorted(runs.glob("*.json")):
        if overwrite:
            path.unlink()
        else:
            _read_run(path, fingerprint)


def _subject_predictions(test: Sequence[splits.Subject], scans: Sequence[LabelledScan], values: Sequence[float]):
    by_path = {str(s.path): v for s, v in zip(scans, values, strict=True)}
    return [float(np.mean([by_path[str(scan.path)] for scan in subject.scans])) for subject in test]


def iter_experiment(
    real_sources: Sequence[str | os.PathLike],
    synthetic_sources: Sequence[str | os.PathLike],
    options: UtilityOptions,
    *,
    out_dir: str | os.PathLike,
    labels_file: str | os.PathLike | None = None,
    checkpoints: Sequence[str | os.PathLike] = (),
    waive_leakage_check: bool = False,
    overwrite: bool = False,
    write_outputs: bool = True,
    cancel: Callable[[], bool] | None = None,
    only_repeat: int | None = None,
) -> Generator[UtilityProgress, None, UtilityResult]:
    """Run the experiment; yields progress, returns the result (see the module docstring).

    ``cancel`` is asked every few training steps; when it answers True the run in progress
    stops with :class:`~engine.errors.CancelledError` (finished runs stay saved, so a rerun
    continues). Between runs a consumer can also simply stop iterating.

    ``only_repeat`` runs that repeat's runs alone and writes no summary (``summary`` is then
    empty): one repeat per SLURM array task, all into one ``out_dir``; the same call without
    it afterwards finds every run done and writes the summary.

    Raises:
        UtilityError: any bad input, before the first step.
        DeviceError: a device that is not on this machine.
    """
    from engine.atomic import atomic_write_text
    from engine.device import resolve_device
    from engine.errors import CancelledError, DeviceError
    from engine.utility.classifier import TrainSettings, train_and_predict

    out = Path(out_dir)
    try:
        device = resolve_device(options.device)
    except DeviceError as exc:
        raise UtilityError(f"--device: {exc}") from None
    yield UtilityProgress("loading", 0, 1, "checking labels, splits and provenance")
    loaded: list[tuple[int, int]] = []
    prepared = prepare_experiment(
        real_sources,
        synthetic_sources,
        options,
        labels_file=labels_file,
        checkpoints=checkpoints,
        waive_leakage_check=waive_leakage_check,
        progress=lambda d, t: loaded.append((d, t)),
    )
    yield UtilityProgress("loading", 1, 1, f"{len(prepared.real)} real, {len(prepared.synthetic)} synthetic volumes")
    check_target(out, prepared.fingerprint, overwrite=overwrite)
    settings = TrainSettings(
        steps=prepared.steps, batch_size=options.batch_size, lr=options.lr, width=options.width, device=str(device)
    )

    def check_cancel(step: int, steps: int) -> None:
        if cancel is not None and cancel():
            raise CancelledError("cancelled; the finished runs are kept and a rerun continues from them")

    results: dict[str, dict] = {}
    if only_repeat is not None and not 0 <= only_repeat < options.repeats:
        raise UtilityError(f"--only-repeat must be from 0 to {options.repeats - 1} (got {only_repeat})")
    plans = [p for p in prepared.plans if only_repeat is None or p.repeat == only_repeat]
    total = len(plans)
    for done, plan in enumerate(plans):
        path = _run_file(out, plan.key)
        saved = _read_run(path, prepared.fingerprint) if path.is_file() else None
        if saved is not None:
            results[plan.key] = saved
            yield UtilityProgress("training", done + 1, total, f"{plan.key}: done earlier")
            continue
        yield UtilityProgress("training", done, total, f"{plan.key}: training")
        test = prepared.tests[plan.repeat]
        test_scans = _scans(test)
        started = time.perf_counter()
        outcome = train_and_predict(
            train_x=np.stack([s.array for s in plan.train]),
            train_y=np.array([s.target for s in plan.train]),
            val_x=np.stack([s.array for s in plan.val]) if plan.val else np.zeros((0, *prepared.shape), np.float32),
            val_y=np.array([s.target for s in plan.val]),
            test_x=np.stack([s.array for s in test_scans]),
            task=options.task,
            settings=settings,
            init_seed=_seed(options.seed, plan.repeat, "init"),
            data_seed=_seed(options.seed, plan.key, "data"),
            report=check_cancel,
            extra_x=np.stack([s.array for s in prepared.synthetic])
            if plan.arm == "real" and prepared.synthetic
            else None,
        )
        predictions = _subject_predictions(test, test_scans, outcome.predictions)
        targets = [s.target for s in test]
        record = {
            "fingerprint": prepared.fingerprint,
            "key": plan.key,
            "arm": plan.arm,
            "repeat": plan.repeat,
            "real_train_size": plan.size,
            "ratio": plan.ratio,
            "n_train": len(plan.train),
            "n_val": len(plan.val),
            "n_real": plan.n_real,
            "n_synthetic": plan.n_synthetic,
            "steps_budget": prepared.steps,
            "steps_run": outcome.steps_run,
            "best_step": outcome.best_step,
            "best_val_loss": outcome.best_val_loss,
            "seconds": round(time.perf_counter() - started, 2),
            "device": str(device),
            "test_subjects": [s.key for s in test],
            "targets": targets,
            "predictions": predictions,
            "metrics": {
                name: _finite(metric(name, np.array(targets), np.array(predictions))) for name in METRICS[options.task]
            },
        }
        if outcome.extra_predictions:
            labels = np.array([s.target for s in prepared.synthetic])
            record["on_synthetic"] = {
                name: _finite(metric(name, labels, np.array(outcome.extra_predictions)))
                for name in METRICS[options.task]
            }
        atomic_write_text(path, json.dumps(record, indent=1), overwrite=True)
        results[plan.key] = record
        yield UtilityProgress("training", done + 1, total, f"{plan.key}: {_describe(record, options.task)}")
    if only_repeat is not None:
        return UtilityResult(summary={}, out_dir=out)
    yield UtilityProgress("summarising", 0, 1, "bootstrap intervals")
    summary = summarise(prepared, results)
    files: list[Path] = []
    if write_outputs:
        from engine.utility.report import write_outputs as write_all

        files = write_all(out, summary)
    yield UtilityProgress("summarising", 1, 1, "done")
    return UtilityResult(summary=summary, out_dir=out, files=files)


def run_experiment(*args, progress: Callable[[UtilityProgress], None] | None = None, **kwargs) -> UtilityResult:
    """:func:`iter_experiment` driven to the end; ``progress`` receives each event."""
    generator = iter_experiment(*args, **kwargs)
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _describe(record: dict, task: str) -> str:
    parts = [f"{k} {v:.3f}" for k, v in record["metrics"].items() if v is not None]
    return ", ".join(parts) + f" ({record['steps_run']} steps, {record['seconds']:.0f} s)"


def _arm_summary(name_list, runs: list[dict], draws) -> tuple[dict, list[RepeatPredictions]]:
    preds = [RepeatPredictions(np.array(r["targets"]), np.array(r["predictions"])) for r in runs]
    out: dict = {name: interval(name, preds, draws).to_dict() for name in name_list}
    out["runs"] = [
        {
            k: r[k]
            for k in (
                "key",
                "repeat",
                "n_train",
                "n_val",
                "n_real",
                "n_synthetic",
                "steps_run",
                "best_step",
                "seconds",
                "metrics",
            )
        }
        for r in runs
    ]
    return out, preds


def summarise(prepared: _Prepared, results: dict[str, dict]) -> dict:
    """The ``utility.json`` document from the runs' results (see :mod:`engine.utility.report`)."""
    from engine.export import now_iso

    options = prepared.options
    names = METRICS[options.task]
    primary = names[0]
    draws = bootstrap_draws(
        [len(t) for t in prepared.tests], n_boot=options.bootstrap, seed=_seed(options.seed, "boot")
    )

    def runs_of(arm: str, size: int | None, ratio: float | None) -> list[dict]:
        picked = [results[p.key] for p in prepared.plans if p.arm == arm and p.size == size and p.ratio == ratio]
        return sorted(picked, key=lambda r: r["repeat"])

    def differences(preds, reference) -> dict:
        return {name: paired_difference(name, preds, reference, draws).to_dict() for name in names}

    curve: list[dict] = []
    largest = prepared.sizes[-1]
    arms: dict[str, dict] = {}
    by_ratio: dict[str, dict] = {}
    for size in prepared.sizes:
        real_summary, real_preds = _arm_summary(names, runs_of("real", size, None), draws)
        curve.append({"real_train_size": size, "arm": "real", "ratio": None, **real_summary})
        if size == largest:
            arms["real"] = real_summary
        if not prepared.synthetic:
            continue
        for ratio in options.synthetic_ratios:
            summary, preds = _arm_summary(names, runs_of("real+synthetic", size, ratio), draws)
            summary["ratio"] = ratio
            summary["difference_vs_real"] = differences(preds, real_preds)
            curve.append({"real_train_size": size, "arm": "real+synthetic", **summary})
            if size == largest:
                by_ratio[_ratio_text(ratio)] = summary
        if size == largest and options.synthetic_arm:
            summary, preds = _arm_summary(names, runs_of("synthetic", None, None), draws)
            summary["difference_vs_real"] = differences(preds, real_preds)
            summary["n_synthetic"] = len(prepared.synthetic)
            arms["synthetic"] = summary
    if by_ratio:
        arms["real+synthetic"] = by_ratio[_ratio_text(options.synthetic_ratios[0])]
    fidelity = _label_fidelity(runs_of("real", largest, None), names) if prepared.synthetic else None
    _add_worth(curve, primary)
    counts: dict[str, int] = {}
    for scan in prepared.real:
        counts[scan.label] = counts.get(scan.label, 0) + 1
    synthetic_counts: dict[str, int] = {}
    for scan in prepared.synthetic:
        synthetic_counts[scan.label] = synthetic_counts.get(scan.label, 0) + 1
    return {
        "format": RESULT_FORMAT,
        "format_version": RESULT_FORMAT_VERSION,
        "software_version": __version__,
        "created": now_iso(),
        "task": options.task,
        "label": options.label,
        "positive": options.positive,
        "metrics": list(names),
        "primary_metric": primary,
        "higher_is_better": {n: HIGHER_IS_BETTER[n] for n in names},
        "parameters": {
            **options.to_dict(),
            "real_train_sizes": prepared.sizes,
            "steps_per_run": prepared.steps,
            "grid_shape": list(prepared.shape),
            "real_scans": len(prepared.real),
            "real_subjects": len({s.subject for s in prepared.real}),
            "real_labels": counts,
            "synthetic_volumes": len(prepared.synthetic),
            "synthetic_labels": synthetic_counts,
            "input_brain_level": prepared.intensity_levels,
            "test_subjects_per_repeat": [len(t) for t in prepared.tests],
            "sources": prepared.sources,
            "fingerprint": prepared.fingerprint,
            "interval": "95 % percentile bootstrap over test subjects and repeats",
            "p_value": "two-sided paired bootstrap (same draws for both arms)",
        },
        "leakage_check": prepared.leakage.to_dict(),
        "test_subjects": [[s.key for s in t] for t in prepared.tests],
        "arms": arms,
        "arms_by_ratio": by_ratio,
        "label_fidelity": fidelity,
        "learning_curve": curve,
    }


def _label_fidelity(runs: list[dict], names: Sequence[str]) -> dict | None:
    """How the real-only model (largest size) scores the synthetic volumes against their
    conditions: each metric's mean over repeats and the per-repeat values (None for runs saved
    before this check existed)."""
    per = [r.get("on_synthetic") for r in runs]
    if not any(per):
        return None
    out: dict = {"real_train_size": runs[0]["real_train_size"] if runs else None}
    for name in names:
        values = [p.get(name) if p else None for p in per]
        finite = [v for v in values if v is not None]
        out[name] = {"mean": float(np.mean(finite)) if finite else None, "per_repeat": values}
    return out


def _add_worth(curve: list[dict], primary: str) -> None:
    """For each augmented point, the real training size whose real-only figure it matches
    (linear interpolation of the real-only curve; None outside the measured range)."""
    real = [(c["real_train_size"], c[primary]["mean"]) for c in curve if c["arm"] == "real"]
    real = [(n, v) for n, v in real if v is not None]
    for c in curve:
        if c["arm"] != "real+synthetic":
            continue
        value = c[primary]["mean"]
        c["equivalent_real_size"] = (
            _inverse(real, value, higher=HIGHER_IS_BETTER[primary]) if value is not None else None
        )


def _inverse(points: list[tuple[int, float]], value: float, *, higher: bool) -> float | None:
    # Only where more real subjects did better: on a segment where the real-only figure got
    # worse with more subjects (noise on small sets), matching it would read a worse
    # augmented figure as "worth" more real subjects.
    for (n0, v0), (n1, v1) in itertools.pairwise(points):
        improves = v1 > v0 if higher else v1 < v0
        lo, hi = (v0, v1) if v0 <= v1 else (v1, v0)
        if improves and lo <= value <= hi:
            return float(n0 + (value - v0) * (n1 - n0) / (v1 - v0))
    if len(points) == 1 and value == points[0][1]:
        return float(points[0][0])
    return None
