"""How well a checkpoint denoises in one step, timestep by timestep.

    python benchmarks/denoising_error_by_timestep.py --scans DIR --checkpoint A [--checkpoint B ...]

Noises held-out scans (prepared onto the model grid) to fixed timesteps with fixed noise,
asks the network once, and reports the RMSE of its predicted x_0 (model units, [-1, 1], after
the samplers' clamp) per timestep, whole volume and background only. The same noise for
every checkpoint, so the columns compare. Used to see why the epsilon-predicting demo model
sampled noise: its x_0 at the noisiest timesteps was far off (see resources/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse

import torch

from engine.checkpoint import load_checkpoint

from heldout_scans import prepared_scans

TIMESTEPS = (0, 20, 100, 200, 400, 600, 800, 900, 999)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", required=True, help="folder of held-out scans")
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--count", type=int, default=8, help="scans used (the first N found)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoints = [load_checkpoint(p) for p in args.checkpoint]
    spec = checkpoints[0].spec
    if any(
        c.spec.grid != spec.grid or c.spec.schedule.alphas_cumprod().ne(spec.schedule.alphas_cumprod()).any()
        for c in checkpoints
    ):
        raise SystemExit("the checkpoints must share grid and noise schedule to be compared")
    scans = prepared_scans(args.scans, spec, args.count)
    x0 = torch.from_numpy(spec.intensity.standard_to_model(scans)).float()[:, None]
    background = x0 <= -1 + 1e-6
    abar = spec.schedule.alphas_cumprod()
    generator = torch.Generator().manual_seed(0)
    noise = {t: torch.randn(x0.shape, generator=generator) for t in TIMESTEPS}

    names = [f"{c.path.name} ({c.spec.schedule.prediction_type})" for c in checkpoints]
    print(f"{len(scans)} scans from {args.scans}; x_0 RMSE after one step, all voxels / background")
    print("t      sigma  " + "  ".join(f"{n:>34}" for n in names))
    models = [c.build_model().eval() for c in checkpoints]
    for t in TIMESTEPS:
        a = float(abar[t])
        x_t = a**0.5 * x0 + (1 - a) ** 0.5 * noise[t]
        cells = []
        for ckpt, model in zip(checkpoints, models, strict=True):
            with torch.inference_mode():
                output = model(x_t, timesteps=torch.full((len(x0),), float(t)))
            x0_hat, _ = ckpt.spec.schedule.split_prediction(output, x_t, a)
            error = x0_hat.clamp(-1, 1) - x0
            cells.append(f"{error.pow(2).mean().sqrt():.4f} / {error[background].pow(2).mean().sqrt():.4f}")
        print(f"{t:<5d} {((1 - a) / a) ** 0.5:6.2f}  " + "  ".join(f"{c:>34}" for c in cells))


if __name__ == "__main__":
    main()
