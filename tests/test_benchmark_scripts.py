"""The GPU benchmark's code paths run on the CPU with the tiny preset (so the script works before a GPU is lent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_every_eager_path_on_the_cpu(tmp_path):
    """Training at batch 1 and 2, eager and channels_last_3d steps, whole volumes; compiled steps are
    left out here (``--compile-modes ''``): tests/test_compilation.py compiles, once per session."""
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_paper_preset.py"), "--device", "cpu", "--preset",
               "tiny", "--steps", "1", "--compile-modes", "", "--peak-tflops", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert set(results["configurations"]) == {"fp32", "fp32 + flash", "bf16", "bf16 + flash"}
    assert results["configurations"]["fp32"]["s_per_step"] > 0
    rows = results["extended"]
    for name in ("training, batch 1 (forward + backward)", "training, batch 2 (forward + backward)",
                 "UNet step, eager", "UNet step, eager, channels_last_3d"):  # fmt: skip
        assert rows[name]["s_per_step"] > 0, rows[name]
        assert rows[name]["share_of_bf16_peak"] > 0, rows[name]
    assert rows["volume, eager"]["dpmpp2m_25_s"] > 0
    assert results["training_flops"]["2"] > results["training_flops"]["1"] > 2 * results["forward_flops_flash"]
    assert "target >= 40%" in done.stdout
    assert "target <= 1.5 s" in done.stdout


def test_the_latent_diffusion_benchmark_runs_on_tiny_presets(tmp_path):
    out = tmp_path / "ldm.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_ldm.py"), "--latent", "ldm-tiny", "--pixel", "tiny",
               "--threads", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["ldm-tiny"]["s_per_step"] > 0
    assert results["ldm-tiny"]["decode_s"] > 0
    assert results["ldm-tiny"]["decode_tile"] is None  # fits the budget whole
    assert results["tiny"]["volume_s"]["ddpm 1000"] > 0
