"""Cost of a latent-diffusion volume against a pixel-space one: seconds per step, decode time, peak memory.

Usage: python benchmarks/bench_ldm.py [--latent ldm-1mm] [--pixel paper] [--device cpu] [--threads 2]
                                      [--decode-budget-gb 2] [--out ldm.json]

Random weights (the cost does not depend on them). For the latent preset: one UNet step on the
latent (batch 1, with its conditions) and one decode of a latent (tiled when the decoder's
estimated memory is above the budget, as generation does); for the pixel preset: one UNet step
on its grid. One warm-up call each, then the median of ``--repeats``. A volume is estimated as
steps x seconds per step (+ one decode): the latent preset at its default sampler (ddim 50), the
pixel preset at the paper's DDPM 1000 and at DPM-Solver++ 25. Peak memory: the GPU's allocator
peak on a GPU; on the CPU the process's peak resident size after each part (monotonic, so each
figure includes the parts before it).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import resource
import statistics
import sys
import time

import torch

from engine.specs import PRESETS


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def unet_step(spec, model, device: torch.device, repeats: int) -> float:
    x = torch.randn((1, *spec.sample_shape), generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((1,), 500.0, device=device)
    labels = {} if spec.conditions is None else {"class_labels": spec.conditions.null(1, device=device)}

    def call() -> None:
        with torch.inference_mode():
            model(x, timesteps=t, **labels)

    return _timed(call, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", default="ldm-1mm", choices=[n for n, s in PRESETS.items() if s.latent])
    parser.add_argument("--pixel", default="paper", choices=[n for n, s in PRESETS.items() if not s.latent])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--decode-budget-gb", type=float, default=2.0)
    parser.add_argument(
        "--no-decode", action="store_true", help="time the UNet step only (a 1 mm decode takes minutes)"
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from engine.latent import decode_bytes, decode_tile

    results: dict = {"device": str(device), "threads": args.threads}
    latent = PRESETS[args.latent]
    started = time.perf_counter()
    model = latent.build_model().to(device).eval()
    built = time.perf_counter() - started
    model.decode_budget_bytes = int(args.decode_budget_gb * 2**30)
    step = unet_step(latent, model, device, args.repeats)
    after_step = _peak_mb(device)
    z = torch.randn((1, *latent.sample_shape), generator=torch.Generator().manual_seed(1)).to(device)
    tile = decode_tile(latent.latent.autoencoder, latent.latent.shape, budget_bytes=model.decode_budget_bytes)
    decode = math.nan if args.no_decode else _timed(functools.partial(model.decode, z), device, args.repeats)
    after_decode = _peak_mb(device)
    steps = latent.default_sampler.steps if latent.default_sampler else 50
    results[args.latent] = {
        "grid": list(latent.grid.shape),
        "latent": list(latent.sample_shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_s": built,
        "s_per_step": step,
        "decode_s": decode,
        "decode_tile": tile,
        "decode_estimate_gib_whole": decode_bytes(latent.latent.autoencoder, latent.latent.shape) / 2**30,
        "peak_mb_after_step": after_step,
        "peak_mb_after_decode": after_decode,
        "volume_s": {f"ddim {steps}": steps * step + decode},
    }
    del model, z
    pixel = PRESETS[args.pixel]
    model = pixel.build_model().to(device).eval()
    step = unet_step(pixel, model, device, args.repeats)
    results[args.pixel] = {
        "grid": list(pixel.grid.shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "s_per_step": step,
        "peak_mb_after_step": _peak_mb(device),
        "volume_s": {"ddpm 1000": 1000 * step, "dpmpp-2m 25": 25 * step},
    }
    lat, pix = results[args.latent], results[args.pixel]
    voxels = lambda r: r["grid"][0] * r["grid"][1] * r["grid"][2]  # noqa: E731
    print(f"{args.latent}: {lat['s_per_step']:.2f} s/step on {lat['latent']}, decode {lat['decode_s']:.1f} s "
          f"({'whole' if tile is None else f'tiles of {tile}'}), peak {lat['peak_mb_after_decode']:.0f} MB; "
          f"a volume of {voxels(lat):,} voxels ~{next(iter(lat['volume_s'].values())):.0f} s")  # fmt: skip
    ddpm, dpm = pix["volume_s"]["ddpm 1000"], pix["volume_s"]["dpmpp-2m 25"]
    print(f"{args.pixel}: {pix['s_per_step']:.2f} s/step on {pix['grid']}; a volume of {voxels(pix):,} voxels "
          f"~{ddpm:.0f} s (ddpm 1000), ~{dpm:.0f} s (dpmpp-2m 25)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
