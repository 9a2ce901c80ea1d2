"""``brainsynth-cli import-bundle DIR --out X.safetensors``: open the MONAI brain LDM bundle.

Converts a downloaded ``brain_image_synthesis_latent_diffusion_model`` (MONAI model zoo) into one
BrainSynth checkpoint: both networks (read with ``torch.load(weights_only=True)``, old key names
converted), the bundle's covariates (in real units, with the training ranges of Pinaya et al.
2022), the bundle's own DDIM (50 steps, MONAI's timestep layout: ``--ddim-spacing``), and the
decoded grid's geometry (``--geometry register``, the default, or ``mni-centre``). See
:mod:`engine.bundle`.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import-bundle`` subcommand."""
    parser = subparsers.add_parser(
        "import-bundle",
        help="convert the MONAI brain LDM bundle (UK Biobank, 1 mm) into a BrainSynth checkpoint",
        description=(
            "Read models/autoencoder.pt and models/model.pt of a downloaded "
            "brain_image_synthesis_latent_diffusion_model bundle (weights only; nothing in them runs) and "
            "write one BrainSynth checkpoint with both networks, the bundle's conditions (sex 0-1, age in years, "
            "ventricular_vol and brain_vol in mL, mapped to the bundle's [0, 1] with the training ranges of "
            "Pinaya et al. 2022), the bundle's own DDIM and the decoded grid's geometry."
        ),
    )
    parser.add_argument("bundle", metavar="DIR", help="the bundle folder (holding models/ and configs/)")
    parser.add_argument("--out", required=True, metavar="X.safetensors", help="checkpoint to write")
    parser.add_argument(
        "--geometry",
        choices=("register", "mni-centre"),
        default="register",
        help=(
            "where the decoded 1 mm grid lies: register one generated volume rigidly to the MNI152 template "
            "(default; needs brainsynth[preprocess] and minutes on a CPU) or centre it on the MNI box"
        ),
    )
    parser.add_argument(
        "--ddim-spacing",
        choices=("leading", "linspace"),
        default=None,
        help=(
            "timestep layout of the bundle's DDIM: leading (MONAI <= 1.5, 980, 960, ..., 0 for 50 steps) or "
            "linspace (MONAI >= 1.6, 999, 979, 958, ..., 0); default: that of the MONAI version the bundle's "
            "configs/metadata.json names (1.4.0: leading)"
        ),
    )
    parser.add_argument("--device", default="auto", help="device for the registration volume (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the registration volume (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.atomic import check_writable
    from engine.bundle import import_bundle

    out = Path(args.out)
    check_writable(out, overwrite=args.overwrite)  # before minutes of work, not after
    ckpt = import_bundle(
        args.bundle,
        geometry=args.geometry,
        ddim_spacing=args.ddim_spacing,
        register_seed=args.seed,
        device=args.device,
        progress=lambda text: print(text, file=sys.stderr),
    )
    ckpt.save(out, overwrite=args.overwrite)
    geometry = ckpt.provenance.get("geometry", {})
    sampler = ckpt.spec.default_sampler
    print(
        f"wrote {out} ({ckpt.spec.name}; geometry: {geometry.get('description', '')}; "
        f"sampling: {sampler.name} {sampler.steps} steps, {sampler.describe_spacing()})"
    )
    return 0
