"""The paper preset (84 x 128 x 84, batch 1) on an NVIDIA GPU: speed, memory, FLOPs, utilisation.

Usage::

    python benchmarks/gpu_paper_preset.py [--steps 10] [--peak-tflops 989] [--out gpu.json]
    python benchmarks/gpu_paper_preset.py --cpu-check     # FLOP count only, no GPU needed

For each configuration (fp32; fp32 with MONAI's ``use_flash_attention=True``, i.e. PyTorch's
``scaled_dot_product_attention``; bf16 autocast; bf16 autocast with flash attention) it runs
our sampler through :func:`engine.generation.generate` (DDIM, ``--steps`` steps, one warm-up
run first) and reports

* seconds per denoising step (wall time of the whole run / steps, the GPU synchronised at the
  end by the final copy to the host),
* peak GPU memory (``torch.cuda.max_memory_allocated``, weights included, MiB),
* the achieved share of the GPU's dense bf16 peak: forward FLOPs / seconds per step /
  (``--peak-tflops`` * 1e12). 989 TFLOP/s is the H100/H200 SXM dense bf16 figure; for fp32 the
  share is of the same bf16 peak, so the runs compare on one scale.

Forward FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (shapes only, no arithmetic): convolutions and matrix products, 2 FLOPs per
multiply-add; normalisations and activations are not counted. Expected ≈ 15.4 TFLOP per
forward of the paper preset at batch 1.

Without CUDA the script says so and exits with status 2 (``--cpu-check`` still works). The
default run takes well under 5 minutes on an H100/H200.
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


def run_configuration(spec: ModelSpec, *, precision: str, flash: bool, steps: int) -> dict:
    from engine.generation import GenerationRequest, generate
    from engine.samplers import SamplerSettings

    torch.manual_seed(0)
    model = spec.build_model(use_flash_attention=flash).to("cuda").eval()
    settings = SamplerSettings("ddim", steps)

    def one_run(net: torch.nn.Module, seed: int) -> float:
        start = time.perf_counter()
        for event in generate(
            net,
            GenerationRequest(
                spec=spec, seeds=[seed], settings=settings, device="cuda", preview_every=0, precision=precision
            ),
        ):
            if event.finished:
                _ = event.finished[0].array  # already copied to the host: the GPU is done
        torch.cuda.synchronize()
        return time.perf_counter() - start

    one_run(model, 0)  # warm-up: cuDNN algorithm choice, allocator growth
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = one_run(model, 1)
    peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    return {"s_per_step": seconds / steps, "peak_mib": peak / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed DDIM steps per configuration (default 10)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM: 989)"
    )
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
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
    }
    if args.cpu_check:
        _write(args.out, results)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU found: this benchmark needs an NVIDIA GPU (use --cpu-check for the FLOP count only)")
        return 2

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    props = torch.cuda.get_device_properties(0)
    results.update(
        {
            "gpu": props.name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "peak_tflops": args.peak_tflops,
            "steps": args.steps,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": args.cudnn_benchmark,
            "configurations": {},
        }
    )
    print(
        f"GPU: {props.name}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
        f"{torch.backends.cuda.matmul.allow_tf32}"
    )
    print(f"{'configuration':<20}{'s/step':>10}{'peak MiB':>12}{'TFLOP/s':>10}{'of peak':>10}")
    started = time.perf_counter()
    for name, precision, flash in (
        ("fp32", "fp32", False),
        ("fp32 + flash", "fp32", True),
        ("bf16", "bf16", False),
        ("bf16 + flash", "bf16", True),
    ):
        try:
            row = run_configuration(spec, precision=precision, flash=flash, steps=args.steps)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # one failing mode must not hide the others
            results["configurations"][name] = {"error": str(exc).splitlines()[0]}
            print(f"{name:<20} failed: {str(exc).splitlines()[0]}")
            torch.cuda.empty_cache()
            continue
        achieved = (flops_flash if flash else flops) / row["s_per_step"] / 1e12
        row.update({"achieved_tflops": achieved, "share_of_bf16_peak": achieved / args.peak_tflops})
        results["configurations"][name] = row
        print(
            f"{name:<20}{row['s_per_step']:>10.4f}{row['peak_mib']:>12.0f}{achieved:>10.1f}"
            f"{row['share_of_bf16_peak']:>10.1%}"
        )
    results["total_seconds"] = time.perf_counter() - started
    _write(args.out, results)
    return 0


def _write(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
