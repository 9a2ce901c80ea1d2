"""Our sampling loop against MONAI's, and DDIM against DPM-Solver++(2M), in one process.

Usage::

    python benchmarks/bench_sampling.py [--preset demo] [--steps 20] [--repeats 3] [--threads 1]
                                        [--checkpoint CKPT] [--out results.json]

Part (a), speed and memory: the same model (``--preset``, random weights, or a checkpoint)
and the same x_T, DDPM with ``--steps`` steps, run by

* ours: :func:`engine.generation.generate` (the path the CLI and GUI take: streaming, per-seed
  generators) keeping ``--frames`` trajectory frames of x_t and x_0, and
* MONAI: ``DiffusionInferer.sample`` with ``DDPMScheduler.set_timesteps(steps)``
  (whose few-step output is wrong, see engine/samplers.py, but whose cost is the reference).

One warm-up run each, then ``--repeats`` alternating runs; the figures are the median seconds
per step and the ratio ours / MONAI (target <= 1.0), also as the median of the ratios of
back-to-back pairs and as the ratio of the fastest runs, which are steadier on a shared
machine. Peak memory: each variant runs once
more in a fresh child process (Linux), where a thread samples the resident set size every
millisecond; the figure is the peak during the sampling run minus the size just before it,
i.e. the extra memory sampling needed on top of the loaded model (activations, trajectory
frames). The child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` so that glibc returns every
freed tensor to the system at once and the resident set follows the live tensors. Why not
tracemalloc: it sees only Python's allocator, not PyTorch's tensors. Why not ``ru_maxrss``:
it is the process's high-water mark, which importing torch and MONAI already sets above a
small model's needs. Why a child process: a second variant in the same process would reuse
memory the first one's allocator kept.

Part (b), accuracy per step: on ``--ode-preset`` (tiny by default, to stay fast) with the
schedule's ``clip_sample`` off (clamping makes the ODE non-smooth), the reference is DDIM
with all T steps from the same x_T, a fine discretisation of the probability-flow ODE.
For N in ``--ode-steps`` both deterministic samplers report the RMSE of the final sample
against it, relative to the reference's RMS; then DDIM step counts are tried until DDIM's
error falls to DPM-Solver++'s at 20 steps. An untrained UNet is no denoiser, so the figures
speak to solver accuracy, not image quality; the analytic Gaussian-data case (exact ODE
solution known) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.generation import GenerationRequest, generate
from engine.samplers import SamplerSettings, denoise, initial_noise
from engine.specs import PRESETS, ModelSpec, ScheduleSpec

SEED = 2024


def load_model(preset: str, checkpoint: str | None) -> tuple[ModelSpec, torch.nn.Module, str]:
    """The model to time: a checkpoint's, or the preset with random (non-zero) weights."""
    if checkpoint:
        from engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint, preset=preset)
        return ckpt.spec, ckpt.build_model(), f"checkpoint {checkpoint}"
    spec = PRESETS[preset]
    torch.manual_seed(0)
    model = spec.build_random_model(seed=0)
    return spec, model.eval(), f"{preset} preset, random weights"


def run_ours(model, spec: ModelSpec, steps: int, frames: int) -> torch.Tensor:
    settings = SamplerSettings("ddpm", steps)
    for event in generate(
        model,
        GenerationRequest(
            spec=spec, seeds=[SEED], settings=settings, device="cpu", trajectory_frames=frames, preview_every=0
        ),
    ):
        if event.finished:
            volume = event.finished[0]
    return torch.from_numpy(volume.array)


def run_monai(model, spec: ModelSpec, steps: int) -> torch.Tensor:
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    scheduler = DDPMScheduler(**spec.schedule.monai_kwargs())
    scheduler.set_timesteps(steps)
    x_t, _ = initial_noise((spec.unet.in_channels, *spec.grid.shape), [SEED])
    torch.manual_seed(SEED + 1)
    with torch.inference_mode():
        return DiffusionInferer(scheduler).sample(input_noise=x_t, diffusion_model=model, verbose=False)[0, 0]


