"""``brainsynth-cli sample``: generate a batch of synthetic volumes and export them as NIfTI.

Each volume is written as soon as its batch finishes, so an interrupted run keeps every
volume it completed (each file whole, never half-written). With ``--shard I/N`` (for job
arrays and multi-GPU SLURM jobs) this process generates only volumes I, I+N, I+2N, ... of
the batch; file names carry the global index and seed, so no two shards write one file.
"""

from __future__ import annotations

import argparse
import sys

from engine.precision import PRECISION_CHOICES
from engine.sampler_registry import SAMPLER_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate synthetic volumes and write them as NIfTI with JSON sidecars",
        description="Generate synthetic T1 volumes from a checkpoint (the bundled demo model by default).",
    )
    parser.add_argument(
        "--checkpoint", metavar="CKPT", help="BrainSynth .safetensors or MONAI .pt/.pth (with --preset)"
    )
    parser.add_argument("--preset", metavar="P", help="architecture of a plain MONAI state_dict (paper, demo, tiny)")
    parser.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="volumes to generate (default 1, or one per row of --conditions-csv)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        help="sampling method (default: the model's own, which 'info' shows; dpmpp-2m for a model that names none)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        metavar="K",
        help="denoising steps (default: the model's for its own sampler, else ddpm 1000, ddim 50, dpmpp-2m 25)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale (ddim only; default 0)")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="SEED", help="seed of the first volume; volume k uses SEED+k"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--device", default="auto", metavar="D", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help="volumes denoised together (default 1)")
    parser.add_argument(
        "--trajectory-frames",
        type=int,
        default=0,
        metavar="F",
        help="also write F frames of each volume's denoising (x_t and predicted x_0) as 4-D NIfTI",
    )
    parser.add_argument("--resample-1mm", action="store_true", help="write volumes on the 1 mm MNI box (181x217x181)")
    parser.add_argument("--raw-weights", action="store_true", help="use the raw weights even if the checkpoint has EMA")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_CHOICES,
        help="auto (bf16 autocast where this device runs it faster, timed once and cached; else fp32), fp32 or bf16",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile: compiled once per run (seconds to minutes; a C++ "
        "compiler is needed on the CPU), faster steps after that where the compiler wins, above all on a GPU",
    )
    parser.add_argument(
        "--cpu-threads", type=int, metavar="N", help="compute threads on the CPU (default: one per physical core)"
    )
    cond = parser.add_argument_group("conditions (conditional models; 'info' lists a model's covariates)")
    cond.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a covariate for every volume, e.g. --condition age=70 --condition sex=F (repeatable; "
        "none: the whole population)",
    )
    cond.add_argument(
        "--conditions-csv",
        metavar="FILE",
        help="per-volume conditions: a CSV with covariate names as header and one row per volume",
    )
    cond.add_argument(
        "--guidance",
        type=float,
        metavar="G",
        help="classifier-free guidance: 1 = plain conditional (default), 0 = unconditional, >1 = stronger; "
        "above 1 every step runs the network on twice the batch",
    )
    cond.add_argument(
        "--allow-extrapolation",
        action="store_true",
        help="accept covariate values outside the training range (recorded in every sidecar)",
    )
    parser.add_argument("--prefix", default="synthetic", help="file name prefix (default 'synthetic')")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="generate only volumes I, I+N, ... (default 0/1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the same names")
    parser.set_defaults(func=run)


