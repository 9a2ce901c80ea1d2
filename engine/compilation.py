"""Compiled model calls for sampling: ``torch.compile`` of the UNet, compiled once per process.

A sampler calls the network with the same shapes at every step, so a compiled graph (and on
a GPU, CUDA graphs, which replay the step's kernels without launching each from Python) can
serve a whole run. Compiling costs seconds to minutes, so a compiled call is kept per
network, device, input shape, precision and mode for the life of the process
(:func:`compiled_call`): the first volume pays for it, later volumes, batches and requests
of the same shape do not.

What is compiled is the call ``model(x, timesteps=t)`` inside its autocast context; the
network's weights are read at each call, so a network trained between calls (the trainer's
EMA sampling) is compiled once, too. Where CUDA graphs are used the output lives in a buffer
the next replay overwrites, so it is cloned before the sampler keeps it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from engine.errors import SamplingError
from engine.precision import autocast

#: The ``torch.compile`` mode used for each device type when none is given: on a GPU
#: "max-autotune" (autotuned kernels and CUDA graphs for the fixed-shape step loop); on the
#: CPU "default" ("max-autotune" there adds minutes of C++ template tuning for no gain on
#: convolutions, which inductor leaves to oneDNN either way).
DEFAULT_MODES: dict[str, str] = {"cuda": "max-autotune", "cpu": "default"}
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

ModelCall = Callable[..., torch.Tensor]

# network → {(device, shape, dtype, precision, mode): compiled call}; entries go with the network.
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, ModelCall]] = weakref.WeakKeyDictionary()


def default_mode(device: torch.device) -> str:
    """The compile mode for ``device`` (:data:`DEFAULT_MODES`; "default" elsewhere)."""
    return DEFAULT_MODES.get(device.type, "default")


def uses_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether ``mode`` replays CUDA graphs on ``device`` (outputs then live in reused buffers)."""
    return device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")


def compiled_call(
    model: torch.nn.Module,
    *,
    device: torch.device,
    sample_shape: tuple[int, ...],
    precision: str,
    dtype: torch.dtype = torch.float32,
    mode: str | None = None,
) -> ModelCall:
    """``call(x, timesteps=t)`` running ``model`` compiled, in ``precision``; compiled and warmed up
    once per network, device, batch shape, precision and mode in this process.

    Args:
        model: the network, on ``device``, in eval mode.
        device: where it runs.
        sample_shape: the batch's input shape ``(B, C, *spatial)``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast inside the compiled call).
        dtype: the dtype of x (the model's).
        mode: a ``torch.compile`` mode (:data:`COMPILE_MODES`); None for :func:`default_mode`.

    Raises:
        SamplingError: an unknown mode, or compilation failed (no C++ compiler on a CPU,
            an unsupported GPU); the message says to sample without compiling.
    """
    mode = mode or default_mode(device)
    if mode not in COMPILE_MODES:
        raise SamplingError(f"unknown compile mode {mode!r}; choose one of: {', '.join(COMPILE_MODES)}")
    key = (str(device), tuple(sample_shape), str(dtype), precision, mode)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]

    def call(x: torch.Tensor, *, timesteps: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x, timesteps=timesteps)

    compiled = torch.compile(call, mode=mode, dynamic=False, fullgraph=False)
    clone = uses_cuda_graphs(mode, device)

    def run(x: torch.Tensor, *, timesteps: torch.Tensor) -> torch.Tensor:
        out = compiled(x, timesteps=timesteps)
        return out.clone() if clone else out

    # Warm-up: compile now (and record the CUDA graphs), not inside the first sampling step. The
    # sampler's first x is an ordinary tensor and every later one an inference tensor (made under
    # inference mode, as are the timesteps); tensors of the two kinds differ in dispatch keys,
    # which the compiled graph's guards check, so both are compiled here.
    try:
        first = torch.zeros(sample_shape, device=device, dtype=dtype)
        with torch.inference_mode():
            later = torch.zeros(sample_shape, device=device, dtype=dtype)
            t = torch.full((sample_shape[0],), 500.0, device=device)
            for x in (first, later):
                for _ in range(3 if clone else 1):  # cudagraph trees record on the second or third call
                    run(x, timesteps=t)
    except Exception as exc:  # inductor fails in many ways (no compiler, unsupported op)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SamplingError(f"the model could not be compiled here ({first}); sample without --compile") from exc
    per_model[key] = run
    return run


def clear_cache() -> None:
    """Forget every compiled call (and torch's compiled graphs): for tests and benchmarks."""
    _CACHE.clear()
    torch._dynamo.reset()
