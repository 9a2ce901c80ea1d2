"""``brainsynth-cli utility``: does training with synthetic scans help on held-out real scans?

Trains a small MONAI 3-D classifier (or regressor) on real scans only, on real + synthetic
scans at each ``--synthetic-ratio`` and on synthetic scans only, with the same architecture,
step budget and augmentation, and tests every arm on the same held-out real subjects.
Writes ``OUT/utility.json``, ``OUT/report.md``, PNG plots and ``OUT/runs/`` (one file per
finished run; a rerun with the same inputs skips them).

Exit status: 0 on success, 1 on an input problem (printed as one line, before any training).
"""

from __future__ import annotations

import argparse
import sys


def _sizes(text: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a whole number or 'all'") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one size (e.g. 4,8,16,all)")
    return tuple(out)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers (e.g. 1,2,4)") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one ratio (e.g. 1,2,4)")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``utility`` subcommand."""
    parser = subparsers.add_parser(
        "utility",
        help="does augmentation help? train real / real+synthetic / synthetic classifiers, test on held-out real scans",
        description=(
            "Measure whether synthetic volumes help a downstream model: a small MONAI 3-D classifier (or "
            "regressor) is trained on real scans only, on real plus synthetic scans (each --synthetic-ratio) and "
            "on synthetic scans only, with the same step budget and augmentation, and tested on held-out real "
            "subjects (split by subject, stratified by label, fixed per repeat). Reports ROC AUC and balanced "
            "accuracy (or MAE) with 95%% bootstrap intervals, paired differences against real only with p-values, "
            "and learning curves over --real-train-sizes. Real scans and synthetic volumes must share one model "
            "grid in standard space (brainsynth-cli prepare / sample)."
        ),
    )
    parser.add_argument(
        "--real",
        required=True,
        nargs="+",
        metavar="DIR_OR_CSV",
        help="real scans: folders, files or CSV manifests (labels from participants.tsv beside them or the manifest)",
    )
    parser.add_argument("--labels", metavar="TSV", help="a participants.tsv to label the real scans with instead")
    parser.add_argument(
        "--synthetic",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of synthetic volumes with their sidecars (labels from the conditions they were made with)",
    )
    parser.add_argument("--label", required=True, metavar="COLUMN", help="the label: a covariate column (e.g. group)")
    parser.add_argument("--positive", metavar="VALUE", help="the positive class of --label (classification; e.g. ftd)")
    parser.add_argument("--task", default="classify", choices=("classify", "regress"), help="default: classify")
    parser.add_argument(
        "--test-fraction", type=float, default=0.3, metavar="F", help="held-out real subjects per class (default 0.3)"
    )
    parser.add_argument(
        "--real-train-sizes",
        type=_sizes,
        default=(None,),
        metavar="N,N,...",
        help="real training subjects per learning-curve point, e.g. 4,8,16,all (default: all)",
    )
    parser.add_argument(
        "--synthetic-ratio",
        type=_ratios,
        default=(1.0,),
        metavar="R,R,...",
        help="synthetic volumes per real training subject in the real+synthetic arm, e.g. 1,2,4 (default 1)",
    )
    parser.add_argument("--no-synthetic-arm", action="store_true", help="skip the synthetic-only arm")
    parser.add_argument(
        "--repeats", type=int, default=3, metavar="R", help="test splits, each its own runs (default 3)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=20,
        metavar="E",
        help="step budget of every run, in passes over the largest real training set (default 20)",
    )
    parser.add_argument("--steps", type=int, metavar="S", help="step budget of every run (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="volumes per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="Adam learning rate (default 1e-3)")
    parser.add_argument("--width", type=int, default=8, metavar="C", help="first-level channels (default 8)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="validation share of each arm's training subjects, for early stopping (default 0.2)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of splits, weights and bootstrap")
    parser.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=[],
        metavar="FILE",
        help="the checkpoint(s) that made the synthetic volumes: their run's split.csv is checked against the test "
        "subjects",
    )
    parser.add_argument(
        "--no-leakage-check",
        action="store_true",
        help="do not check the generator's training subjects against the test set (the report says so)",
    )
    parser.add_argument(
        "--only-repeat",
        type=int,
        metavar="R",
        help="run repeat R (0-based) only and write no summary: one repeat per SLURM array task "
        "(--only-repeat $SLURM_ARRAY_TASK_ID, same --out, no --overwrite); the same command without it then "
        "writes the summary",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="discard the runs of another experiment in --out")
    parser.set_defaults(func=run)


class _Progress:
    """A tqdm bar over the runs on a terminal; one line per run otherwise (batch job logs)."""

    def __init__(self) -> None:
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, event) -> None:
        if event.stage == "training" and self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total, desc="runs", file=sys.stderr, dynamic_ncols=True)
            self.bar.n = event.done
            self.bar.set_postfix_str(event.message, refresh=True)
            return
        self.close()
        if event.message and not event.message.endswith(": training"):
            print(f"utility: {event.stage} {event.done}/{event.total}: {event.message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    """Run the experiment; print the headline figures."""
    from pathlib import Path

    from engine.utility.experiment import RESULT_FILE, UtilityOptions, run_experiment
    from engine.utility.report import arm_rows

    options = UtilityOptions(
        label=args.label,
        positive=args.positive,
        task=args.task,
        test_fraction=args.test_fraction,
        real_train_sizes=args.real_train_sizes,
        synthetic_ratios=args.synthetic_ratio,
        repeats=args.repeats,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        val_fraction=args.val_fraction,
        bootstrap=args.bootstrap,
        seed=args.seed,
        device=args.device,
        synthetic_arm=not args.no_synthetic_arm,
    )
    progress = _Progress()
    try:
        result = run_experiment(
            args.real,
            args.synthetic,
            options,
            out_dir=Path(args.out),
            labels_file=args.labels,
            checkpoints=args.checkpoint,
            waive_leakage_check=args.no_leakage_check,
            overwrite=args.overwrite,
            only_repeat=args.only_repeat,
            progress=progress,
        )
    finally:
        progress.close()
    if args.only_repeat is not None:
        print(f"repeat {args.only_repeat} done in {Path(args.out) / 'runs'}; rerun without --only-repeat to summarise")
        return 0
    names = result.summary["metrics"]
    for row in arm_rows(result.summary):
        figures = "; ".join(f"{n} {row[n]}" for n in names)
        diff = row[f"{names[0]}_difference"]
        extra = f" (vs real {diff}, p {row['p_value']})" if diff != "—" else ""
        print(f"{row['arm']}: {figures}{extra}")
    fidelity = result.summary.get("label_fidelity") or {}
    if (fidelity.get(names[0]) or {}).get("mean") is not None:
        print(f"real-only model on the synthetic volumes' conditions: {names[0]} {fidelity[names[0]]['mean']:.3f}")
    print(f"wrote {Path(args.out) / RESULT_FILE}, report.md and plots")
    return 0
