"""``brainsynth-cli evaluate``: the reference study's metrics (and more) for a synthetic set.

Writes into ``--out``: ``evaluation.json`` (every figure with its parameters), ``report.md``
(the reference study's Table 1 — MMD, FID, MS-SSIM real vs synthetic — then per-tissue
histograms, brain volumes and the memorisation check) and PNG figures.

Exit status: 0 on success, 1 on an input problem (printed as one line).
"""

from __future__ import annotations

import argparse
import sys

from engine.precision import PRECISION_CHOICES

FID_WEIGHTS_HELP = (
    "MedicalNet 3-D ResNet weights for the FID, downloaded once by you: resnet_10_23dataset.pth or "
    "resnet_50_23dataset.pth from https://github.com/Tencent/MedicalNet (release files) or "
    "https://huggingface.co/TencentMedicalNet (MedicalNet-Resnet10 / MedicalNet-Resnet50). "
    "Nothing is downloaded at run time; without this option FID is reported as unavailable."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="compare synthetic volumes with real ones (MMD, FID, MS-SSIM, histograms, memorisation)",
        description=(
            "Compare a folder of synthetic volumes with a folder of real scans, both in BrainSynth standard "
            "space on one grid (prepared with 'brainsynth-cli prepare', exported by 'brainsynth-cli sample'). "
            "Computes the reference study's unbiased MMD, 3-D FID and MS-SSIM, plus per-tissue intensity "
            "histograms, brain volumes and, with --train, a check for near copies of training scans. "
            "Writes evaluation.json, report.md and PNG figures into --out."
        ),
    )
    parser.add_argument("--real", required=True, metavar="DIR", help="folder of real (held-out) scans")
    parser.add_argument("--synthetic", required=True, metavar="DIR", help="folder of synthetic volumes")
    parser.add_argument(
        "--train", metavar="DIR", help="folder of the training scans, for the memorisation (near-copy) check"
    )
    parser.add_argument("--fid-weights", metavar="FILE", help=FID_WEIGHTS_HELP)
    parser.add_argument(
        "--fid-2d",
        action="store_true",
        help="also compute a Fréchet distance on 2-D slice descriptors (no network, no download)",
    )
    parser.add_argument(
        "--pairs", type=int, default=100, metavar="N", help="MS-SSIM pairs per comparison (default: 100)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the MS-SSIM pairs (default: 0)")
    parser.add_argument(
        "--copy-threshold",
        type=float,
        default=0.98,
        metavar="R",
        help="flag synthetic volumes whose correlation with a training scan exceeds R (default: 0.98)",
    )
    parser.add_argument(
        "--device", default="auto", metavar="D", help="device for the FID network: auto, cpu, cuda, cuda:N, mps"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help=(
            "what the FID network computes in (the only network an evaluation runs): fp32 (default, "
            "the same figure on every machine), bf16 (autocast where the device has bf16) or auto (bf16 "
            "where one timed pass is faster; the FID may then differ in its last digits)"
        ),
    )
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=512.0,
        metavar="MB",
        help="memory for one block of all volumes in the MMD and memorisation passes (default: 512)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier report in --out")
    parser.set_defaults(func=run)


class _Progress:
    """One tqdm bar per stage on a terminal; one line per stage otherwise (batch job logs)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=False, dynamic_ncols=True)
            else:
                print(f"evaluate: {stage} ...", file=sys.stderr, flush=True)
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report, print the Table 1 figures."""
    from pathlib import Path

    from engine.evaluation import check_report_target, evaluate_folders, write_report
    from engine.metrics.results import EvaluationOptions

    out_dir = Path(args.out)
    check_report_target(out_dir, overwrite=args.overwrite)  # before minutes of work, not after
    options = EvaluationOptions(
        n_pairs=args.pairs,
        seed=args.seed,
        fid_weights=Path(args.fid_weights) if args.fid_weights else None,
        fid_2d=args.fid_2d,
        device=args.device,
        precision=args.precision,
        copy_threshold=args.copy_threshold,
        memory_budget_mb=args.memory_mb,
    )
    if options.fid_weights is not None:
        from engine.metrics.medicalnet import load_medicalnet

        load_medicalnet(options.fid_weights)  # a wrong file fails now, not after loading every scan
        from engine.device import resolve_device
        from engine.precision import check_precision

        check_precision(options.precision, resolve_device(options.device))  # so does bf16 without bf16 units
    progress = _Progress()
    try:
        result = evaluate_folders(
            args.real,
            args.synthetic,
            train_dir=args.train,
            options=options,
            scratch_parent=out_dir,
            progress=progress,
        )
    finally:
        progress.close()
    written = write_report(result, out_dir, overwrite=args.overwrite)

    ms = result.msssim
    fid = "unavailable (no --fid-weights)"
    if result.fid_3d.available:
        fid = f"{result.fid_3d.value:.2f} (network in {result.fid_3d.parameters['precision_reason']})"
    print(f"real {result.n_real}, synthetic {result.n_synthetic} volumes of {' x '.join(map(str, result.shape))}")
    print(f"MMD (unbiased, linear kernel): {result.mmd.value:.4g}")
    print(f"FID (MedicalNet 3-D): {fid}")
    print(
        f"MS-SSIM within real {ms.within_real.mean:.4f}, within synthetic {ms.within_synthetic.mean:.4f}, "
        f"between {ms.between.mean:.4f}"
    )
    if result.memorisation.available:
        mem = result.memorisation
        print(f"near copies of training scans (r > {mem.threshold:g}): {len(mem.flagged)} of {len(mem.synthetic)}")
    print(f"report: {out_dir / 'report.md'} ({len(written)} files)")
    return 0
