"""Generating volumes: the one high-level API the CLI and the GUI both drive.

:func:`generate` returns an iterator of :class:`GenerationProgress` events, one per
denoising step of each batch. A front end draws its progress bar or preview from the events,
collects the finished :class:`GeneratedVolume` objects as batches complete, and cancels by
closing the iterator (``events.close()``, or simply dropping it): no model call runs after
the event the consumer last received.

A run is described by one :class:`GenerationRequest` (model, sampler settings, seeds,
device, precision, batch size, trajectory), which both front ends build and which is checked
once, when it is made; its :meth:`GenerationRequest.provenance` is what every export sidecar
and the app's list of generated volumes record.

Reproducibility: each volume has its own seed (see :func:`seeds_from`) and every random
number of volume k is drawn from its own generator, so volume k is the same whatever
``batch_size`` it was generated with, and the same seed on the same device gives the same
volume. "The same" up to float rounding: a UNet's output for a batch differs from single runs
by ~1e-6 (kernel choice); a trained denoiser damps that, an untrained network can magnify it
to ~1e-4 over the chain (see tests/test_generation.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine import __version__
from engine.device import resolve_device
from engine.errors import SamplingError
from engine.export import now_iso
from engine.guidance import conditioned_call
from engine.precision import autocast, check_precision, choose_precision, model_cache_key
from engine.samplers import SamplerSettings, default_settings, denoise, initial_noise
from engine.specs import ModelSpec
from engine.trajectory import Trajectory, TrajectoryRecorder

if TYPE_CHECKING:
    from engine.checkpoint import Checkpoint

WEIGHTS: tuple[str, ...] = ("ema", "raw")


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
        provenance: how it was made (:meth:`GenerationRequest.provenance`), for sidecars.
    """

    index: int
    seed: int
    settings: SamplerSettings
    array: np.ndarray = field(repr=False)
    trajectory: Trajectory | None = field(default=None, repr=False)
    provenance: dict = field(default_factory=dict, repr=False)


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


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SamplingError(f"a seed must be a whole number from 0 to 2**63-1 (got {seed!r})")


