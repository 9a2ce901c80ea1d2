"""``brainsynth-cli info CKPT``: print what a checkpoint holds."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show a checkpoint's model spec, grid and provenance")
    parser.add_argument("checkpoint", help="BrainSynth .safetensors checkpoint, or a MONAI .pt/.pth with --preset")
    parser.add_argument("--preset", help="architecture of a plain MONAI state_dict")
    parser.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.checkpoint import load_checkpoint
    from engine.display_text import printable
    from engine.samplers import default_settings
    from engine.specs import format_shape

    ckpt = load_checkpoint(args.checkpoint, preset=args.preset)
    meta = ckpt.metadata()
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    spec = ckpt.spec
    sampler = default_settings(spec)
    whose = "the model's own" if spec.default_sampler else "the engine's; the model names none"
    n_params = sum(t.numel() for t in ckpt.weights.values())
    grid = spec.grid
    lines = [
        f"checkpoint   {printable(ckpt.path)}",
        (
            f"preset       {printable(spec.name)}   ({n_params / 1e6:.2f} M parameters, "
            f"EMA weights: {'yes' if ckpt.has_ema else 'no'})"
        ),
        (
            f"network      MONAI DiffusionModelUNet{' (on the latent)' if spec.latent else ''}, "
            f"channels {tuple(spec.unet.channels)}, "
            f"attention {tuple(spec.unet.attention_levels)}, {spec.unet.num_res_blocks} res blocks/level, "
            f"{spec.unet.num_head_channels} head channels"
        ),
        (
            f"grid         {format_shape(grid.shape)} voxels of "
            f"{' x '.join(f'{s:.3f}' for s in grid.spacing_mm)} mm, RAS+, MNI152, "
            f"first voxel at ({', '.join(f'{o:.2f}' for o in grid.origin_mm)}) mm"
        ),
        (
            f"schedule     {spec.schedule.schedule}, T={spec.schedule.num_train_timesteps}, "
            f"beta {spec.schedule.beta_start} → {spec.schedule.beta_end}, clip x0: {spec.schedule.clip_sample}, "
            f"predicts {spec.schedule.prediction_type}"
        ),
        (
            f"intensity    {printable(spec.intensity.kind)}: "
            f"brain p{spec.intensity.upper_percentile:g} → {spec.intensity.scale:g}"
        ),
        f"sampler      {sampler.name}, {sampler.steps} steps by default ({whose}); {sampler.describe_spacing()}",
        f"memory       {_memory_line(spec)}",
    ]
    if spec.latent is not None:
        lines[3:3] = _latent_lines(spec, ckpt.provenance)
    if spec.conditions is None:
        lines.append("conditions   none (unconditional)")
    else:
        lines.append(f"conditions   whole-condition dropout {spec.conditions.dropout:g}; covariates:")
        lines += [f"               {cov.describe()}" for cov in spec.conditions.covariates]
    for key, value in ckpt.provenance.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        # Text from the file: escaped, so that a checkpoint cannot drive the user's terminal.
        lines.append(f"{printable(key):<12} {printable(shown)}")
    print("\n".join(lines))
    return 0


def _latent_lines(spec, provenance: dict) -> list[str]:
    """What a latent-diffusion checkpoint adds: the autoencoder, the latent grid, how the grid was placed."""
    from engine.display_text import printable
    from engine.latent import DECODE_BUDGET_BYTES, decode_bytes, decode_tile
    from engine.specs import format_shape

    latent = spec.latent
    ae = latent.autoencoder
    whole = decode_bytes(ae, latent.shape)
    tile = decode_tile(ae, latent.shape)
    decoding = (
        "whole" if tile is None else f"in tiles of {tile}^3 latent voxels (budget {DECODE_BUDGET_BYTES / 2**30:g} GiB)"
    )
    lines = [
        (
            f"latent       latent diffusion: {latent.channels} x {format_shape(latent.shape)} latent, "
            f"scale factor {latent.scale_factor:.4g}, decoded x{ae.downsampling_factor} to the grid below"
        ),
        (
            f"autoencoder  MONAI AutoencoderKL, channels {tuple(ae.channels)}, {ae.num_res_blocks} res blocks/level, "
            f"data range {ae.data_range[0]:g} to {ae.data_range[1]:g}; decoding ~{whole / 2**30:.2f} GiB, {decoding}"
        ),
    ]
    geometry = provenance.get("geometry")
    if isinstance(geometry, dict) and geometry.get("method"):
        lines.append(f"geometry     {printable(geometry.get('method'))}: {printable(geometry.get('description', ''))}")
    return lines


def _memory_line(spec) -> str:
    from engine.checkpoint_checks import estimate_memory

    estimate = estimate_memory(spec)
    return (
        f"weights {estimate.model_bytes / 2**20:,.0f} MB; one sampling step of one volume at least "
        f"{estimate.step_bytes / 2**30:,.2f} GiB (+{estimate.attention_bytes / 2**30:,.2f} GiB without fused attention)"
    )
