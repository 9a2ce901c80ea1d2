"""``brainsynth-cli train``: train a diffusion model headless, on one CPU/GPU or many nodes.

Examples::

    brainsynth-cli train --preset demo --data prepared/ --out runs/demo --epochs 50
    brainsynth-cli train --config run.toml --epochs 400          # flags override the file
    brainsynth-cli train --resume runs/demo --epochs 80          # continue, or extend
    torchrun --nproc-per-node 4 -m training_cli train --config run.toml
    srun brainsynth-cli train --config run.toml                  # see packaging/slurm/

Only the options given on the command line override the TOML file (their argparse default
is "not given"), so a flag never silently resets a value the file set.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from engine.sampler_registry import SAMPLER_NAMES

_SUPPRESS = argparse.SUPPRESS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a model (1 CPU/GPU to many nodes; resumable)",
        description=(
            "Train the 3-D diffusion model on T1 scans (folders of NIfTI/MGZ or CSV manifests "
            "path[,subject_id,group]). Writes config, split, logs and checkpoints into --out. "
            "Launch under torchrun, accelerate launch or srun for several GPUs/nodes."
        ),
        argument_default=_SUPPRESS,
    )
    rg = p.add_argument_group("run")
    rg.add_argument("--config", metavar="TOML", help="TOML file with training options (flags override it)")
    rg.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    rg.add_argument(
        "--preset",
        metavar="NAME",
        help="model preset: paper, demo, tiny, or a latent one (ldm-demo, ldm-1mm) with --autoencoder (default: demo)",
    )
    rg.add_argument(
        "--autoencoder",
        metavar="AE",
        help="latent diffusion: the autoencoder from train-autoencoder (RUN_DIR/autoencoder.safetensors); "
        "the scans are encoded once and cached in the run directory",
    )
    rg.add_argument(
        "--data", metavar="PATH", action="append", help="folder of scans, scan file or CSV manifest (repeatable)"
    )
    rg.add_argument("--out", metavar="RUN_DIR", help="run directory (created)")
    rg.add_argument("--device", metavar="DEV", help="auto, cpu or cuda (default: auto)")
    rg.add_argument(
        "--cpu-threads", type=int, metavar="N", help="compute threads per process, 0 = one per physical core (0)"
    )
    rg.add_argument("--seed", type=int, metavar="N", help="seed for split, initial weights, order and noise (0)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, metavar="N", help="epochs (default: 100)")
    opt.add_argument("--batch-size", type=int, metavar="N", help="volumes per process per forward pass (2)")
    opt.add_argument("--grad-accum", type=int, metavar="N", help="micro-batches per optimizer step (1)")
    opt.add_argument("--lr", type=float, metavar="LR", help="Adam learning rate (5e-5)")
    opt.add_argument("--weight-decay", type=float, metavar="W", help="Adam weight decay (0)")
    opt.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm, 0 = off (1.0)")
    opt.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto (bf16 on a GPU with bf16, and on a CPU with bf16 units where a timed step is faster; "
        "else fp32), fp32, bf16 or fp16 (GPU); a resumed run keeps its own (auto)",
    )
    opt.add_argument("--ema-decay", type=float, metavar="D", help="EMA decay of the weights, 0 = off (0.999)")

    data = p.add_argument_group("data")
    data.add_argument("--val-fraction", type=float, metavar="F", help="share of subjects for validation (0.2)")
    data.add_argument("--val-timesteps", type=int, metavar="N", help="fixed timesteps per validation scan (2)")
    data.add_argument(
        "--max-failed-fraction", type=float, metavar="F", help="stop if more than this share of files fail (0.1)"
    )
    data.add_argument("--cache-dir", metavar="DIR", help="cache of prepared volumes (default: user cache folder)")

    ck = p.add_argument_group("checkpoints and logs")
    ck.add_argument("--checkpoint-every", type=int, metavar="N", help="keep epoch_NNNN checkpoints every N epochs (10)")
    ck.add_argument("--resume-every-steps", type=int, metavar="N", help="save the resume state every N steps (0)")
    ck.add_argument("--resume-every-minutes", type=float, metavar="M", help="...and at least every M minutes (10)")
    ck.add_argument("--sample-every", type=int, metavar="N", help="PNG of EMA samples every N epochs, 0 = off (25)")
    ck.add_argument("--sample-count", type=int, metavar="N", help="volumes in that PNG (3)")
    ck.add_argument("--sample-steps", type=int, metavar="N", help="sampler steps for them (50)")
    ck.add_argument("--sample-sampler", choices=SAMPLER_NAMES, help="sampler for them (ddim)")
    ck.add_argument(
        "--no-tensorboard", dest="tensorboard", action="store_false", help="do not write TensorBoard events"
    )

    cg = p.add_argument_group("conditions (age, sex, diagnosis...) and classifier-free guidance")
    cg.add_argument(
        "--conditions",
        metavar="LIST",
        help="covariates to condition on, name[:kind[:dropout]] comma-separated, e.g. age:continuous,sex,group "
        "(from participants.tsv beside the scans or manifest columns; kinds inferred when not given)",
    )
    cg.add_argument(
        "--condition-dropout", type=float, metavar="P", help="drop the whole condition with this probability (0.1)"
    )
    cg.add_argument(
        "--covariate-dropout", type=float, metavar="P", help="drop each covariate with this probability (0.1)"
    )

    tl = p.add_argument_group("transfer learning")
    tl.add_argument("--init-from", metavar="CKPT", help="start from this BrainSynth checkpoint's weights")
    tl.add_argument(
        "--init-raw-weights",
        dest="init_use_ema",
        action="store_false",
        help="start from its raw weights instead of its EMA weights",
    )
    tl.add_argument(
        "--freeze-encoder-levels", type=int, metavar="K", help="with --init-from: keep input conv + K encoder levels"
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "human", "parseable"),
        default="auto",
        help="progress lines: human on a terminal, key=value under SLURM or when piped (auto)",
    )
    p.add_argument(
        "--preprocess",
        action="store_true",
        help="--data holds raw scans: run `preprocess` into RUN_DIR/preprocessed first (cached; --preprocess-*)",
    )
    from training_cli.commands.preprocess import add_pipeline_options

    add_pipeline_options(p, prefix="preprocess-")
    p.set_defaults(func=run)


_NOT_CONFIG = {"config", "resume", "log_format", "func", "command", "debug", "preprocess"}


def resolve_config(args: argparse.Namespace):
    """The run's :class:`engine.training.config.TrainConfig`: defaults < TOML (or the saved run) < flags."""
    from engine.errors import BrainSynthError
    from engine.training.config import load_config
    from engine.training.resume import resume_config

    # pp_*: the --preprocess-* pipeline options (training_cli.commands.preprocess), not training options.
    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and not k.startswith("pp_")}
    resume_dir = getattr(args, "resume", None)
    if resume_dir:
        if getattr(args, "config", None):
            raise BrainSynthError("--config and --resume cannot be combined: a resumed run uses its saved config")
        return resume_config(resume_dir, given)
    return load_config(getattr(args, "config", None), given)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print one line per epoch; return the exit status."""
    from engine.training.logging import format_epoch_line, under_slurm
    from engine.training.trainer import train
    from training_cli.commands.preprocess import preprocess_train_data

    preprocess_train_data(args)
    config = resolve_config(args)
    resume_dir = getattr(args, "resume", None)

    fmt = getattr(args, "log_format", "auto")
    parseable = fmt == "parseable" or (fmt == "auto" and (under_slurm() or not sys.stdout.isatty()))

    def on_event(event) -> None:
        if event.kind == "epoch":
            print(format_epoch_line(event.summary, parseable=parseable), flush=True)
        elif event.kind == "warning":
            print(f"warning: {event.message}", file=sys.stderr, flush=True)
        else:
            print(event.message if not parseable else f"brainsynth-train info: {event.message}", flush=True)

    train(config, resume=bool(resume_dir), callback=on_event, stop_requested=stop_on_signals())
    return 0


def stop_on_signals() -> Callable[[], bool]:
    """Catch SIGTERM and SIGUSR1 from now on; returns whether one has arrived.

    SLURM sends SIGTERM (or the --signal chosen in the job script) before the time limit: the
    trainers poll this once per step, finish the current step, save the resume state and
    exit cleanly.
    """
    requested = {"stop": False}

    def handle(signum, frame) -> None:
        requested["stop"] = True

    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, handle)
    return lambda: requested["stop"]
