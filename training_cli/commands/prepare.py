"""``brainsynth-cli prepare``: put real scans onto a preset's model grid in standard space.

Each usable input becomes ``<stem>.nii.gz`` (standard intensity space, the grid's MNI
affine) and ``<stem>.json`` (source, scale factor, preset, grid) in ``--out``; the rows of
the prepared scans in a ``participants.tsv`` beside the inputs are carried into
``--out/participants.tsv``, so the prepared folder is labelled like its source. Inputs that
cannot be used are reported one per line on stderr and skipped; nothing is written for them.

Exit status: 0 when every input was prepared, 1 when some were skipped or none could be used.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` subcommand."""
    parser = subparsers.add_parser(
        "prepare",
        help="resample MNI-registered T1 scans onto a model grid (standard intensities)",
        description=(
            "Resample T1 scans that are already registered to MNI152 space (ideally skull-stripped) "
            "onto a preset's model grid, mask them and scale intensities to standard space. "
            "Writes <name>.nii.gz and <name>.json per scan into --out."
        ),
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="scan files (.nii, .nii.gz, .mgh, .mgz) or folders of them"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--preset", default="demo", metavar="P", help="model preset whose grid to use (default: demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--preprocess",
        action="store_true",
        help="the inputs are raw scans: run `preprocess` into DIR/preprocessed first (cached; --preprocess-* options)",
    )
    from training_cli.commands.preprocess import add_pipeline_options

    add_pipeline_options(parser, prefix="preprocess-")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare every input; return the exit status."""
    from pathlib import Path

    from engine import __version__
    from engine.errors import BrainSynthError, WriteError
    from engine.export import save_nifti_with_sidecar, sidecar_path
    from engine.preprocessing import prepare_scan
    from engine.specs import format_shape, get_preset
    from engine.volumes import find_volumes, load_volume, strip_extension

    spec = get_preset(args.preset)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BrainSynthError(f"{out_dir} is a file; --out must be a folder")
    inputs = args.inputs
    if args.preprocess:
        from training_cli.commands.preprocess import preprocessed_scans

        inputs = preprocessed_scans(args.inputs, out_dir / "preprocessed", args)
    paths = find_volumes(inputs)

    prepared: list[Path] = []
    skipped: list[Path] = []
    claimed: dict[str, Path] = {}  # output stem → input, so two inputs never write one file
    for path in paths:
        try:
            stem = strip_extension(path)
            if stem in claimed:
                raise BrainSynthError(f"{claimed[stem]} is also named {stem}; rename one of them")
            volume = load_volume(path)
            scan = prepare_scan(volume, spec)
            target = out_dir / f"{stem}.nii.gz"
            sidecar = sidecar_path(target)
            # Check the sidecar too before writing the image, so a clash leaves no orphan image.
            if not args.overwrite and sidecar.exists():
                raise BrainSynthError(f"{sidecar} already exists; choose another output folder or pass --overwrite")
            # Image and sidecar as one atomic group: an image without its sidecar is half a result.
            save_nifti_with_sidecar(
                target,
                scan.data,
                scan.affine,
                _sidecar(scan=scan, spec=spec, version=__version__),
                overwrite=args.overwrite,
                description=f"BrainSynth prepared T1, {spec.name} grid",
            )
        except WriteError:
            raise  # a full disk or read-only folder fails every file alike: stop with one line
        except BrainSynthError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
            skipped.append(path)
            continue
        claimed[stem] = path
        for warning in scan.warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        prepared.append(target)

    total = len(paths)
    if not prepared:
        raise BrainSynthError(
            f"none of the {total} input scan{'s' if total != 1 else ''} could be used (reasons above)"
        )
    from engine.training.covariates import carry_participants

    # A prepared folder is labelled like its source (training and `utility` read the table).
    carried = carry_participants(args.inputs, [strip_extension(p) for p in prepared], out_dir, overwrite=args.overwrite)
    if carried is not None:
        print(f"participants.tsv: the rows of the prepared scans → {carried}")
    grid = format_shape(spec.grid.shape)
    summary = f"prepared {len(prepared)} of {total} scans onto the {spec.name} grid ({grid}) in {out_dir}"
    print(summary + (f"; {len(skipped)} skipped" if skipped else ""))
    return 1 if skipped else 0


def _sidecar(*, scan, spec, version: str) -> dict:
    from engine.export import SIDECAR_FORMAT, SIDECAR_FORMAT_VERSION

    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "kind": "prepared",
        "source": str(scan.source.resolve()) if scan.source is not None else None,
        "scale_factor": scan.scale_factor,
        "preset": spec.name,
        "grid": spec.grid.to_dict(),
        "intensity": {**spec.intensity.to_dict(), "space": "standard"},
        "brain_voxels": int(scan.mask.sum()),
        "warnings": list(scan.warnings),
        "software_version": version,
    }
