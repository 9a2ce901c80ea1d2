"""The precision a training run computes in: what the device can do, one timed step, and resume.

``auto`` takes bf16 autocast on a CUDA GPU that supports it; on a CPU with bf16 units (AMX or
AVX-512 BF16) it times one training step (forward and backward, the run's batch size, on a
throwaway copy of the network) in fp32 and in bf16 and keeps bf16 only when it is faster
(:func:`engine.precision.choose_precision`, cached per network, batch, device and thread
count); fp32 everywhere else. Only activations run in bf16: the weights, Adam's state and
the EMA stay fp32, and the loss is computed in fp32.

A resumed run keeps the precision it started with (saved in its resume state), whatever a
new timing would say now: a run that changed precision halfway would not be the run it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.errors import SamplingError
from engine.precision import PrecisionChoice, autocast, bf16_support, choose_precision, model_cache_key
from engine.training.errors import TrainingError

if TYPE_CHECKING:
    from engine.specs import ModelSpec


def check_training_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the training device cannot run.

    Raises:
        TrainingError: fp16 off CUDA; bf16 on a GPU without bf16, on a CPU without bf16 units
            or on another device type.
    """
    if precision in ("auto", "fp32"):
        return
    if precision == "fp16":
        if device.type != "cuda":
            raise TrainingError(f"fp16 mixed precision needs a CUDA GPU; on {device.type} use fp32, bf16 or auto")
        return
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU does not support bf16; use --precision fp16 or fp32")
        if device.type == "cpu" and bf16_support(device) is None:
            raise TrainingError(
                "bf16 training is not available here: this CPU has no bf16 units (AVX-512 BF16 or AMX), "
                "where bf16 runs far slower than fp32; use --precision fp32 or auto"
            )
        if device.type not in ("cuda", "cpu"):
            raise TrainingError(f"bf16 training runs on a CUDA GPU or a CPU with bf16 units, not on {device.type}")
        return
    raise TrainingError(f"unknown precision {precision!r}; choose one of: auto, fp32, bf16, fp16")


def training_autocast(device: torch.device, precision: str):
    """The context a training forward pass runs in (bf16 or fp16 autocast, or none for fp32)."""
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return autocast(device, precision)


def choose_training_precision(
    precision: str, *, device: torch.device, spec: ModelSpec, batch_size: int, time_step: bool = True
) -> PrecisionChoice:
    """Resolve ``precision`` for a new run on ``device``.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (the config's).
        device: the training device.
        spec: the preset trained (its network and grid size the timed step).
        batch_size: volumes per forward pass (the timed step's batch).
        time_step: on a CPU with bf16 units, time one training step to decide (False: trust
            the units, as :func:`engine.precision.choose_precision` does without a step).

    Raises:
        TrainingError: as :func:`check_training_precision`.
    """
    check_training_precision(precision, device)
    if precision != "auto":
        return PrecisionChoice(precision, f"{precision} (asked for)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: bf16 on a CUDA GPU with bf16")
        return PrecisionChoice("fp32", "auto: fp32, this GPU has no bf16")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")
    if bf16_support(device) is None or not time_step:
        return _as_training_error(lambda: choose_precision("auto", device=device))
    step, key = _timed_training_step(spec, device=device, batch_size=batch_size)
    choice = _as_training_error(lambda: choose_precision("auto", device=device, step=step, cache_key=key))
    return PrecisionChoice(
        choice.precision,
        f"{choice.reason}, timed on a training step (forward and backward) of batch {batch_size}",
        choice.seconds_per_step,
    )


def resumed_precision(
    saved: str | None, saved_reason: str | None, *, configured: str, device: torch.device
) -> PrecisionChoice:
    """The precision a resumed run continues in: the one it started with.

    Args:
        saved: the precision in the resume state; None in states written before it was saved,
            which were resolved by the old rule (bf16 on a CUDA GPU with bf16 for ``auto``, fp32
            on every other device, where bf16 was never chosen).
        saved_reason: why it was chosen, as saved.
        configured: the run's configured precision (``auto`` or an explicit one).
        device: the device the run resumes on.

    Raises:
        TrainingError: the saved precision cannot run on this device.
    """
    if saved is None:
        if configured == "auto":
            saved = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        else:
            saved = configured
        saved_reason = "the run's precision before precision was saved with it"
    try:
        check_training_precision(saved, device)
    except TrainingError as exc:
        raise TrainingError(f"the run trained in {saved} and keeps it when resumed, but {exc}") from None
    return PrecisionChoice(saved, f"{saved}, kept from the run's start ({saved_reason or 'as saved'})")


def _as_training_error(choose) -> PrecisionChoice:
    try:
        return choose()
    except SamplingError as exc:
        raise TrainingError(str(exc)) from None


def _timed_training_step(spec: ModelSpec, *, device: torch.device, batch_size: int):
    """One forward and backward pass of a throwaway copy of the network, and its cache key.

    A copy, not the run's network: the timing must not touch the run's weights, gradients or
    RNG streams (the global RNG is forked around the copy's initialisation), so a run that
    timed and one that read the cache train identically.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = spec.build_model(use_flash_attention=device.type == "cuda").to(device).train()
    shape = (batch_size, *spec.sample_shape)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=generator, device=device)
    target = torch.randn(shape, generator=generator, device=device)
    t = torch.randint(0, spec.schedule.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def step(precision: str) -> None:
        with autocast(device, precision):
            pred = model(x=x, timesteps=t)
        torch.nn.functional.mse_loss(pred.float(), target).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, f"train|{model_cache_key(model, shape)}"