def parse_shard(text: str) -> tuple[int, int]:
    from engine.errors import BrainSynthError

    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BrainSynthError(f"--shard takes I/N, e.g. 0/4 (got {text!r})") from None
    if count < 1 or not 0 <= index < count:
        raise BrainSynthError(f"--shard {text}: need 0 <= I < N")
    return index, count


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.checkpoint import load_checkpoint
    from engine.device import describe_device, set_cpu_threads
    from engine.errors import BrainSynthError
    from engine.export import ExportVolume, export_batch, export_targets, save_trajectory_nifti
    from engine.generation import GenerationRequest, generate, resolve_precision, seeds_from
    from engine.resources import default_checkpoint

    shard, shards = parse_shard(args.shard)
    all_conditions = _conditions(args)
    all_seeds = seeds_from(args.seed, args.num_samples if args.num_samples is not None else max(len(all_conditions), 1))
    if len(all_conditions) > 1 and len(all_conditions) != len(all_seeds):
        raise BrainSynthError(
            f"--conditions-csv has {len(all_conditions)} rows but --num-samples is {len(all_seeds)}; "
            "give one row per volume (or leave out --num-samples)"
        )
    indices = list(range(shard, len(all_seeds), shards))
    if not indices:
        print(f"shard {args.shard} has no volumes to generate", file=sys.stderr)
        return 0
    seeds = [all_seeds[i] for i in indices]
    out_dir = Path(args.out)
    # Refuse clashes before hours of sampling, not after.
    export_targets(out_dir, prefix=args.prefix, items=list(zip(indices, seeds, strict=True)), overwrite=args.overwrite)

    threads = set_cpu_threads(args.cpu_threads)
    ckpt_path = default_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path, preset=args.preset)
    request = GenerationRequest.for_checkpoint(
        ckpt,
        seeds=seeds,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        prefer_ema=not args.raw_weights,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        trajectory_frames=args.trajectory_frames,
        compile=args.compile,
        conditions=tuple(all_conditions[i] for i in indices) if len(all_conditions) > 1 else tuple(all_conditions),
        guidance=args.guidance,
        allow_extrapolation=args.allow_extrapolation,
    )
    settings = request.settings
    model = ckpt.build_model(use_ema=request.weights == "ema", device=request.torch_device)
    request = resolve_precision(model, request)
    print(
        f"sampling {len(seeds)} volume(s) with {settings.name}, {settings.steps} steps "
        f"({settings.describe_spacing()}), "
        f"on {describe_device(request.torch_device)} from {ckpt_path.name}; precision {request.precision_reason}",
        file=sys.stderr,
    )
    if request.torch_device.type == "cpu":
        print(f"using {threads}", file=sys.stderr)
    if request.compile:
        print("compiling the network (once; the first step waits for it)", file=sys.stderr)
    if request.is_conditional and any(request.conditions):
        guidance = 1.0 if request.guidance is None else request.guidance
        cost = "; guidance runs the network on twice the batch" if guidance not in (0.0, 1.0) else ""
        print(f"conditions {_describe(request.conditions)}, guidance {guidance:g}{cost}", file=sys.stderr)

    events = generate(model, request)
    bar = _progress_bar(total=len(seeds) * settings.steps)
    written: list[Path] = []
    try:
        for event in events:
            bar.update(1)
            if not event.finished:
                continue
            # Each batch is written as soon as it is done: an interrupted run keeps it.
            batch = list(event.finished)
            paths = export_batch(
                [ExportVolume(number=indices[v.index], array=v.array, provenance=v.provenance) for v in batch],
                spec=ckpt.spec,
                out_dir=out_dir,
                prefix=args.prefix,
                resample_to_1mm=args.resample_1mm,
                overwrite=args.overwrite,
            )
            written += paths
            for volume, path in zip(batch, paths, strict=True):
                if volume.trajectory is not None:
                    _write_trajectory(save_trajectory_nifti, path, volume, ckpt.spec, overwrite=args.overwrite)
    finally:
        bar.close()
        events.close()
    print(f"wrote {len(written)} volume(s) to {out_dir}")
    return 0


def _conditions(args: argparse.Namespace) -> list[dict]:
    """The conditions asked for: one for all volumes (``--condition``), one per volume
    (``--conditions-csv``, with ``--condition`` values added to every row), or none."""
    from engine.conditions import ConditionError, parse_assignments, read_conditions_csv

    common = parse_assignments(args.condition)
    if not args.conditions_csv:
        return [common] if common else []
    rows = read_conditions_csv(args.conditions_csv)
    both = sorted({name for row in rows for name in row} & set(common))
    if both:
        raise ConditionError(f"{', '.join(both)} is given both by --condition and in --conditions-csv; choose one")
    return [{**common, **row} for row in rows]


def _describe(conditions) -> str:
    distinct = {tuple(sorted(c.items())) for c in conditions}
    if len(distinct) == 1:
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in next(iter(distinct))) or "none"
    return f"per volume ({len(distinct)} different)"


def _write_trajectory(save, volume_path, volume, spec, *, overwrite: bool) -> None:
    import numpy as np

    trajectory = volume.trajectory
    affine = spec.grid.affine.copy()
    if trajectory.downsample > 1:
        affine[:3, :3] *= trajectory.downsample
    stem = volume_path.name[: -len(".nii.gz")]
    for kind, frames in (("xt", trajectory.x_t_array()), ("x0", trajectory.x0_array())):
        save(
            volume_path.with_name(f"{stem}_trajectory_{kind}.nii.gz"),
            np.asarray(frames, dtype=np.float32),
            affine,
            steps=list(trajectory.timesteps),
            overwrite=overwrite,
            description=f"BrainSynth denoising trajectory ({kind}), seed {volume.seed}",
            metadata={
                "space": "model",
                "frames": "x_t after each kept step" if kind == "xt" else "predicted x_0 at each kept step",
                "step_indices": list(trajectory.steps),
                "seed": volume.seed,
                "generation": volume.provenance,
            },
        )


def _progress_bar(*, total: int):
    """tqdm on a terminal; silent elsewhere (SLURM logs stay parseable)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="step", disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)
