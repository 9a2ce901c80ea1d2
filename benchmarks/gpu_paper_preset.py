"""The paper preset (84 x 128 x 84) on an NVIDIA GPU: sampling and training speed, memory, FLOPs, utilisation.

Usage::

    python benchmarks/gpu_paper_preset.py [--steps 10] [--peak-tflops 989] [--out gpu.json]
    python benchmarks/gpu_paper_preset.py --device cpu --preset tiny --steps 2   # every code path, on a CPU
    python benchmarks/gpu_paper_preset.py --cpu-check     # FLOP count only, no GPU needed

**Sampling, four configurations** (fp32; fp32 with MONAI's ``use_flash_attention=True``, i.e.
PyTorch's ``scaled_dot_product_attention``; bf16 autocast; bf16 autocast with flash
attention): our sampler through :func:`engine.generation.generate` (DDIM, ``--steps`` steps,
one warm-up run first).

**Extended** (bf16 autocast and flash attention throughout; skipped with ``--basic-only``):

* training: forward and backward of an MSE loss at batch 1 and 2 (target: >= 40 % of the
  bf16 peak);
* one UNet step, eager and with ``channels_last_3d`` weights and input;
* one UNet step compiled by :func:`engine.compilation.compiled_call` (``torch.compile``) in
  each of ``--compile-modes``: ``default``, ``max-autotune-no-cudagraphs`` (autotuned kernels)
  and ``max-autotune`` (the same plus CUDA graphs, which replay the fixed-shape step's
  kernels without launching each from Python); the compile and warm-up time is reported;
  target: <= 40 ms and >= 50 % of the bf16 peak;
* whole volumes through the engine, eager and compiled in the engine's own mode for the
  device (what ``brainsynth-cli sample --compile`` does): DPM-Solver++ 25 steps (target
  <= 1.5 s) and DDPM 1000 steps, estimated from a 50-step run (target <= 40 s).

Each figure comes with peak GPU memory (``torch.cuda.max_memory_allocated`` since the
configuration started, weights included, MiB) and the achieved share of the GPU's dense
bf16 peak: FLOPs / seconds / (``--peak-tflops`` * 1e12). 989 TFLOP/s is the H100/H200 SXM
dense bf16 figure; fp32 runs are given as a share of the same bf16 peak, so all compare on
one scale. Measurements stop being started after ``--budget-s`` seconds (default 240) so the
whole script stays under 5 minutes even when compiling is slow; a skipped one says so.

FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (shapes only, no arithmetic): convolutions and matrix products, 2 FLOPs per
multiply-add; normalisations and activations are not counted. Expected ≈ 15.4 TFLOP per
forward of the paper preset at batch 1; training counts forward and backward.

Without CUDA the script says so and exits with status 2 (``--device cpu`` and ``--cpu-check``
still work; on the CPU the figures check the code paths, they are no GPU prediction).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.specs import PRESETS, ModelSpec


def forward_flops(spec: ModelSpec, *, batch: int = 1, use_flash_attention: bool = False) -> int:
    """FLOPs of one forward pass, counted on the meta device (no memory, no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = spec.build_model(use_flash_attention=use_flash_attention)
        x = torch.empty((batch, spec.unet.in_channels, *spec.grid.shape))
        t = torch.full((batch,), 500.0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, timesteps=t)
    return int(counter.get_total_flops())


def run_configuration(
    spec: ModelSpec, *, precision: str, flash: bool, steps: int, device: torch.device | None = None
) -> dict:
    from engine.generation import GenerationRequest, generate
    from engine.samplers import SamplerSettings

    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = spec.build_model(use_flash_attention=flash).to(device).eval()
    settings = SamplerSettings("ddim", steps)

    def one_run(net: torch.nn.Module, seed: int) -> float:
        start = time.perf_counter()
        for event in generate(
            net,
            GenerationRequest(
                spec=spec, seeds=[seed], settings=settings, device=str(device), preview_every=0, precision=precision
            ),
        ):
            if event.finished:
                _ = event.finished[0].array  # already copied to the host: the GPU is done
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    one_run(model, 0)  # warm-up: cuDNN algorithm choice, allocator growth
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = one_run(model, 1)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"s_per_step": seconds / steps, "peak_mib": peak / 2**20 if peak is not None else None}


