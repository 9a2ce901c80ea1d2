"""Generating volumes: the one high-level API the CLI and the GUI both drive.

:func:`generate` returns an iterator of :class:`GenerationProgress` events, one per
denoising step of each batch. A front end draws its progress bar or preview from the events,
collects the finished :class:`GeneratedVolume` objects as batches complete, and cancels by
closing the iterator (``events.close()``, or simply dropping it): no model call runs after
the event the consumer last received.

Reproducibility: each volume has its own seed (see :func:`seeds_from`) and every random
number of volume k is drawn from its own generator, so volume k is the same whatever
``batch_size`` it was generated with, and the same seed on the same device gives the same
volume. "The same" up to float rounding: a UNet's output for a batch differs from single runs
by ~1e-6 (kernel choice); a trained denoiser damps that, an untrained network can magnify it
to ~1e-4 over the chain (see tests/test_generation.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.device import resolve_device
from engine.errors import SamplingError
from engine.samplers import SamplerSettings, denoise, initial_noise
from engine.specs import ModelSpec
from engine.trajectory import Trajectory, TrajectoryRecorder

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass
class GeneratedVolume:
    """One finished synthetic volume.

    Attributes:
        index: position of the volume in the ``seeds`` list given to :func:`generate`.
        seed: its seed.
        settings: the sampler settings used.
        array: float32 ``(D, H, W)`` on the model grid (RAS+), model space ([-1, 1]); map to
            standard space with ``spec.intensity.model_to_standard`` and place with
            ``spec.grid.affine``.
        trajectory: the kept denoising frames, or None when none were asked for.
    """

    index: int
    seed: int
    settings: SamplerSettings
    array: np.ndarray = field(repr=False)
    trajectory: Trajectory | None = field(default=None, repr=False)


@dataclass
class GenerationProgress:
    """An event from :func:`generate`, sent after every denoising step of every batch.

    Attributes:
        volume_indices: positions (in ``seeds``) of the volumes in the current batch.
        step: 0-based index of the step just done within the batch's run.
        steps: steps per volume.
        timestep: model timestep evaluated at this step.
        volumes_done: volumes finished so far, including those in ``finished``.
        volumes_total: volumes asked for.
        fraction: overall progress in [0, 1] (model evaluations done / needed).
        preview: predicted x_0 of the batch's first volume, float32 ``(D, H, W)`` model space
            on the model grid, on preview steps only (else None).
        finished: the batch's volumes, on the batch's last step only (else empty).
    """

    volume_indices: tuple[int, ...]
    step: int
    steps: int
    timestep: int
    volumes_done: int
    volumes_total: int
    fraction: float
    preview: np.ndarray | None = field(default=None, repr=False)
    finished: tuple[GeneratedVolume, ...] = ()


def seeds_from(seed: int, n: int) -> list[int]:
    """``n`` consecutive seeds ``[seed, seed + 1, ...]``: what "seed 42, 5 volumes" means.

    Raises:
        SamplingError: for n < 1 or a seed range outside [0, 2**63).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SamplingError(f"the number of volumes must be at least 1 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed + n > 2**63:
        raise SamplingError(f"the seed must be a whole number from 0 to 2**63-{n} (got {seed!r})")
    return list(range(seed, seed + n))


def generate(
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    seeds: Sequence[int],
    settings: SamplerSettings,
    device: torch.device | str = "auto",
    batch_size: int | None = None,
    trajectory_frames: int = 0,
    trajectory_downsample: int = 1,
    preview_every: int = 1,
    precision: str = "fp32",
) -> Iterator[GenerationProgress]:
    """Generate one volume per seed, reporting every step; close the iterator to cancel.

    The model is moved to ``device`` (in place) and put in eval mode while the iterator runs;
    its previous train/eval mode comes back when the iterator ends or is closed (the trainer
    samples from the model it is training). Arguments are checked here, before the first
    event, so a bad request fails at the call.

    Args:
        model: the UNet built from ``spec`` (predicting what its schedule's ``prediction_type`` names).
        spec: the model spec (schedule, grid, channels).
        seeds: one seed per volume (see :func:`seeds_from`).
        settings: sampler, steps, eta.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
            The same seed gives different noise on the CPU and on a GPU.
        batch_size: volumes denoised together; None means 1, the safe choice for memory
            (the paper preset needs several GiB per volume on a GPU). Larger batches only
            change speed, never the volumes.
        trajectory_frames: frames of x_t and predicted x_0 to keep per volume (0 = none);
            memory in :func:`engine.trajectory.estimated_bytes`.
        trajectory_downsample: block size for averaging trajectory frames (1 = full grid).
        preview_every: send a preview every this many steps and on the last step (0 = never).
        precision: ``"fp32"``, or ``"bf16"`` autocast on CUDA (about twice as fast on recent
            GPUs; not offered on CPU or MPS).

    Returns:
        An iterator of :class:`GenerationProgress`, ``steps`` events per batch.

    Raises:
        SamplingError: for no seeds, bad seeds, a batch size, frame count or preview interval
            below its minimum, an unavailable device or an unsupported precision.
    """
    settings.validate(spec.schedule)
    seeds = list(seeds)
    if not seeds:
        raise SamplingError("at least one seed is needed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise SamplingError(f"a seed must be a whole number from 0 to 2**63-1 (got {seed!r})")
    if batch_size is None:
        batch_size = 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SamplingError(f"the batch size must be at least 1 (got {batch_size!r})")
    if trajectory_frames < 0:
        raise SamplingError(f"the number of trajectory frames cannot be negative (got {trajectory_frames})")
    if preview_every < 0:
        raise SamplingError(f"the preview interval cannot be negative (got {preview_every})")
    resolved = resolve_device(device)
    if precision not in PRECISIONS:
        raise SamplingError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" and resolved.type != "cuda":
        raise SamplingError(f"bf16 precision needs a CUDA GPU; {resolved} runs in fp32")
    # Fail now, not at the first step, when the recorder's arguments are bad.
    TrajectoryRecorder(trajectory_frames, settings.steps, downsample=trajectory_downsample)

    model.to(resolved)
    return _run(
        model,
        spec,
        seeds=seeds,
        settings=settings,
        device=resolved,
        batch_size=batch_size,
        trajectory_frames=trajectory_frames,
        trajectory_downsample=trajectory_downsample,
        preview_every=preview_every,
        precision=precision,
    )


def _model_call(model: torch.nn.Module, precision: str) -> Callable[..., torch.Tensor]:
    if precision == "bf16":

        def call(x: torch.Tensor, *, timesteps: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x, timesteps=timesteps)

        return call
    return model


def _run(
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    seeds: list[int],
    settings: SamplerSettings,
    device: torch.device,
    batch_size: int,
    trajectory_frames: int,
    trajectory_downsample: int,
    preview_every: int,
    precision: str,
) -> Iterator[GenerationProgress]:
    sample_shape = (spec.unet.in_channels, *spec.grid.shape)
    dtype = next(model.parameters()).dtype
    call = _model_call(model, precision)
    was_training = model.training
    model.eval()
    try:
        yield from _batches(
            call,
            spec,
            seeds=seeds,
            settings=settings,
            device=device,
            batch_size=batch_size,
            trajectory_frames=trajectory_frames,
            trajectory_downsample=trajectory_downsample,
            preview_every=preview_every,
            sample_shape=sample_shape,
            dtype=dtype,
        )
    finally:
        model.train(was_training)


def _batches(
    call: Callable[..., torch.Tensor],
    spec: ModelSpec,
    *,
    seeds: list[int],
    settings: SamplerSettings,
    device: torch.device,
    batch_size: int,
    trajectory_frames: int,
    trajectory_downsample: int,
    preview_every: int,
    sample_shape: tuple[int, ...],
    dtype: torch.dtype,
) -> Iterator[GenerationProgress]:
    total = len(seeds)
    steps = settings.steps
    done = 0

    def is_preview(index: int) -> bool:
        return preview_every > 0 and (index % preview_every == 0 or index == steps - 1)

    for start in range(0, total, batch_size):
        batch_indices = tuple(range(start, min(start + batch_size, total)))
        batch_seeds = [seeds[i] for i in batch_indices]
        noise, generators = initial_noise(sample_shape, batch_seeds, device, dtype)
        recorder = TrajectoryRecorder(trajectory_frames, steps, downsample=trajectory_downsample)

        def want(index: int, recorder: TrajectoryRecorder = recorder) -> bool:
            return recorder.want_frame(index) or is_preview(index)

        run = denoise(call, spec.schedule, noise, generators, settings, want_frames=want)
        try:
            for step in run:
                recorder.add(step)
                preview = None
                if is_preview(step.index):
                    preview = step.x0_pred[0, 0].float().cpu().numpy()
                finished: tuple[GeneratedVolume, ...] = ()
                if step.is_last:
                    trajectories = recorder.trajectories() or [None] * len(batch_indices)
                    final = step.x_t.float().cpu().numpy()
                    finished = tuple(
                        GeneratedVolume(
                            index=i,
                            seed=seeds[i],
                            settings=settings,
                            array=final[k, 0].copy(),  # not a view that keeps the whole batch alive
                            trajectory=trajectories[k],
                        )
                        for k, i in enumerate(batch_indices)
                    )
                    done += len(batch_indices)
                evaluations = start * steps + (step.index + 1) * len(batch_indices)
                yield GenerationProgress(
                    volume_indices=batch_indices,
                    step=step.index,
                    steps=steps,
                    timestep=step.timestep,
                    volumes_done=done,
                    volumes_total=total,
                    fraction=evaluations / (total * steps),
                    preview=preview,
                    finished=finished,
                )
        finally:
            # On cancel (GeneratorExit here) stop the sampler at once rather than at garbage collection.
            run.close()
