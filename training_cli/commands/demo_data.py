"""``brainsynth-cli demo-data``: a demo population derived from the MNI152 template."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="build demo T1 volumes from the MNI152 template (template-derived, not patients)",
        description=(
            "Deform the MNI152 2009a T1 template (shipped with nilearn) into a population of demo "
            "'subjects' in the 1 mm MNI box: random diffeomorphic deformations, head size, ventricle "
            "and atrophy variation, bias fields and scanner noise. For trying BrainSynth, never as "
            "evidence about real brains. Needs: pip install 'brainsynth[demo]'."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--count", type=int, default=16, metavar="N", help="number of subjects (default 16)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="population seed (default 0)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also write each subject as a raw scanner-space head scan into DIR/raw (test data for preprocess)",
    )
    parser.add_argument(
        "--ftd-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of subjects with an FTD-like pattern (a caricature from one template; default 0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.demo_data import build_population

    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rdemo subjects {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    paths = build_population(
        args.out,
        count=args.count,
        seed=args.seed,
        ftd_fraction=args.ftd_fraction,
        overwrite=args.overwrite,
        raw=args.raw,
        progress=progress,
    )
    print(
        f"wrote {len(paths)} demo subjects (1 mm MNI box, template-derived) and participants.tsv "
        f"(age, sex, group) to {args.out}"
    )
    if args.raw:
        print(f"and their raw scanner-space head scans to {args.out}/raw (the MNI files are their ground truth)")
    return 0
