"""``brainsynth-cli preprocess``: raw T1 scans to MNI-space, skull-stripped model input.

Examples::

    brainsynth-cli preprocess raw/ --out preprocessed/ --jobs 2
    brainsynth-cli preprocess bids_dataset/ --out derivatives/brainsynth --registration syn
    brainsynth-cli prepare preprocessed/ --out prepared/

Refused scans get one line on stderr and in ``DIR/failed.csv``; the exit status is then 1.
Finished scans are skipped when the command is run again (resumable).
"""

from __future__ import annotations

import argparse
import sys


def add_pipeline_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The pipeline options (shared with ``prepare --preprocess`` and ``train --preprocess``)."""
    from engine.preprocess.pipeline import SKIPPABLE

    parser.add_argument(
        f"--{prefix}jobs", dest="pp_jobs", type=int, default=1, metavar="N", help="scans at once (default 1)"
    )
    parser.add_argument(
        f"--{prefix}threads-per-job",
        dest="pp_threads",
        type=int,
        default=None,
        metavar="T",
        help="compute threads per scan (default: CPU cores / jobs)",
    )
    parser.add_argument(
        f"--{prefix}registration",
        dest="pp_registration",
        choices=("affine", "syn"),
        default="affine",
        help="affine (the reference study's, default) or syn (affine, then deformable)",
    )
    parser.add_argument(
        f"--{prefix}skip",
        dest="pp_skip",
        action="append",
        choices=SKIPPABLE,
        default=[],
        help="leave out a step (repeatable)",
    )
    parser.add_argument(
        f"--{prefix}device",
        dest="pp_device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device for brain extraction (default cpu)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``preprocess`` subcommand."""
    parser = subparsers.add_parser(
        "preprocess",
        help="raw T1 scans -> denoised, bias-corrected, MNI-registered, skull-stripped (needs [preprocess])",
        description=(
            "The reference study's preprocessing, offline: adaptive non-local means denoising, N4 bias-field "
            "correction and affine registration to the MNI152 2009a template (ANTs), brain extraction "
            "(deepbet), intensity normalisation within the brain (background 0), in the 181 x 217 x 181 "
            "1 mm MNI box. Writes per scan <name>.nii.gz, <name>.json, masks/, transforms/, qc/, plus "
            "qc_report.md and failed.csv into --out. Needs: pip install 'brainsynth[preprocess]'."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RAW",
        help="scan files (.nii, .nii.gz, .mgh, .mgz) or folders (BIDS: *_T1w.nii* below them)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    add_pipeline_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="redo scans that are finished already")
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    """The :class:`engine.preprocess.PreprocessSettings` the options ask for."""
    import os

    from engine.preprocess import PreprocessSettings

    jobs = max(1, int(args.pp_jobs))
    # The cores this process may use (a SLURM allocation or taskset), not all of the node's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.pp_threads if args.pp_threads is not None else max(1, cores // jobs)
    return PreprocessSettings(
        registration=args.pp_registration,
        skip=tuple(dict.fromkeys(args.pp_skip)),
        device=args.pp_device,
        threads=threads,
    )


def run_pipeline(inputs, out_dir, args: argparse.Namespace, *, overwrite: bool = False):
    """Run the batch with a progress bar on a terminal and one stderr line per refused scan."""
    from engine.preprocess import run_preprocess

    settings = settings_from(args)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="scan", desc="preprocess", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int, outcome) -> None:
        if outcome.status == "failed":
            line = f"refused {outcome.source}: {outcome.message}"
            if outcome.remembered:
                line += " (refused before; --overwrite tries again)"
            (bar.write(line, file=sys.stderr) if bar is not None else print(line, file=sys.stderr, flush=True))
        if bar is not None:
            bar.total = total
            bar.set_postfix_str(f"{outcome.source.name} {outcome.status}", refresh=False)
            bar.update(1)

    try:
        return run_preprocess(
            inputs, out_dir, settings=settings, jobs=int(args.pp_jobs), overwrite=overwrite, progress=progress
        )
    finally:
        if bar is not None:
            bar.close()


def run(args: argparse.Namespace) -> int:
    """Preprocess every input; return the exit status."""
    from engine.errors import BrainSynthError

    result = run_pipeline(args.inputs, args.out, args, overwrite=args.overwrite)
    done, cached, failed = result.count("done"), result.count("cached"), result.count("failed")
    total = len(result.outcomes)
    if done + cached == 0:
        raise BrainSynthError(
            f"none of the {total} scan{'s' if total != 1 else ''} could be preprocessed (reasons above and in "
            f"{result.failed_csv})"
        )
    print(
        f"preprocessed {done + cached} of {total} scans into {args.out} ({cached} already done); "
        f"QC report: {result.report}" + (f"; {failed} refused, see {result.failed_csv}" if failed else "")
    )
    return 1 if failed else 0


def preprocessed_scans(inputs, out_dir, args: argparse.Namespace) -> list:
    """``prepare/train --preprocess``: preprocess the raw inputs (cached) and return the finished scans."""
    from pathlib import Path

    from engine.errors import BrainSynthError

    result = run_pipeline(inputs, out_dir, args)
    scans = [Path(out_dir) / o.record["outputs"]["scan"] for o in result.outcomes if o.record is not None]
    if not scans:
        raise BrainSynthError(f"none of the raw scans could be preprocessed (reasons above and in {result.failed_csv})")
    print(f"preprocessed {len(scans)} of {len(result.outcomes)} raw scans into {out_dir}", flush=True)
    return scans


def preprocess_train_data(args: argparse.Namespace) -> None:
    """``train --preprocess``: replace ``args.data`` by the preprocessed scans; drop the pipeline options."""
    from pathlib import Path

    from engine.errors import BrainSynthError

    wanted = getattr(args, "preprocess", False)
    options = {k: vars(args).pop(k) for k in [k for k in vars(args) if k.startswith("pp_")]}
    vars(args).pop("preprocess", None)
    if not wanted:
        return
    if not getattr(args, "data", None) or not getattr(args, "out", None):
        raise BrainSynthError("--preprocess needs --data (the raw scans) and --out (the run directory)")
    for path in args.data:
        if str(path).lower().endswith(".csv"):
            raise BrainSynthError(f"--preprocess takes folders or scan files, not a manifest ({path})")
    scans = preprocessed_scans(args.data, Path(args.out) / "preprocessed", argparse.Namespace(**options))
    args.data = [str(p) for p in scans]
