"""Choosing the numeric precision at run time: bf16 autocast where the device runs it fast, fp32 elsewhere.

Whether bf16 pays depends on the hardware, not on a rule: a CPU with bf16 units (AVX-512
BF16 or AMX) ran the demo UNet about 2.6x faster under bf16 autocast than in fp32, while a
CPU with AVX2 only ran 3-D convolutions about 100x slower; a recent CUDA GPU runs bf16 about
twice as fast. So ``"auto"`` asks torch what the device supports and, where bf16 is
supported, times one model step in both precisions the first time a network runs on a device
(a few seconds), keeps the faster, and caches the verdict per network architecture, grid,
device and thread count in the user cache directory.

Only activations run in bf16 (``torch.autocast``): weights, optimizer state and EMA stay fp32,
and samplers cast the network output back to the dtype of x before any update.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import BrainSynthError, SamplingError

PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16")
#: bf16 is kept only when a step is at least this much faster (timings of a few steps are noisy).
MIN_SPEEDUP = 1.1

if TYPE_CHECKING:  # torch is imported where it is used, so argument parsers can read the names
    import torch


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why.

    Attributes:
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        reason: one line for progress output, the app's status and sidecars, e.g.
            ``"auto: bf16, 2.6x faster than fp32 here (0.054 vs 0.140 s per step)"``.
        seconds_per_step: measured ``{"fp32": s, "bf16": s}`` when a timing decided, else None.
    """

    precision: str
    reason: str
    seconds_per_step: dict[str, float] | None = None


def bf16_support(device: torch.device) -> str | None:
    """Why ``device`` can run bf16 fast (a short phrase), or None when it cannot."""
    import torch

    if device.type == "cuda":
        return "a CUDA GPU with bf16" if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        units = [
            name
            for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported"))
            if getattr(torch.cpu, check, lambda: False)()
        ]
        return f"a CPU with {' and '.join(units)}" if units else None
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a model call runs in: bf16 autocast, or nothing for fp32."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run (``"auto"`` always runs).

    Raises:
        SamplingError: an unknown name, or bf16 on a device without bf16 support.
    """
    if precision not in PRECISION_CHOICES:
        raise SamplingError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISION_CHOICES)}")
    if precision == "bf16" and bf16_support(device) is None:
        what = "CPU has no bf16 units (AVX-512 BF16 or AMX)" if device.type == "cpu" else f"{device} has no bf16"
        raise SamplingError(f"bf16 precision is not available here: this {what}; use fp32 or auto")


def choose_precision(
    precision: str,
    *,
    device: torch.device,
    step: Callable[[str], None] | None = None,
    cache_key: str | None = None,
) -> PrecisionChoice:
    """Resolve ``"auto"`` (and check an explicit choice) for a run on ``device``.

    Args:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        device: where the model runs.
        step: runs one model step in the precision it is given (for the timing); None skips
            the timing and trusts the device's support.
        cache_key: identifies the network and input size (e.g. :func:`model_cache_key`); with
            it, a timing is done once per device and thread count and then read from the cache.

    Raises:
        SamplingError: as :func:`check_precision`.
    """
    check_precision(precision, device)
    if precision != "auto":
        return PrecisionChoice(precision, f"{precision} (asked for)")
    support = bf16_support(device)
    if support is None:
        return PrecisionChoice("fp32", "auto: fp32, no fast bf16 on this device")
    if step is None:
        return PrecisionChoice("bf16", f"auto: bf16 on {support}")
    key = None if cache_key is None else f"{cache_key}|{_device_key(device)}"
    timings = _cached_timings(key)
    if timings is None:
        timings = {p: _seconds_per_step(step, p) for p in ("fp32", "bf16")}
        _store_timings(key, timings)
    fp32, bf16 = timings["fp32"], timings["bf16"]
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    measured = f"{bf16:.3f} vs {fp32:.3f} s per step"
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice(
            "bf16", f"auto: bf16, {speedup:.1f}x faster than fp32 on {support} ({measured})", timings
        )
    return PrecisionChoice("fp32", f"auto: fp32, bf16 was not faster on {support} ({measured})", timings)


def model_cache_key(model: torch.nn.Module, input_shape: tuple[int, ...]) -> str:
    """A key for the timing cache: the network's architecture (parameter names and shapes) and
    the input shape; weights do not change the speed."""
    digest = hashlib.sha256(repr(input_shape).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def _seconds_per_step(step: Callable[[str], None], precision: str, *, repeats: int = 3) -> float:
    step(precision)  # warm-up: kernel selection, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(precision)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_key(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"cpu:{platform.machine()}|{_cpu_model()}|{threads} threads|torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_file() -> Path:
    from engine.resources import user_cache_dir

    return user_cache_dir() / "precision-timings.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_timings(key: str | None) -> dict[str, float] | None:
    if key is None:
        return None
    entry = _read_cache().get(key)
    if isinstance(entry, dict) and all(
        isinstance(entry.get(p), int | float) and entry[p] > 0 for p in ("fp32", "bf16")
    ):
        return {p: float(entry[p]) for p in ("fp32", "bf16")}
    return None


def _store_timings(key: str | None, timings: dict[str, float]) -> None:
    """Best effort: a cache that cannot be written only means timing again next time."""
    if key is None:
        return
    from engine.atomic import atomic_write_text

    data = _read_cache()
    data[key] = timings
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_cache_file(), json.dumps(data, indent=1), overwrite=True)
    except (OSError, BrainSynthError):
        pass