def train_flops(spec: ModelSpec, *, batch: int, use_flash_attention: bool = True) -> int:
    """FLOPs of one training pass (forward and backward of an MSE loss), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = spec.build_model(use_flash_attention=use_flash_attention).train()
        x = torch.empty((batch, spec.unet.in_channels, *spec.grid.shape))
        t = torch.full((batch,), 500.0)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, timesteps=t).square().mean().backward()
    return int(counter.get_total_flops())


class Bench:
    """Timings on one device, each with its peak memory and share of the bf16 peak."""

    def __init__(self, spec: ModelSpec, device: torch.device, *, peak_tflops: float, steps: int) -> None:
        self.spec, self.device, self.peak, self.steps = spec, device, peak_tflops, steps
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

    def model(self, *, flash: bool, channels_last: bool = False) -> torch.nn.Module:
        torch.manual_seed(0)
        model = self.spec.build_model(use_flash_attention=flash).to(self.device).eval()
        return model.to(memory_format=torch.channels_last_3d) if channels_last else model

    def inputs(self, batch: int, *, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.spec.unet.in_channels, *self.spec.grid.shape)
        x = torch.randn(shape, device=self.device, generator=torch.Generator(self.device).manual_seed(0))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, torch.full((batch,), 500.0, device=self.device)

    def unet_steps(self, call, x: torch.Tensor, t: torch.Tensor, *, warmup: int = 2) -> float:
        """Seconds per call of ``call(x, timesteps=t)``, the device synchronised at the end."""
        with torch.inference_mode():
            for _ in range(warmup):
                call(x, timesteps=t)
            self.sync()
            start = time.perf_counter()
            for i in range(self.steps):
                call(x, timesteps=t - float(i))  # a new timestep every step, as in sampling
            self.sync()
        return (time.perf_counter() - start) / self.steps

    def training_steps(self, batch: int, *, flash: bool, precision: str) -> float:
        from engine.precision import autocast

        torch.manual_seed(0)
        model = self.spec.build_model(use_flash_attention=flash).to(self.device).train()
        x, _ = self.inputs(batch)
        target = torch.randn_like(x)
        t = torch.randint(0, self.spec.schedule.num_train_timesteps, (batch,), device=self.device)

        def step() -> None:
            with autocast(self.device, precision):
                pred = model(x=x, timesteps=t)
            torch.nn.functional.mse_loss(pred.float(), target).backward()
            model.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.steps):
            step()
        self.sync()
        return (time.perf_counter() - start) / self.steps

    def volume_seconds(self, model: torch.nn.Module, *, sampler: str, steps: int, precision: str, compile: bool):
        """Wall seconds of one whole volume through :func:`engine.generation.generate` (after a warm-up volume)."""
        from engine.generation import GenerationRequest, generate
        from engine.samplers import SamplerSettings

        def once(seed: int) -> float:
            request = GenerationRequest(
                spec=self.spec,
                seeds=[seed],
                settings=SamplerSettings(sampler, steps),
                device=str(self.device),
                precision=precision,
                compile=compile,
            )
            start = time.perf_counter()
            for _ in generate(model, request):
                pass
            self.sync()
            return time.perf_counter() - start

        once(0)
        return once(1)


TARGETS = {
    "unet_step_s": 0.040,
    "unet_share": 0.50,
    "dpmpp25_volume_s": 1.5,
    "ddpm1000_volume_s": 40.0,
    "training_share": 0.40,
}


def extended(bench: Bench, results: dict, *, flops: int, flops_flash: int, budget_s: float, modes: list[str]) -> None:
    """Training, channels_last_3d, torch.compile (with and without CUDA graphs) and whole volumes."""
    from engine.compilation import compiled_call, uses_cuda_graphs
    from engine.precision import autocast

    started = time.perf_counter()
    rows = results.setdefault("extended", {})
    peak = bench.peak

    def over_budget(name: str) -> bool:
        if time.perf_counter() - started > budget_s:
            rows[name] = {"skipped": f"time budget of {budget_s:.0f} s spent"}
            print(f"{name:<44} skipped: the time budget of {budget_s:.0f} s is spent")
            return True
        return False

    def record(name: str, seconds: float, work: int, target_share: float, target_s: float | None = None) -> None:
        achieved = work / seconds / 1e12
        row = {
            "s_per_step": seconds,
            "peak_mib": bench.peak_mib(),
            "achieved_tflops": achieved,
            "share_of_bf16_peak": achieved / peak,
            "target_share": target_share,
        }
        if target_s is not None:
            row["target_s_per_step"] = target_s
        rows[name] = row
        mem = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
        target = f"(target >= {target_share:.0%}" + (f", <= {target_s * 1000:.0f} ms)" if target_s else ")")
        print(f"{name:<44}{seconds:>10.4f}{mem:>10}{achieved:>9.2f}{row['share_of_bf16_peak']:>9.1%}  {target}")

    def attempt(name: str, run) -> None:
        if over_budget(name):
            return
        try:
            bench.reset_memory()
            run()
        except Exception as exc:  # one failing mode must not hide the others (OOM, compiler errors)
            rows[name] = {"error": str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}
            print(f"{name:<44} failed: {rows[name]['error']}")
            if bench.cuda:
                torch.cuda.empty_cache()

    print(
        f"\n{'extended (bf16 autocast, flash attention)':<44}{'s/step':>10}{'peak MiB':>10}{'TFLOP/s':>9}{'of peak':>9}"
    )
    for batch in (1, 2):
        work = train_flops(bench.spec, batch=batch)
        results.setdefault("training_flops", {})[str(batch)] = work
        attempt(
            f"training, batch {batch} (forward + backward)",
            lambda b=batch, w=work: record(
                f"training, batch {b} (forward + backward)",
                bench.training_steps(b, flash=True, precision="bf16"),
                w,
                TARGETS["training_share"],
            ),
        )

    def eager(channels_last: bool) -> None:
        model = bench.model(flash=True, channels_last=channels_last)
        x, t = bench.inputs(1, channels_last=channels_last)

        def call(x, *, timesteps):
            with autocast(bench.device, "bf16"):
                return model(x, timesteps=timesteps)

        name = "UNet step, eager" + (", channels_last_3d" if channels_last else "")
        record(name, bench.unet_steps(call, x, t), flops_flash, TARGETS["unet_share"], TARGETS["unet_step_s"])

    attempt("UNet step, eager", lambda: eager(False))
    attempt("UNet step, eager, channels_last_3d", lambda: eager(True))
    compiled_models: dict[str, torch.nn.Module] = {}
    for mode in modes:
        name = f"UNet step, torch.compile {mode}"
        if uses_cuda_graphs(mode, bench.device):
            name += " (CUDA graphs)"

        def run_compiled(mode=mode, name=name) -> None:
            model = bench.model(flash=True)
            x, t = bench.inputs(1)
            begin = time.perf_counter()
            call = compiled_call(model, device=bench.device, sample_shape=tuple(x.shape), precision="bf16", mode=mode)
            compile_s = time.perf_counter() - begin
            record(name, bench.unet_steps(call, x, t), flops_flash, TARGETS["unet_share"], TARGETS["unet_step_s"])
            rows[name]["compile_and_warmup_s"] = compile_s
            compiled_models[mode] = model
            print(f"{'':<44}(compiling and warming up took {compile_s:.1f} s)")

        attempt(name, run_compiled)

    # Whole volumes through the engine: eager, and compiled in the engine's own mode for this device.
    from engine.compilation import default_mode

    def volumes() -> None:
        model = bench.model(flash=True)
        for label, compile in (("eager", False), (f"compiled ({default_mode(bench.device)})", True)):
            if compile and default_mode(bench.device) not in compiled_models:
                continue
            if compile:
                model = compiled_models[default_mode(bench.device)]  # its compiled call is cached
            dpm = bench.volume_seconds(model, sampler="dpmpp-2m", steps=25, precision="bf16", compile=compile)
            ddpm50 = bench.volume_seconds(model, sampler="ddpm", steps=50, precision="bf16", compile=compile)
            ddpm1000 = ddpm50 / 50 * 1000
            rows[f"volume, {label}"] = {
                "dpmpp2m_25_s": dpm,
                "ddpm_1000_s_estimated_from_50_steps": ddpm1000,
                "target_dpmpp2m_25_s": TARGETS["dpmpp25_volume_s"],
                "target_ddpm_1000_s": TARGETS["ddpm1000_volume_s"],
            }
            print(
                f"volume, {label}: DPM-Solver++ 25 steps {dpm:.2f} s (target <= {TARGETS['dpmpp25_volume_s']} s); "
                f"DDPM 1000 steps ~{ddpm1000:.1f} s, from 50 steps (target <= {TARGETS['ddpm1000_volume_s']:.0f} s)"
            )

    attempt("volumes", volumes)
    results["extended_seconds"] = time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device (H100/H200 SXM: 989)"
    )
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu: cpu with --preset tiny runs "
                        "every code path in seconds, to check the script before a GPU is lent")  # fmt: skip
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
    parser.add_argument(
        "--compile-modes",
        default=None,
        help="torch.compile modes to time, comma-separated (GPU default: default,max-autotune-no-cudagraphs,"
        "max-autotune; CPU: default)",
    )
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no extended measurement after this (240)")
    parser.add_argument("--basic-only", action="store_true", help="only the four sampling configurations")
    parser.add_argument("--cpu-check", action="store_true", help="only count FLOPs (no GPU needed)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    spec = PRESETS[args.preset]

    flops = forward_flops(spec)
    flops_flash = forward_flops(spec, use_flash_attention=True)
    print(f"{spec.name} preset, grid {'x'.join(map(str, spec.grid.shape))}, batch 1")
    print(
        f"forward FLOPs: {flops / 1e12:.3f} TFLOP = {flops / 1e9:.2f} GFLOP "
        f"({flops_flash / 1e9:.2f} GFLOP with flash attention)"
    )
    results: dict = {
        "preset": spec.name,
        "grid": list(spec.grid.shape),
        "forward_flops": flops,
        "forward_flops_flash": flops_flash,
        "targets": TARGETS,
    }
    if args.cpu_check:
        _write(args.out, results)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU found: this benchmark needs an NVIDIA GPU (--device cpu --preset tiny checks the script)")
        return 2
    default_modes = "default,max-autotune-no-cudagraphs,max-autotune" if device.type == "cuda" else "default"
    modes = [m for m in (default_modes if args.compile_modes is None else args.compile_modes).split(",") if m]
    started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        props = torch.cuda.get_device_properties(device)
        results.update(
            {
                "gpu": props.name,
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_benchmark": args.cudnn_benchmark,
            }
        )
        print(
            f"GPU: {props.name}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32}"
        )
    else:
        results.update({"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads()})
        print(f"CPU check run ({torch.get_num_threads()} threads): code paths, not figures")
    results.update({"peak_tflops": args.peak_tflops, "steps": args.steps, "configurations": {}})
    print(f"{'configuration':<20}{'s/step':>10}{'peak MiB':>12}{'TFLOP/s':>10}{'of peak':>10}")
    for name, precision, flash in (
        ("fp32", "fp32", False),
        ("fp32 + flash", "fp32", True),
        ("bf16", "bf16", False),
        ("bf16 + flash", "bf16", True),
    ):
        try:
            row = run_configuration(spec, precision=precision, flash=flash, steps=args.steps, device=device)
        except Exception as exc:  # one failing mode (OOM, no bf16 here) must not hide the others
            results["configurations"][name] = {"error": str(exc).splitlines()[0]}
            print(f"{name:<20} failed: {str(exc).splitlines()[0]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        achieved = (flops_flash if flash else flops) / row["s_per_step"] / 1e12
        row.update({"achieved_tflops": achieved, "share_of_bf16_peak": achieved / args.peak_tflops})
        results["configurations"][name] = row
        mem = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
        print(f"{name:<20}{row['s_per_step']:>10.4f}{mem:>12}{achieved:>10.1f}{row['share_of_bf16_peak']:>10.1%}")
    if not args.basic_only:
        bench = Bench(spec, device, peak_tflops=args.peak_tflops, steps=args.steps)
        remaining = args.budget_s - (time.perf_counter() - started)
        extended(bench, results, flops=flops, flops_flash=flops_flash, budget_s=remaining, modes=modes)
    results["total_seconds"] = time.perf_counter() - started
    print(f"total {results['total_seconds']:.0f} s")
    _write(args.out, results)
    return 0


def _write(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
