"""How long one `demo` volume takes with the default sampler (target: under 10 s on 2 CPU cores).

Usage: python benchmarks/bench_demo_volume.py [--checkpoint CKPT] [--sampler S --steps K] [--repeats 3]
           [--condition NAME=VALUE ...] [--guidance G] [--precision auto|fp32|bf16]

With a conditional model, ``--condition`` and ``--guidance`` time a conditioned volume: guidance
other than 1 runs the network on the conditional and the unconditional half of a doubled batch,
so expect up to twice the time of plain conditional sampling (``--guidance 1``).

``--precision`` defaults to ``auto``, what the app and ``brainsynth-cli sample`` use (bf16
autocast on a CPU with bf16 units where a timed step is faster); ``--precision fp32`` for the
fp32 figure. Uses the bundled demo checkpoint when there is one (the weights do not change the time);
otherwise the demo preset with random weights. Reports the median wall time of whole
volumes (model load excluded, one warm-up volume first) and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from engine.checkpoint import load_checkpoint
from engine.generation import GenerationRequest, generate, resolve_precision
from engine.resources import bundled_checkpoint
from engine.sampler_registry import SAMPLER_NAMES
from engine.samplers import default_settings
from engine.specs import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: the model's default sampler")
    parser.add_argument("--steps", type=int, help="default: the model's steps for the sampler")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--guidance", type=float)
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="auto (the default of the app and of sample: bf16 where this CPU runs it faster), fp32 or bf16",
    )  # fmt: skip
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = args.checkpoint or bundled_checkpoint()
    if path:
        ckpt = load_checkpoint(path)
        spec, model, source = ckpt.spec, ckpt.build_model(), str(path)
    else:
        spec = PRESETS["demo"]
        torch.manual_seed(0)
        model, source = spec.build_random_model().eval(), "demo preset, random weights"
    settings = default_settings(spec, sampler=args.sampler, steps=args.steps)
    condition = dict(item.split("=", 1) for item in args.condition)
    conditional = {"conditions": (condition,), "guidance": args.guidance} if condition else {}

    base = GenerationRequest(
        spec=spec, seeds=[0], settings=settings, device="cpu", preview_every=0, precision=args.precision, **conditional
    )
    base = resolve_precision(model, base)  # once, outside the timing (auto times a step; the choice is cached)

    def one_volume(seed: int) -> float:
        start = time.perf_counter()
        for _ in generate(model, replace(base, seeds=[seed])):
            pass
        return time.perf_counter() - start

    one_volume(0)  # warm-up: first-call allocations and kernel selection
    times = [one_volume(seed) for seed in range(1, args.repeats + 1)]
    median = statistics.median(times)
    result = {
        "model": source,
        "grid": list(spec.grid.shape),
        "sampler": settings.name,
        "steps": settings.steps,
        "threads": args.threads,
        "precision": base.precision,
        "precision_reason": base.precision_reason,
        "condition": condition or None,
        "guidance": args.guidance if condition else None,
        "seconds_per_volume_median": round(median, 2),
        "seconds_per_volume_all": [round(t, 2) for t in times],
        "seconds_per_step": round(median / settings.steps, 3),
        "target_seconds": 10,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