def _check_count(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        if minimum == 0:
            raise SamplingError(f"the {what} cannot be negative (got {value!r})")
        raise SamplingError(f"the {what} must be at least {minimum} (got {value!r})")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation run, as the CLI, the app, a study or the trainer asks for it.

    Checked when it is made (every field, the sampler against the model's schedule, the
    device against this machine), so a bad request fails before any model is built.

    Attributes:
        spec: the model spec (network, schedule, grid, intensity mapping).
        seeds: one seed per volume (see :func:`seeds_from`).
        settings: sampler, steps, eta.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; kept as asked,
            :attr:`torch_device` is what it resolves to here. The same seed gives different
            noise on the CPU and on a GPU.
        precision: ``"fp32"``, ``"bf16"`` (autocast, where the device has bf16) or ``"auto"``
            (:func:`resolve_precision` picks what is faster here; :func:`generate` resolves it).
        batch_size: volumes denoised together; 1 is the safe choice for memory (the paper
            preset needs several GiB per volume on a GPU). Larger batches only change speed,
            never the volumes.
        trajectory_frames: frames of x_t and predicted x_0 to keep per volume (0 = none);
            memory in :func:`engine.trajectory.estimated_bytes`.
        trajectory_downsample: block size for averaging trajectory frames (1 = full grid).
        preview_every: send a preview every this many steps and on the last step (0 = never).
        weights: which weights of the checkpoint run: ``"ema"`` or ``"raw"``
            (:meth:`engine.checkpoint.Checkpoint.select_weights` decides).
        checkpoint_name: file name of the checkpoint, or None (a model in memory).
        checkpoint_sha256: SHA-256 of the checkpoint file, or None.
        precision_reason: why the precision was chosen (set by :func:`resolve_precision`).
        compile: run the network through ``torch.compile`` (:func:`engine.compilation.compiled_call`):
            compiled once per network, device and batch shape in the process, which costs
            seconds to minutes the first time; faster steps after that where the compiler
            wins (a GPU above all). The same volumes up to float rounding.
        conditions: for a conditional model, each volume's condition (covariate name -> value;
            a covariate left out, None or ``"any"`` is its null), one per seed or one for all;
            empty: every volume from the whole population (the null condition). Checked and
            made canonical when the request is made (:meth:`ConditionSpec.check`).
        guidance: classifier-free guidance weight (:mod:`engine.guidance`): 1 = the plain
            conditional prediction, 0 = unconditional, above 1 = pushed towards the
            condition; None = 1 (no guidance). Volumes without a condition get none.
        allow_extrapolation: accept continuous covariates outside the training range
            (recorded in the provenance).

    Raises:
        SamplingError: for no seeds, bad seeds, a batch size, frame count or preview interval
            below its minimum, steps above the schedule's, an unavailable device or an
            unsupported precision.
        ConditionError: conditions for an unconditional model, or a value the model cannot take.
    """

    spec: ModelSpec
    seeds: tuple[int, ...]
    settings: SamplerSettings
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    trajectory_frames: int = 0
    trajectory_downsample: int = 1
    preview_every: int = 0
    weights: str = "ema"
    checkpoint_name: str | None = None
    checkpoint_sha256: str | None = None
    precision_reason: str | None = None
    compile: bool = False
    conditions: tuple[Mapping, ...] = ()
    guidance: float | None = None
    allow_extrapolation: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise SamplingError("at least one seed is needed")
        for seed in self.seeds:
            _check_seed(seed)
        self.settings.validate(self.spec.schedule)
        _check_count(self.batch_size, "batch size", 1)
        _check_count(self.trajectory_frames, "number of trajectory frames", 0)
        _check_count(self.preview_every, "preview interval", 0)
        if self.weights not in WEIGHTS:
            raise SamplingError(f"weights must be one of {', '.join(WEIGHTS)} (got {self.weights!r})")
        check_precision(self.precision, self.torch_device)
        # The recorder checks its own arguments (downsample); fail now, not at the first step.
        TrajectoryRecorder(self.trajectory_frames, self.settings.steps, downsample=self.trajectory_downsample)
        self._check_conditions()

    def _check_conditions(self) -> None:
        from engine.conditions import ConditionError

        given = tuple(self.conditions or ())
        spec = self.spec.conditions
        if self.guidance is not None and (
            isinstance(self.guidance, bool)
            or not isinstance(self.guidance, int | float)
            or not math.isfinite(self.guidance)
            or self.guidance < 0
        ):
            raise SamplingError(f"guidance must be a number of 0 or more (got {self.guidance!r})")
        if spec is None:
            if any(given) or self.guidance is not None:
                raise ConditionError(
                    "this model is unconditional: it takes no conditions or guidance "
                    f"({self.checkpoint_name or self.spec.name} was trained without covariates)"
                )
            object.__setattr__(self, "conditions", ())
            return
        if len(given) == 1:
            given = given * len(self.seeds)
        if given and len(given) != len(self.seeds):
            raise ConditionError(
                f"{len(given)} conditions for {len(self.seeds)} volumes: give one per volume or one for all"
            )
        if not spec.has_null and self.guidance not in (None, 1, 1.0):
            raise ConditionError(
                "this model learned no unconditional prediction (its conditions are passed as context, as in the "
                "MONAI brain LDM bundle), so it takes no guidance; leave the guidance at 1"
            )
        checked = tuple(spec.check(c, allow_extrapolation=self.allow_extrapolation) for c in given)
        object.__setattr__(self, "conditions", checked or tuple({} for _ in self.seeds))

    @property
    def is_conditional(self) -> bool:
        """Whether the model takes conditions (its spec names covariates)."""
        return self.spec.conditions is not None

    @classmethod
    def for_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        seeds: Sequence[int],
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        prefer_ema: bool = True,
        **options,
    ) -> GenerationRequest:
        """A request to sample from ``checkpoint``: the sampler and steps the user named, the
        model's own default for the rest (:func:`engine.samplers.default_settings`), its EMA
        weights when it has them and ``prefer_ema``; ``options`` are the other fields."""
        return cls(
            spec=checkpoint.spec,
            seeds=tuple(seeds),
            settings=default_settings(checkpoint.spec, sampler=sampler, steps=steps, eta=eta),
            weights=checkpoint.select_weights(prefer_ema=prefer_ema)[0],
            checkpoint_name=checkpoint.path.name if checkpoint.path is not None else None,
            checkpoint_sha256=checkpoint.sha256,
            **options,
        )

    @property
    def torch_device(self) -> torch.device:
        """The device this request runs on here (``"auto"`` resolved)."""
        return resolve_device(self.device)

    def provenance(self, seed: int, *, index: int | None = None) -> dict:
        """How the volume of ``seed`` is made: the record every sidecar and the app's list of
        generated volumes share (checkpoint, weights, sampler, steps, eta, timestep spacing, seed, precision,
        device, software version, time; with a conditional model its condition, guidance and
        whether extrapolation was allowed). ``index``: the volume's position in ``seeds``
        (default: where ``seed`` first is)."""
        conditional = {}
        if self.is_conditional:
            condition = self.conditions[self.seeds.index(seed) if index is None else index]
            conditional = {
                "conditions": dict(condition),
                "guidance": (1.0 if self.guidance is None else float(self.guidance)) if condition else None,
                "allow_extrapolation": self.allow_extrapolation,
                "extrapolated": self.spec.conditions.outside_range(condition),
            }
        return {
            "checkpoint": self.checkpoint_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "weights": self.weights,
            "sampler": self.settings.name,
            "steps": self.settings.steps,
            "eta": self.settings.eta,
            # Which timesteps ran: BrainSynth's trailing layout, or the MONAI layout an imported model keeps.
            "spacing": self.settings.spacing,
            **({"steps_offset": self.settings.steps_offset} if self.settings.steps_offset else {}),
            "seed": int(seed),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "device": str(self.torch_device),
            "software_version": __version__,
            "created": now_iso(),
            **conditional,
        }


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


def resolve_precision(model: torch.nn.Module, request: GenerationRequest) -> GenerationRequest:
    """The request with a concrete precision and the reason for it.

    ``"auto"`` times one step of ``model`` in fp32 and bf16 on the request's device the first
    time this network runs there (cached; :func:`engine.precision.choose_precision`). An explicit
    choice, or a request resolved already, only gets its reason filled in.
    """
    if request.precision != "auto":
        if request.precision_reason is not None:
            return request
        choice = choose_precision(request.precision, device=request.torch_device)
        return replace(request, precision_reason=choice.reason)
    device = request.torch_device
    model.to(device)
    shape = (1, *request.spec.sample_shape)
    x = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(0), device=device)
    x = x.to(next(model.parameters()).dtype)
    t = torch.full((1,), float(request.spec.schedule.num_train_timesteps // 2), device=device)

    def step(precision: str) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast(device, precision):
                model(x, timesteps=t, **_null_labels(request, 1, device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            model.train(was_training)

    choice = choose_precision(request.precision, device=device, step=step, cache_key=model_cache_key(model, shape))
    return replace(request, precision=choice.precision, precision_reason=choice.reason)


def generate(model: torch.nn.Module, request: GenerationRequest) -> Iterator[GenerationProgress]:
    """Generate one volume per seed of ``request``, reporting every step; close to cancel.

    The model is moved to the request's device (in place) and put in eval mode while the
    iterator runs; its previous train/eval mode comes back when the iterator ends or is closed
    (the trainer samples from the model it is training).

    Args:
        model: the UNet built from ``request.spec`` (predicting what its schedule's
            ``prediction_type`` names), with the weights the request names.
        request: what to generate (checked when it was made); an ``"auto"`` precision is
            resolved first (:func:`resolve_precision`), which may time the model for a few seconds.

    Returns:
        An iterator of :class:`GenerationProgress`, ``steps`` events per batch.
    """
    model.to(request.torch_device)
    return _run(model, resolve_precision(model, request))


def _null_labels(request: GenerationRequest, batch: int, device: torch.device) -> dict:
    spec = request.spec.conditions
    return {} if spec is None else {"class_labels": spec.null(batch, device=device)}


def _model_call(model: torch.nn.Module, request: GenerationRequest) -> Callable[..., torch.Tensor]:
    device = request.torch_device
    if request.compile:
        from engine.compilation import compiled_call

        dtype = next(model.parameters()).dtype

        def compiled(x: torch.Tensor, *, timesteps: torch.Tensor) -> torch.Tensor:
            # A dictionary look-up per step: the compiled call for this batch's shape (the last
            # batch may be smaller), compiled at its first use in the process.
            run = compiled_call(
                model, device=device, sample_shape=tuple(x.shape), precision=request.precision, dtype=dtype
            )
            return run(x, timesteps=timesteps)

        return compiled
    if request.precision == "bf16":

        def call(x: torch.Tensor, *, timesteps: torch.Tensor, **labels) -> torch.Tensor:
            with autocast(device, "bf16"):
                return model(x, timesteps=timesteps, **labels)

        return call
    return model


def _batch_call(
    call: Callable[..., torch.Tensor], request: GenerationRequest, indices: Sequence[int]
) -> Callable[..., torch.Tensor]:
    """The model call for the batch of volumes ``indices``: their conditions and guidance."""
    spec = request.spec.conditions
    if spec is None:
        return call
    conditions = [request.conditions[i] for i in indices]
    encoded = spec.encode(conditions, device=request.torch_device)
    guidance = request.guidance if any(conditions) else None
    return conditioned_call(call, encoded, guidance)


def _run(model: torch.nn.Module, request: GenerationRequest) -> Iterator[GenerationProgress]:
    was_training = model.training
    model.eval()
    try:
        yield from _batches(
            _model_call(model, request), request, dtype=next(model.parameters()).dtype, decode=_decoder(model, request)
        )
    finally:
        model.train(was_training)


Decoder = Callable[[torch.Tensor], torch.Tensor]


def _decoder(model: torch.nn.Module, request: GenerationRequest) -> Decoder | None:
    """For a latent model, scaled latents -> model-space volumes (in the request's precision,
    tiled within the decoding memory budget: :meth:`engine.latent.LatentDiffusionModel.decode`)."""
    if request.spec.latent is None:
        return None
    if not hasattr(model, "decode"):
        raise SamplingError(
            "a latent model needs its autoencoder: build it with Checkpoint.build_model() or ModelSpec.build_model()"
        )
    device = request.torch_device

    def decode(z: torch.Tensor) -> torch.Tensor:
        with autocast(device, request.precision):
            return model.decode(z)

    return decode


def _batches(
    call: Callable[..., torch.Tensor],
    request: GenerationRequest,
    *,
    dtype: torch.dtype,
    decode: Decoder | None = None,
) -> Iterator[GenerationProgress]:
    spec, settings, seeds = request.spec, request.settings, request.seeds
    device = request.torch_device
    sample_shape = tuple(spec.sample_shape)
    total = len(seeds)
    steps = settings.steps
    done = 0

    def is_preview(index: int) -> bool:
        every = request.preview_every
        return every > 0 and (index % every == 0 or index == steps - 1)

    for start in range(0, total, request.batch_size):
        batch_indices = tuple(range(start, min(start + request.batch_size, total)))
        batch_seeds = [seeds[i] for i in batch_indices]
        noise, generators = initial_noise(sample_shape, batch_seeds, device, dtype)
        # A latent model's frames are decoded as they are kept (a bounded number, chosen here).
        recorder = TrajectoryRecorder(
            request.trajectory_frames, steps, downsample=request.trajectory_downsample, decode=decode
        )
        recorder.record_start(noise)  # so a timeline opens on the noise the run started from

        def want(index: int, recorder: TrajectoryRecorder = recorder) -> bool:
            return recorder.want_frame(index) or is_preview(index)

        run = denoise(
            _batch_call(call, request, batch_indices), spec.schedule, noise, generators, settings, want_frames=want
        )
        try:
            for step in run:
                recorder.add(step)
                preview = None
                if is_preview(step.index):
                    first = step.x0_pred[:1] if decode is None else decode(step.x0_pred[:1])
                    preview = first[0, 0].float().cpu().numpy()
                finished: tuple[GeneratedVolume, ...] = ()
                if step.is_last:
                    trajectories = recorder.trajectories() or [None] * len(batch_indices)
                    final = (step.x_t if decode is None else decode(step.x_t)).float().cpu().numpy()
                    finished = tuple(
                        GeneratedVolume(
                            index=i,
                            seed=seeds[i],
                            settings=settings,
                            array=final[k, 0].copy(),  # not a view that keeps the whole batch alive
                            trajectory=trajectories[k],
                            provenance=request.provenance(seeds[i], index=i),
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
