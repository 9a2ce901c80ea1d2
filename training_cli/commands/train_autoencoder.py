"""``brainsynth-cli train-autoencoder``: the autoencoder of a latent-diffusion model.

Trains MONAI's AutoencoderKL of a latent preset (L1 + KL, optional perceptual, patch adversarial
after a warm-up) on prepared scans and writes RUN_DIR/autoencoder.safetensors, which
``brainsynth-cli train --preset ldm-demo --autoencoder RUN_DIR/autoencoder.safetensors`` uses.
Under torchrun or ``srun`` (one task per GPU) it trains on all the job's processes, as ``train``
does; SIGTERM / SIGUSR1 (SLURM's warning before a time limit) save the resume state and stop.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-autoencoder`` subcommand."""
    p = subparsers.add_parser(
        "train-autoencoder",
        help="train the autoencoder of a latent-diffusion preset (ldm-demo)",
        description=(
            "Train MONAI's AutoencoderKL of a latent preset on scans (L1 + KL, optional perceptual, patch "
            "adversarial after a warm-up); reconstruction PSNR, SSIM and MS-SSIM of the validation scans go to "
            "RUN_DIR/logs/epochs.csv; the best autoencoder is RUN_DIR/autoencoder.safetensors."
        ),
    )
    p.add_argument("--data", action="append", metavar="PATH", help="scan folder or CSV manifest (repeatable)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (created; must be new or empty)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR after its last epoch")
    p.add_argument("--preset", default="ldm-demo", help="latent preset (default ldm-demo)")
    p.add_argument("--epochs", type=int, help="epochs in all (default 100; with --resume, the run's own)")
    p.add_argument("--batch-size", type=int, default=1, help="volumes per step (default 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term (1e-6)")
    p.add_argument(
        "--perceptual-weight",
        type=float,
        default=0.0,
        help="weight of the perceptual term (0 = off, the default: its network weights must be downloadable)",
    )
    p.add_argument("--adversarial-weight", type=float, default=0.01, help="weight of the adversarial term (0.01)")
    p.add_argument("--adversarial-warmup", type=int, default=5, metavar="EPOCHS", help="epochs before it starts (5)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay, 0 = off (0.999)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of subjects for validation (0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun/srun: each rank's GPU)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto (bf16 where the device does it fast, else fp32), fp32, bf16 or fp16 (CUDA)",
    )
    p.add_argument("--cpu-threads", type=int, default=0, help="compute threads per process (0 = one per core)")
    p.add_argument(
        "--resume-every-minutes",
        type=float,
        default=10.0,
        help="also write the resume state this often within an epoch (10; 0 = only at epoch ends)",
    )
    p.add_argument("--sample-every", type=int, default=5, help="PNG of reconstructions every N epochs (5)")
    p.add_argument("--cache-dir", help="cache of prepared volumes (default: the user cache folder)")
    p.set_defaults(func=run)


def _epochs(args: argparse.Namespace) -> int:
    return 100 if args.epochs is None else args.epochs


def run(args: argparse.Namespace) -> int:
    from engine.training.autoencoder import AutoencoderTrainConfig, saved_config, train_autoencoder

    if args.resume:
        config = saved_config(args.resume, **({"epochs": args.epochs} if args.epochs is not None else {}))
    else:
        config = AutoencoderTrainConfig(
            preset=args.preset,
            data=list(args.data or []),
            out=args.out or "",
            epochs=_epochs(args),
            batch_size=args.batch_size,
            lr=args.lr,
            kl_weight=args.kl_weight,
            perceptual_weight=args.perceptual_weight,
            adversarial_weight=args.adversarial_weight,
            adversarial_warmup_epochs=args.adversarial_warmup,
            ema_decay=args.ema_decay,
            val_fraction=args.val_fraction,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            cpu_threads=args.cpu_threads,
            resume_every_minutes=args.resume_every_minutes,
            sample_every=args.sample_every,
            cache_dir=args.cache_dir,
        )
    from training_cli.commands.train import stop_on_signals

    best = train_autoencoder(
        config,
        resume=bool(args.resume),
        callback=lambda line: print(line, flush=True),
        stop_requested=stop_on_signals(),
    )
    if best.exists():
        print(f"best autoencoder: {best}", file=sys.stderr)
    return 0
