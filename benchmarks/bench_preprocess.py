"""Seconds per raw scan for `brainsynth-cli preprocess`, per step, with --jobs 1 and --jobs 2.

Usage: python benchmarks/bench_preprocess.py [--count 2] [--cores 2] [--registration affine]
                                             [--raw-dir DIR] [--keep DIR] [--out results.json]

The scans are `demo-data --raw` subjects at full resolution (1 x 1.2 x 1 mm, about 230 x 265 x
190 voxels, scalp and skull around the brain), or your own raw scans with --raw-dir. Each
configuration runs in a fresh output folder (nothing cached) with the full settings (not the
tests' fast ones): --jobs 1 with --cores threads per scan, then --jobs 2 with --cores/2 threads
each. Reported: per-step seconds (median over scans, from each scan's sidecar), wall seconds per
scan for the whole batch, peak resident memory of one worker, and for demo subjects the
agreement with the ground truth (correlation over the MNI box, mask Dice).

Timings on a shared machine vary with what else runs: the load average before and after is
printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = ("load", "brain_extraction", "denoise", "bias_field", "registration", "resample", "normalise", "write")


def _agreement(out_dir: Path, truth_dir: Path) -> list[dict]:
    import nibabel as nib

    rows = []
    for sidecar in sorted(out_dir.glob("*.json")):
        record = json.loads(sidecar.read_text())
        truth = truth_dir / f"{record['name']}.nii.gz"
        if not truth.exists():
            continue
        scan = np.asarray(nib.load(out_dir / record["outputs"]["scan"]).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(out_dir / record["outputs"]["mask"]).dataobj) > 0
        gt = np.asarray(nib.load(truth).dataobj, dtype=np.float32)
        gt_mask = gt > 0
        rows.append(
            {
                "name": record["name"],
                "correlation_box": float(np.corrcoef(scan.ravel(), gt.ravel())[0, 1]),
                "correlation_brain": float(np.corrcoef(scan[gt_mask], gt[gt_mask])[0, 1]),
                "dice": float(2 * (mask & gt_mask).sum() / (mask.sum() + gt_mask.sum())),
            }
        )
    return rows


def _run(raw: Path, out_dir: Path, *, jobs: int, threads: int, registration: str) -> dict:
    from engine.preprocess import PreprocessSettings, run_preprocess

    settings = PreprocessSettings(threads=threads, registration=registration)
    start = time.perf_counter()
    result = run_preprocess([raw], out_dir, settings=settings, jobs=jobs)
    wall = time.perf_counter() - start
    records = [o.record for o in result.outcomes if o.record is not None]
    failed = [f"{o.source.name}: {o.message}" for o in result.outcomes if o.status == "failed"]
    per_step = {
        step: statistics.median(r["seconds"].get(step, 0.0) for r in records) if records else float("nan")
        for step in STEPS
    }
    return {
        "jobs": jobs,
        "threads_per_job": threads,
        "scans": len(result.outcomes),
        "done": len(records),
        "failed": failed,
        "wall_s": round(wall, 1),
        "wall_s_per_scan": round(wall / max(1, len(result.outcomes)), 1),
        "median_scan_s": round(statistics.median(r["total_s"] for r in records), 1) if records else None,
        "median_step_s": {k: round(v, 2) for k, v in per_step.items()},
        "metrics": [{"name": r["name"], **r["metrics"]} for r in records],
        # Children's peak RSS covers the --jobs 2 workers; for --jobs 1 the run is in this process.
        "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_mb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2, help="demo subjects (default 2)")
    parser.add_argument("--cores", type=int, default=2, help="cores to use in all (default 2)")
    parser.add_argument("--registration", choices=("affine", "syn"), default="affine")
    parser.add_argument("--raw-dir", help="your own raw scans instead of demo subjects")
    parser.add_argument("--keep", help="keep the outputs in this folder")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    load_before = os.getloadavg()
    try:
        if args.raw_dir:
            raw, truth = Path(args.raw_dir), None
        else:
            from engine.demo_data import build_population

            truth = work / "demo"
            build_population(truth, count=args.count, seed=11, raw=True, overwrite=True)
            raw = truth / "raw"
        runs = []
        for jobs in (1, 2):
            out_dir = work / f"jobs{jobs}"
            shutil.rmtree(out_dir, ignore_errors=True)
            run = _run(raw, out_dir, jobs=jobs, threads=max(1, args.cores // jobs), registration=args.registration)
            if truth is not None:
                run["agreement"] = _agreement(out_dir, truth)
            runs.append(run)
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (shared machine: figures vary)")
    print("jobs x threads | wall s/scan | median scan s | " + " | ".join(STEPS))
    for run in runs:
        steps = " | ".join(f"{run['median_step_s'][s]:.1f}" for s in STEPS)
        head = f"{run['jobs']} x {run['threads_per_job']} | {run['wall_s_per_scan']:.1f} | {run['median_scan_s']}"
        print(f"{head} | {steps}")
        for row in run.get("agreement", []):
            print(
                f"    {row['name']}: correlation {row['correlation_box']:.3f} (box), "
                f"{row['correlation_brain']:.3f} (brain), Dice {row['dice']:.3f}"
            )
        for line in run["failed"]:
            print(f"    refused {line}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"load_before": load_before, "load_after": load_after, "runs": runs}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