def timing(model, spec: ModelSpec, *, steps: int, frames: int, repeats: int) -> dict:
    run_ours(model, spec, steps, frames)  # warm-up: allocations, kernel selection
    run_monai(model, spec, steps)
    ours, monai = [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both alike
        start = time.perf_counter()
        run_ours(model, spec, steps, frames)
        ours.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        run_monai(model, spec, steps)
        monai.append((time.perf_counter() - start) / steps)
    return {
        "ours_s_per_step_median": statistics.median(ours),
        "monai_s_per_step_median": statistics.median(monai),
        "ratio_ours_over_monai": statistics.median(ours) / statistics.median(monai),
        # Each pair ran back to back, so its ratio cancels slow drifts in machine load.
        "ratio_paired_median": statistics.median(a / b for a, b in zip(ours, monai, strict=True)),
        "ratio_of_fastest": min(ours) / min(monai),
        "ours_s_per_step_all": ours,
        "monai_s_per_step_all": monai,
    }


def _current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS growth over one sampling run, printed as JSON (MiB).

    A thread samples the resident set size (/proc/self/statm) every millisecond; the figure is
    its maximum during the run minus its value just before. (The process's ``ru_maxrss``
    high-water mark is no use here: importing torch and MONAI already peaks higher than a
    small model's activations.) Memory freed by the model build and reused by sampling is not
    counted, alike for both variants.
    """
    import threading

    torch.set_num_threads(args.threads)
    spec, model, _ = load_model(args.preset, args.checkpoint)
    before = _current_rss_bytes()
    peak = before
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _current_rss_bytes())
            time.sleep(0.001)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    if args.memory_child == "ours":
        run_ours(model, spec, args.steps, args.frames)
    else:
        run_monai(model, spec, args.steps)
    done.set()
    poller.join()
    peak = max(peak, _current_rss_bytes())
    print(json.dumps({"peak_rss_growth_mib": (peak - before) / 2**20}))


def memory(args: argparse.Namespace) -> dict:
    out = {}
    for variant in ("ours", "monai"):
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            variant,
            "--preset",
            args.preset,
            "--steps",
            str(args.steps),
            "--frames",
            str(args.frames),
            "--threads",
            str(args.threads),
        ]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        # A fixed mmap threshold stops glibc from keeping freed tensor memory on its heap, so the
        # resident set follows the live tensors (without it the figure varied by ±40 %).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        out[f"{variant}_peak_rss_growth_mib"] = json.loads(result.stdout.strip().splitlines()[-1])[
            "peak_rss_growth_mib"
        ]
    return out


def final_sample(model, schedule: ScheduleSpec, noise: torch.Tensor, name: str, steps: int) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(0)]  # deterministic samplers draw nothing
    model.eval()
    *_, last = denoise(model, schedule, noise, generators, SamplerSettings(name, steps))
    return last.x_t


class GaussianDataEpsilon(torch.nn.Module):
    """Exact epsilon for data N(0, s^2 I): E[eps | x_t] = sqrt(1 - abar) x_t / (abar s^2 + 1 - abar)."""

    def __init__(self, schedule: ScheduleSpec, s2: float):
        super().__init__()
        self.abar, self.s2 = schedule.alphas_cumprod(), s2

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = float(self.abar[int(timesteps[0])])
        return x * (math.sqrt(1 - a) / (a * self.s2 + 1 - a))


def accuracy(
    model, schedule: ScheduleSpec, noise: torch.Tensor, reference: torch.Tensor, step_counts: list[int]
) -> dict:
    scale = float(reference.pow(2).mean().sqrt())

    def error(name: str, steps: int) -> float:
        return float((final_sample(model, schedule, noise, name, steps) - reference).pow(2).mean().sqrt()) / scale

    table = {n: {"ddim": error("ddim", n), "dpmpp-2m": error("dpmpp-2m", n)} for n in step_counts}
    target = table[20]["dpmpp-2m"] if 20 in table else error("dpmpp-2m", 20)
    match = None
    for n in (20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500):
        if n > schedule.num_train_timesteps:
            break
        e = table[n]["ddim"] if n in table else error("ddim", n)
        if e <= target:
            match = n
            break
    return {"relative_rmse": table, "dpmpp20_error": target, "ddim_steps_to_match_dpmpp20": match}


def ode_benchmarks(args: argparse.Namespace) -> dict:
    step_counts = [int(n) for n in args.ode_steps.split(",")]
    spec = PRESETS[args.ode_preset]
    schedule = replace(spec.schedule, clip_sample=False)
    _, model, _ = load_model(args.ode_preset, None)
    noise, _ = initial_noise((spec.unet.in_channels, *spec.grid.shape), [SEED])
    start = time.perf_counter()
    reference = final_sample(model, schedule, noise, "ddim", schedule.num_train_timesteps)
    unet = accuracy(model, schedule, noise, reference, step_counts)
    unet["reference"] = f"DDIM with all {schedule.num_train_timesteps} steps"
    unet["reference_seconds"] = time.perf_counter() - start

    s2 = 0.25
    gaussian_noise, _ = initial_noise((1, 16, 16, 16), [SEED])
    abar = schedule.alphas_cumprod()
    exact = gaussian_noise * math.sqrt(s2 / float(abar[-1] * s2 + 1 - abar[-1]))
    gaussian = accuracy(GaussianDataEpsilon(schedule, s2), schedule, gaussian_noise, exact, step_counts)
    gaussian["reference"] = "exact probability-flow ODE solution for data N(0, 0.25 I)"
    return {"preset": args.ode_preset, "clip_sample": False, "unet_random_weights": unet, "gaussian_data": gaussian}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--checkpoint", help="time a trained checkpoint instead of random weights")
    parser.add_argument("--steps", type=int, default=10, help="DDPM steps for the timing (default 10)")
    parser.add_argument("--frames", type=int, default=20, help="trajectory frames our loop keeps (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop (default 5)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: stable on a shared machine)"
    )
    parser.add_argument("--ode-preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--ode-steps", default="5,10,20,50")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-ode", action="store_true")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--memory-child", choices=("ours", "monai"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec, model, source = load_model(args.preset, args.checkpoint)
    results: dict = {
        "model": source,
        "grid": list(spec.grid.shape),
        "steps": args.steps,
        "trajectory_frames": min(args.frames, args.steps),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    results["timing"] = timing(model, spec, steps=args.steps, frames=args.frames, repeats=args.repeats)
    if not args.skip_memory:
        results["memory"] = memory(args)
    if not args.skip_ode:
        results["accuracy"] = ode_benchmarks(args)
    results["total_seconds"] = time.perf_counter() - started

    t = results["timing"]
    grid = "x".join(map(str, spec.grid.shape))
    print(f"(a) {source}, grid {grid}, DDPM {args.steps} steps, {args.threads} thread(s)")
    print(f"    {'':<28}{'s/step (median)':>16}{'peak RSS growth':>18}")
    mem = results.get("memory", {})
    kept = min(args.frames, args.steps)  # frame_indices keeps every step when frames >= steps
    for name, key in ((f"ours (generate, {kept} frames)", "ours"), ("MONAI DiffusionInferer", "monai")):
        growth = mem.get(f"{key}_peak_rss_growth_mib")
        growth_text = "" if growth is None else f"{growth:.1f} MiB"
        print(f"    {name:<28}{t[f'{key}_s_per_step_median']:>16.4f}{growth_text:>18}")
    print(
        f"    ratio ours / MONAI: {t['ratio_ours_over_monai']:.3f} (medians), "
        f"{t['ratio_paired_median']:.3f} (median of back-to-back pairs), {t['ratio_of_fastest']:.3f} (fastest runs)"
    )
    if "accuracy" in results:
        for label, key in (("random-weight UNet", "unet_random_weights"), ("Gaussian data", "gaussian_data")):
            block = results["accuracy"][key]
            print(f"(b) {label}: relative RMSE vs {block['reference']}")
            print(f"    {'steps':>6}{'DDIM':>12}{'DPM++(2M)':>12}")
            for n, row in block["relative_rmse"].items():
                print(f"    {n:>6}{row['ddim']:>12.2e}{row['dpmpp-2m']:>12.2e}")
            print(f"    DDIM steps to match DPM++ at 20 steps: {block['ddim_steps_to_match_dpmpp20'] or '> 500'}")
    print(f"total {results['total_seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
