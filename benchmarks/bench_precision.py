"""fp32 against bf16 autocast (and what ``auto`` picks) on this CPU: s/step, GFLOP/s, share of peak, volumes.

Usage::

    python benchmarks/bench_precision.py [--threads 1,2] [--repeats 5] [--volume-repeats 3] [--out precision.json]

Measured, in one process, with fp32 and bf16 runs interleaved (on a shared machine the
ratios hold better than absolute times):

* **sampling**: one step of the bundled demo model (batch 1, eval, inference mode) — its
  own sampler is DDPM with 100 steps, so a volume is 100 of these;
* **training**: one forward and backward pass of the demo preset at batch 4 (MSE loss);
* for each thread count of ``--threads``: the median s/step of each precision over
  ``--repeats`` interleaved runs (after one warm-up each), the GFLOP/s that implies and its
  share of the CPU's estimated peak;
* what ``auto`` chooses here (:func:`engine.generation.resolve_precision` for sampling,
  :func:`engine.training.precision.choose_training_precision` for training; timed afresh in
  a temporary cache) and why;
* the same-seed default volume (DDPM 100) in ``auto`` and in fp32: correlation (target
  >= 0.999) and RMS difference in model units, and the median time of a whole default volume
  in each (target for ``auto``: < 6 s on 2 cores with bf16 units; never slower than fp32).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
(convolutions and matrix products at 2 FLOPs per multiply-add; normalisations and
activations are not counted), forward only for sampling, forward and backward for training.

The peak is an estimate: cores x clock x FLOPs per cycle per core, with the clock the highest
"cpu MHz" in ``/proc/cpuinfo`` (what the kernel reports, not the AVX-512 or AMX licence
clock, which is usually lower) and FLOPs per cycle from the CPU's flags: fp32 with AVX-512
FMA 64 (two 512-bit FMA units x 16 lanes x 2; AVX2 FMA: 32), bf16 with AMX 2048 (one tile
multiply unit, 1024 bf16 multiply-adds per cycle), with AVX-512 BF16 alone 128. Each
precision's share is of its own peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.device import physical_cores_available  # noqa: E402
from engine.generation import GenerationRequest, generate, resolve_precision  # noqa: E402
from engine.precision import autocast, bf16_support  # noqa: E402
from engine.resources import bundled_checkpoint  # noqa: E402
from engine.samplers import default_settings  # noqa: E402
from engine.specs import PRESETS, ModelSpec  # noqa: E402

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")
TARGET_VOLUME_S = 6.0
TARGET_CORRELATION = 0.999


# --------------------------------------------------------------------------- the CPU's peak
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_clock_ghz() -> float | None:
    """The highest clock /proc/cpuinfo reports (GHz), else lscpu's maximum, else None."""
    mhz: list[float] = []
    with contextlib.suppress(OSError, ValueError):
        text = Path("/proc/cpuinfo").read_text()
        mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    if mhz:
        return max(mhz) / 1000
    try:
        import subprocess

        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("CPU max MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError, subprocess.CalledProcessError):
        pass
    return None


def flops_per_cycle(flags: set[str]) -> dict[str, tuple[int, str]]:
    """FLOPs per cycle per core for fp32 and bf16 and the unit that gives them."""
    if "avx512f" in flags:
        fp32 = (64, "AVX-512 FMA, 2 units x 16 fp32 lanes x 2")
    elif "fma" in flags:
        fp32 = (32, "AVX2 FMA, 2 units x 8 fp32 lanes x 2")
    else:
        fp32 = (8, "SSE, no FMA")
    if "amx_bf16" in flags:
        bf16 = (2048, "AMX, 1024 bf16 multiply-adds per cycle")
    elif "avx512_bf16" in flags:
        bf16 = (128, "AVX-512 BF16, 2 units x 32 bf16 pairs x 2")
    else:
        bf16 = fp32  # no bf16 units: bf16 is converted and computed in fp32 at best
    return {"fp32": fp32, "bf16": bf16}


# --------------------------------------------------------------------------- FLOPs
def counted_flops(spec: ModelSpec, *, batch: int, backward: bool) -> int:
    """FLOPs of a forward (and backward) pass, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = spec.build_model()
        x = torch.empty((batch, spec.unet.in_channels, *spec.grid.shape))
        t = torch.full((batch,), 500.0)
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            model.train()
            model(x, timesteps=t).square().mean().backward()
        else:
            with torch.no_grad():
                model(x, timesteps=t)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- timings
def sampling_step(model: torch.nn.Module, spec: ModelSpec):
    x = torch.randn((1, spec.unet.in_channels, *spec.grid.shape), generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 500.0)

    def step(precision: str) -> None:
        with torch.inference_mode(), autocast(CPU, precision):
            model(x, timesteps=t)

    return step


def training_step(spec: ModelSpec, *, batch: int):
    torch.manual_seed(0)
    model = spec.build_model().train()
    generator = torch.Generator().manual_seed(0)
    shape = (batch, spec.unet.in_channels, *spec.grid.shape)
    x, target = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    t = torch.randint(0, spec.schedule.num_train_timesteps, (batch,), generator=generator)

    def step(precision: str) -> None:
        with autocast(CPU, precision):
            pred = model(x=x, timesteps=t)
        torch.nn.functional.mse_loss(pred.float(), target).backward()
        model.zero_grad(set_to_none=True)

    return step


def interleaved(step, *, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs per precision, fp32 and bf16 alternating, after a warm-up each."""
    for precision in PRECISIONS:
        step(precision)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for precision in PRECISIONS:
            start = time.perf_counter()
            step(precision)
            times[precision].append(time.perf_counter() - start)
    return times


def volume(model, spec, *, precision: str, seed: int) -> tuple[np.ndarray, float, str, str]:
    """One default volume: (array, seconds, resolved precision, reason)."""
    request = GenerationRequest(
        spec=spec, seeds=[seed], settings=default_settings(spec), device="cpu", precision=precision
    )
    request = resolve_precision(model, request)  # timed once, cached: not part of the volume's time
    start = time.perf_counter()
    (array,) = [v.array for e in generate(model, request) for v in e.finished]
    return array, time.perf_counter() - start, request.precision, request.precision_reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, comma-separated (1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per precision (5)")
    parser.add_argument("--volume-repeats", type=int, default=3, help="whole default volumes per precision (3)")
    parser.add_argument("--train-batch", type=int, default=4, help="training batch (4)")
    parser.add_argument(
        "--volume-threads", type=int, help="threads for auto and the whole volumes (default: one per physical core)"
    )
    parser.add_argument("--no-training-auto", action="store_true", help="skip auto's timed training step")
    parser.add_argument("--checkpoint", help="default: the bundled demo model")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    thread_counts = [int(n) for n in args.threads.split(",") if n.strip()]
    os.environ["BRAINSYNTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-precision-")  # auto times afresh

    path = args.checkpoint or bundled_checkpoint()
    ckpt = load_checkpoint(path)
    spec = ckpt.spec
    model = ckpt.build_model().eval()
    train_spec = PRESETS["demo"]
    has_bf16 = bf16_support(CPU)
    flags = cpu_flags()
    clock = cpu_clock_ghz()
    per_cycle = flops_per_cycle(flags)
    cores = physical_cores_available()
    sample_flops = counted_flops(spec, batch=1, backward=False)
    train_flops = counted_flops(train_spec, batch=args.train_batch, backward=True)
    results: dict = {
        "cpu": _cpu_model(),
        "bf16_units": has_bf16,
        "physical_cores_available": cores,
        "clock_ghz": clock,
        "flops_per_cycle_per_core": {p: {"flops": n, "unit": u} for p, (n, u) in per_cycle.items()},
        "peak_note": "estimate: threads x clock x FLOPs/cycle/core; the clock is what /proc/cpuinfo reports",
        "torch": torch.__version__,
        "model": str(path),
        "grid": list(spec.grid.shape),
        "sampling_step_gflop": sample_flops / 1e9,
        "training_step_gflop": train_flops / 1e9,
        "training_batch": args.train_batch,
        "repeats": args.repeats,
        "load_average_start": os.getloadavg()[0],
        "rows": [],
    }
    print(f"CPU: {results['cpu']}; bf16 units: {has_bf16 or 'none'}; {cores} physical core(s) available")
    clock_text = f"{clock:.2f} GHz" if clock else "unknown clock"
    print(
        f"peak (estimate) per core at {clock_text}: fp32 {per_cycle['fp32'][0]} FLOP/cycle ({per_cycle['fp32'][1]}), "
        f"bf16 {per_cycle['bf16'][0]} FLOP/cycle ({per_cycle['bf16'][1]})"
    )
    print(
        f"FLOPs: sampling step (batch 1) {sample_flops / 1e9:.1f} GFLOP; training step (batch {args.train_batch}, "
        f"forward + backward) {train_flops / 1e9:.1f} GFLOP"
    )
    header = (
        f"{'task':<10}{'threads':>8}{'precision':>10}{'s/step':>10}{'GFLOP/s':>10}{'of peak':>9}{'bf16 speed-up':>15}"
    )
    print(header)
    train = training_step(train_spec, batch=args.train_batch)
    sample = sampling_step(model, spec)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for task, step, flops in (("sampling", sample, sample_flops), ("training", train, train_flops)):
            times = interleaved(step, repeats=args.repeats)
            medians = {p: statistics.median(times[p]) for p in PRECISIONS}
            for precision in PRECISIONS:
                gflops = flops / medians[precision] / 1e9
                peak = threads * clock * per_cycle[precision][0] if clock else None
                row = {
                    "task": task,
                    "threads": threads,
                    "precision": precision,
                    "s_per_step_median": medians[precision],
                    "s_per_step_all": times[precision],
                    "gflops": gflops,
                    "peak_gflops_estimate": peak,
                    "share_of_peak": gflops / peak if peak else None,
                    "bf16_speedup": medians["fp32"] / medians["bf16"],
                }
                results["rows"].append(row)
                share = f"{row['share_of_peak']:.1%}" if peak else "n/a"
                speedup = f"{row['bf16_speedup']:.2f}x" if precision == "bf16" else ""
                print(
                    f"{task:<10}{threads:>8}{precision:>10}{medians[precision]:>10.4f}{gflops:>10.1f}{share:>9}"
                    f"{speedup:>15}"
                )
    # auto, at one thread per physical core (what sample and train use by default)
    cores = args.volume_threads or cores
    torch.set_num_threads(cores)
    if not args.no_training_auto:
        from engine.training.precision import choose_training_precision

        train_choice = choose_training_precision("auto", device=CPU, spec=train_spec, batch_size=args.train_batch)
        results["auto_training"] = {"precision": train_choice.precision, "reason": train_choice.reason}
        print(f"auto, training ({cores} threads): {train_choice.reason}")

    volumes: dict[str, list[float]] = {"fp32": [], "auto": []}
    arrays: dict[str, np.ndarray] = {}
    auto_choice = reason = None
    # No warm-up volume: the step timings above warmed the model up; auto's own timing (or its
    # cache) runs in resolve_precision, outside the volume's time.
    for repeat in range(args.volume_repeats):
        for precision in ("fp32", "auto"):
            array, seconds, chosen, why = volume(model, spec, precision=precision, seed=0)
            volumes[precision].append(seconds)
            if repeat == 0:
                arrays[precision] = array
            if precision == "auto":
                auto_choice, reason = chosen, why
    a, b = arrays["fp32"].ravel().astype(np.float64), arrays["auto"].ravel().astype(np.float64)
    correlation = float(np.corrcoef(a, b)[0, 1])
    rms = float(np.sqrt(np.mean((a - b) ** 2)))
    settings = default_settings(spec)
    results["auto_sampling"] = {"precision": auto_choice, "reason": reason}
    results["default_volume"] = {
        "sampler": settings.name,
        "steps": settings.steps,
        "threads": cores,
        "seconds_fp32_median": statistics.median(volumes["fp32"]),
        "seconds_auto_median": statistics.median(volumes["auto"]),
        "seconds_fp32_all": volumes["fp32"],
        "seconds_auto_all": volumes["auto"],
        "auto_over_fp32": statistics.median(volumes["auto"]) / statistics.median(volumes["fp32"]),
        "target_seconds_auto": TARGET_VOLUME_S,
        "same_seed_correlation_auto_vs_fp32": correlation,
        "same_seed_rms_auto_vs_fp32_model_units": rms,
        "target_correlation": TARGET_CORRELATION,
    }
    results["load_average_end"] = os.getloadavg()[0]
    dv = results["default_volume"]
    print(f"auto, sampling ({cores} threads): {reason}")
    print(
        f"default volume ({settings.name} {settings.steps}, {cores} threads): auto ({auto_choice}) "
        f"{dv['seconds_auto_median']:.1f} s (target < {TARGET_VOLUME_S:g} s), fp32 {dv['seconds_fp32_median']:.1f} s, "
        f"ratio {dv['auto_over_fp32']:.2f}"
    )
    print(
        f"same seed, auto vs fp32: correlation {correlation:.5f} (target >= {TARGET_CORRELATION}), "
        f"RMS {rms:.4f} model units"
    )
    print(
        f"load average: {results['load_average_start']:.1f} at the start, {results['load_average_end']:.1f} at the end"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


def _cpu_model() -> str:
    from engine.precision import _cpu_model as model_name

    return model_name()


if __name__ == "__main__":
    sys.exit(main())
