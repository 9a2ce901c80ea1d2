"""The training loop: DDPM noise-prediction MSE, Adam, EMA, validation, checkpoints, exact resume.

One step, as in the reference study and MONAI's tutorials: draw a timestep t uniformly in
0..T-1 and Gaussian noise eps for each volume x_0 (model space), form
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (:meth:`engine.specs.ScheduleSpec.add_noise`)
and minimise ``MSE(model(x_t, t), eps)`` (or the MSE to v or x_0 when the preset's
``prediction_type`` says so).

Exact resume. Everything random in a step (timesteps and noise) comes from a generator
seeded with ``(seed, global step, rank, micro-batch)``, and each epoch's data order from
``(seed, epoch)``. Randomness therefore never depends on what ran before in the process,
and restoring the weights, the EMA, the optimizer and scaler state and the counters is
enough to continue as if never interrupted: on the CPU a killed-and-resumed run ends with
weights equal to an uninterrupted run's (tested). The global RNG states are saved and
restored as well, for anything else (dropout, if a preset ever turns it on). What is saved
and how it is read back is :mod:`engine.training.resume`.

The trainer's state is explicit: :meth:`_Trainer.create` runs the set-up in its order (run
directory, data, networks from :mod:`engine.training.networks`, resume state) and hands the
results to ``__init__``, which only stores them; what changes while training is the
networks' own state and one :class:`~engine.training.resume.TrainingProgress`.

Files in the run directory (rank 0 writes; see :mod:`engine.training.logging` for logs)::

    config.toml              resolved configuration
    split.csv                train/validation assignment, written before the first step
    failed_files.csv         inputs that could not be used, with reasons
    checkpoints/last.safetensors, best.safetensors, epoch_NNNN.safetensors
    resume/state.pt          everything --resume needs (engine.training.resume)
    logs/steps.csv, logs/epochs.csv, logs/tensorboard/, loss_curve.png, samples/
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from engine.training.config import RunConfig, TrainConfig
from engine.training.distributed import DistContext, no_sync_if, set_threads, setup, shard_indices
from engine.training.errors import TrainingError
from engine.training.logging import (
    EPOCH_COLUMNS,
    STEP_COLUMNS,
    CsvLog,
    EpochSummary,
    TensorBoardLog,
    plot_loss_curve,
    plot_sample_slices,
)
from engine.training.networks import Networks, build_networks
from engine.training.precision import (
    check_training_precision,
    choose_training_precision,
    resumed_precision,
    training_autocast,
)
from engine.training.resume import (
    CONFIG_FILE,
    RESUME_FILE,
    ResumeState,
    TrainingProgress,
    check_run_dir,
    set_rng_state,
    state_due,
)

if TYPE_CHECKING:
    from engine.conditions import ConditionSpec
    from engine.specs import ModelSpec
    from engine.training.data import Split, VolumeDataset

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainEvent:
    """Something the trainer reports to its front end (only rank 0 reports).

    Attributes:
        kind: ``"info"``, ``"warning"``, ``"epoch"`` (with ``summary``) or ``"checkpoint"``.
        message: one human-readable line.
        summary: the epoch's numbers for ``"epoch"`` events.
    """

    kind: str
    message: str
    summary: EpochSummary | None = None


EventCallback = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run directory.
        epochs_done: completed epochs.
        global_step: optimizer steps taken in total.
        best_metric: best validation MSE (EMA weights when there is an EMA), or the best
            training MSE when there is no validation split.
        last_checkpoint: ``checkpoints/last.safetensors`` (None if no epoch finished).
        best_checkpoint: ``checkpoints/best.safetensors`` (None if no epoch finished).
        effective_batch_size: volumes per optimizer step over all ranks.
        stopped_early: the run was asked to stop (signal) and saved its state to resume.
        train_seconds: wall time of this invocation's training, excluding data preparation.
    """

    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    effective_batch_size: int
    stopped_early: bool = False
    train_seconds: float = 0.0


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and labels; stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The global sample order of an epoch: a permutation fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=generator).tolist()


def steps_per_epoch(n_train: int, *, batch_size: int, grad_accum: int, world_size: int) -> int:
    """Optimizer steps per epoch for ``n_train`` volumes (the last step may be smaller)."""
    per_rank = -(-n_train // world_size)
    batches = -(-per_rank // batch_size)
    return -(-batches // grad_accum)


@dataclass(frozen=True)
class StepNoise:
    """How an optimizer step draws each volume's timestep and noise.

    Timesteps are uniform in 0..T-1 and drawn before the noise, from a generator on the
    training device seeded with:

    * by default, ``(seed, global step, rank, micro-batch)``: one generator per micro-batch;
    * with ``per_sample``, ``(seed, global step, training-set index)``: one per volume, so a
      volume gets the same draws however a step's volumes are split over ranks and
      micro-batches (a test compares a two-process step with a one-process step this way).
      Not the default: it would change every run's draws, and a generator per volume is slower.

    Attributes:
        seed: the run's seed.
        num_timesteps: T.
        per_sample: draw per volume instead of per micro-batch.
    """

    seed: int
    num_timesteps: int
    per_sample: bool = False

    def __call__(
        self, x0: torch.Tensor, *, step: int, rank: int, micro_batch: int, indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, eps)`` for a micro-batch: integer timesteps ``(B,)`` and noise of ``x0``'s shape.

        Args:
            x0: the micro-batch ``(B, C, D, H, W)``, on the training device.
            step: global optimizer step (0-based) the micro-batch belongs to.
            rank: this process's rank.
            micro_batch: the micro-batch's position within the step on this rank.
            indices: the training-set indices of the micro-batch's volumes.
        """
        if not self.per_sample:
            return self._draw(x0, derive_seed(self.seed, "step", step, rank, micro_batch))
        draws = [
            self._draw(x0[i : i + 1], derive_seed(self.seed, "sample", step, index)) for i, index in enumerate(indices)
        ]
        return torch.cat([t for t, _ in draws]), torch.cat([eps for _, eps in draws])

    def _draw(self, x0: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device=x0.device).manual_seed(seed)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        return t, eps


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    callback: EventCallback | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or continue training) a model as the config says.

    Works the same in one process and under torchrun/srun/accelerate launch: ranks are read
    from the environment (see :mod:`engine.training.distributed`).

    Args:
        config: the resolved config; for a resume, use
            :func:`engine.training.resume.resume_config`.
        resume: continue the run in ``config.out`` from its resume state.
        callback: receives progress events on rank 0 (never called on other ranks).
        stop_requested: polled once per optimizer step on every rank; when it returns True on
            any rank, the run saves its resume state and returns with ``stopped_early``
            (used for SLURM's warning signal before a time limit).

    Returns:
        The outcome.

    Raises:
        TrainingError: unusable config or data, a run directory that already holds a run
            (without ``resume``), or a loss that became NaN/inf (the last good checkpoint
            and resume state are kept).
    """
    config.validate()
    ctx = setup(config.device)
    try:
        return _Trainer.create(config, ctx, resume=resume, callback=callback, stop_requested=stop_requested).run()
    finally:
        ctx.shutdown()


class _Emit(Protocol):
    def __call__(self, kind: str, message: str, summary: EpochSummary | None = None) -> None: ...


def _emitter(callback: EventCallback | None) -> _Emit:
    """A reporting function that forwards to ``callback`` (None: reports go nowhere)."""

    def emit(kind: str, message: str, summary: EpochSummary | None = None) -> None:
        if callback is not None:
            callback(TrainEvent(kind, message, summary))

    return emit


@dataclass
class _TrainingData:
    """The run's scans after preparation and the split.

    Attributes:
        split: which prepared scans train and which validate.
        train_set: the training volumes in model space (indexed by training-set index).
        val_set: the validation volumes.
        conditions: the covariates of a conditional run (``--conditions``), else None.
        train_conditions: each training volume's condition (a conditional run only).
        val_conditions: each validation volume's condition.
    """

    split: Split
    train_set: VolumeDataset
    val_set: VolumeDataset
    conditions: ConditionSpec | None = None
    train_conditions: list[dict] = dataclasses.field(default_factory=list)
    val_conditions: list[dict] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class _StepOutcome:
    """One optimizer step, summed over all ranks.

    Attributes:
        loss: mean per-volume MSE of the step.
        volumes: volumes in the step.
        grad_norm: the gradient norm before clipping.
        stop: some rank was asked to stop.
    """

    loss: float
    volumes: float
    grad_norm: float
    stop: bool


def _prepare_run_dir(config: TrainConfig, ctx: DistContext, *, resume: bool) -> None:
    from engine.atomic import atomic_write_text, remove_orphaned_temporaries

    run_dir = config.run_dir
    check_run_dir(run_dir, resume=resume)
    # Every rank has looked before rank 0 writes, or a slow rank would find rank 0's
    # fresh config.toml and take it for an earlier run.
    ctx.barrier()
    if ctx.is_main:
        for sub in ("", CHECKPOINT_DIR, "logs", RESUME_FILE.parent):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(run_dir, recursive=True)  # what a killed run left
        atomic_write_text(run_dir / CONFIG_FILE, config.to_toml(), overwrite=True)
    ctx.barrier()


def prepare_training_data(
    config: RunConfig, ctx: DistContext, spec: ModelSpec, *, resume: bool, emit: _Emit
) -> _TrainingData:
    """Prepare (ranks share the files), check and split the run's scans; rank 0 writes
    ``failed_files.csv`` and ``split.csv``. Also the autoencoder trainer's data path, whose
    config has no covariates (``conditions``)."""
    from engine.training import data

    conditions_wanted = getattr(config, "conditions", "")

    items = data.discover(config.data)
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else data.default_cache_dir()
    cache = data.PreparationCache(cache_dir, spec)
    started = time.perf_counter()
    mine = {i: cache.prepare(items[i]) for i in range(ctx.rank, len(items), ctx.world_size)}
    merged: dict[int, data.PreparedItem] = {}
    for part in ctx.gather_objects(mine):
        merged.update(part)
    results = [merged[i] for i in range(len(items))]
    failed = [r for r in results if not r.ok]
    run_dir = config.run_dir
    if ctx.is_main:
        data.write_failures(run_dir / data.FAILED_FILE, results)
        cached = sum(r.from_cache for r in results)
        emit(
            "info",
            f"data: {len(results) - len(failed)} of {len(results)} scans usable ({cached} from the cache in "
            f"{cache.root}, {time.perf_counter() - started:.1f} s)",
        )
        for r in failed:
            emit("warning", f"skipped {r.item.path}: {r.reason}")
        if failed:
            emit("warning", f"{len(failed)} file(s) skipped; listed in {run_dir / data.FAILED_FILE}")
    usable = data.check_failures(results, max_failed_fraction=config.max_failed_fraction)
    from engine.training import covariates

    sources = covariates.CovariateSources()
    split_file = run_dir / data.SPLIT_FILE
    if resume and split_file.exists():
        # The saved split is the run's: a participants.tsv edited since cannot move scans.
        split = data.read_split(split_file, usable, seed=config.seed)
    else:
        try:
            strata = covariates.group_strata(usable, sources=sources)
        except TrainingError as exc:
            if conditions_wanted:
                raise
            # An unconditional run never needed the covariates: train, unstratified, and say why.
            strata = {it.sha256: it.item.group or "" for it in usable}
            if ctx.is_main:
                emit("warning", f"split not stratified by group: {exc}")
        split = data.make_split(usable, val_fraction=config.val_fraction, seed=config.seed, strata=strata)
        if ctx.is_main:
            data.write_split(split_file, split, strata=strata)
    ctx.barrier()
    if ctx.is_main:
        emit(
            "info",
            f"split (seed {config.seed}): {len(split.train)} training, {len(split.val)} validation scans "
            f"→ {split_file}",
        )
        if not split.val:
            emit("warning", "no validation scans: 'best' is chosen by the training loss")
    conditional: dict[str, Any] = {}
    if conditions_wanted:
        conditions, values, warnings = covariates.build_conditions(
            usable,
            covariates.parse_conditions(conditions_wanted),
            dropout=config.condition_dropout,
            covariate_dropout=config.covariate_dropout,
            sources=sources,
        )
        if ctx.is_main:
            emit("info", "conditions: " + "; ".join(c.describe() for c in conditions.covariates))
            for line in warnings:
                emit("warning", line)
        conditional = {
            "conditions": conditions,
            "train_conditions": covariates.conditions_of(values, split.train),
            "val_conditions": covariates.conditions_of(values, split.val),
        }
    return _TrainingData(
        split=split,
        train_set=data.VolumeDataset(split.train, spec.intensity),
        val_set=data.VolumeDataset(split.val, spec.intensity),
        **conditional,
    )


def _encode_latents(
    config: TrainConfig, ctx: DistContext, spec: ModelSpec, data: _TrainingData, autoencoder, *, emit: _Emit
) -> tuple[_TrainingData, ModelSpec]:
    """The training data as scaled latents of ``autoencoder`` (encoded once, cached in the run
    directory), and the spec with the scale factor computed from the training latents."""
    from engine.training.latents import LatentDataset, cached_latents, scale_factor_of

    started = time.perf_counter()
    train, val, cached = cached_latents(
        config.run_dir,
        autoencoder=autoencoder,
        spec=spec,
        train_set=data.train_set,
        val_set=data.val_set,
        device=ctx.device,
        write=ctx.is_main,
    )
    scale = scale_factor_of(train)
    spec = dataclasses.replace(spec, latent=dataclasses.replace(spec.latent, scale_factor=scale))
    emit(
        "info",
        f"latents: {len(train) + len(val)} volume(s) as {' x '.join(map(str, spec.sample_shape))} latents of "
        f"{autoencoder.path.name} ({'from the cache' if cached else 'encoded'} in "
        f"{time.perf_counter() - started:.1f} s); "
        f"scale factor {scale:.4g} (1 / std of the training latents)",
    )
    ctx.barrier()
    return dataclasses.replace(data, train_set=LatentDataset(train, scale), val_set=LatentDataset(val, scale)), spec


def _restore(
    nets: Networks, state: ResumeState, *, config: TrainConfig, ctx: DistContext, n_train: int, emit: _Emit
) -> TrainingProgress:
    """Put the saved ``state`` of ``config.run_dir`` into ``nets`` and the global RNGs; returns the counters."""
    path = config.run_dir / RESUME_FILE
    progress = state.progress
    order = epoch_order(n_train, seed=config.seed, epoch=progress.epoch)
    state.check_fits(world_size=ctx.world_size, epoch_order=order, source=path)
    if state.world_size != ctx.world_size:
        emit(
            "warning",
            f"resuming with {ctx.world_size} instead of {state.world_size} processes: the effective "
            "batch size changes from here on",
        )
    nets.model.load_state_dict(state.model)
    if nets.ema is not None and state.ema:
        nets.ema.module.load_state_dict(state.ema)
        nets.ema.updates = state.ema_updates
    nets.optimizer.load_state_dict(state.optimizer)
    for group in nets.optimizer.param_groups:
        group["lr"] = config.lr  # the one hyper-parameter a resume may change
    nets.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng)
    emit(
        "info",
        f"resuming at epoch {progress.epoch + 1}, step {progress.step_in_epoch} of it "
        f"({progress.global_step} in total)",
    )
    return progress


class _Trainer:
    """One run of the training loop over prepared data and built networks.

    Build it with :meth:`create`; ``__init__`` only stores what the set-up made. While it
    runs, what changes is the networks' state (weights, EMA, optimizer, scaler), the
    counters in :attr:`progress` and :attr:`last_state_save`.
    """

    def __init__(
        self,
        *,
        config: TrainConfig,
        ctx: DistContext,
        spec: ModelSpec,
        precision: str,
        precision_reason: str,
        data: _TrainingData,
        nets: Networks,
        progress: TrainingProgress,
        noise: StepNoise,
        emit: _Emit,
        stop_requested: Callable[[], bool],
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.spec = spec
        self.precision = precision
        self.precision_reason = precision_reason
        self.data = data
        self.nets = nets
        self.progress = progress
        self.noise = noise
        self.emit = emit
        self.stop_requested = stop_requested
        self.run_dir = config.run_dir
        self.device = ctx.device
        self.effective_batch_size = config.batch_size * config.grad_accum * ctx.world_size
        self.last_state_save = time.monotonic()  # when the resume state was last written (monotonic s)

    @classmethod
    def create(
        cls,
        config: TrainConfig,
        ctx: DistContext,
        *,
        resume: bool,
        callback: EventCallback | None = None,
        stop_requested: Callable[[], bool] | None = None,
        noise: StepNoise | None = None,
    ) -> _Trainer:
        """Set a run up: check and create the run directory, prepare the data, build the
        networks and, for ``resume``, restore the saved state.

        Args:
            config: the resolved config.
            ctx: this process's place in the job.
            resume: continue the run in ``config.out``.
            callback: receives events (rank 0 only).
            stop_requested: polled once per optimizer step; see :func:`train`.
            noise: how a step draws its timesteps and noise; per micro-batch (what training
                always does) when None.
        """
        from engine.specs import get_preset

        spec = get_preset(config.preset)
        autoencoder = None
        if config.autoencoder:
            from engine.autoencoder_checkpoint import load_autoencoder
            from engine.training.latents import latent_spec

            autoencoder = load_autoencoder(config.autoencoder)
            spec = latent_spec(spec, autoencoder)  # the autoencoder's grid is the model's
        check_training_precision(config.precision, ctx.device)  # before minutes of data preparation
        emit = _emitter(callback if ctx.is_main else None)
        threads = set_threads(config.cpu_threads, ctx)
        if ctx.device.type == "cpu":
            emit("info", f"using {threads}")
        _prepare_run_dir(config, ctx, resume=resume)
        data = prepare_training_data(config, ctx, spec, resume=resume, emit=emit)
        if autoencoder is not None:
            data, spec = _encode_latents(config, ctx, spec, data, autoencoder, emit=emit)
        state = ResumeState.read(config.run_dir / RESUME_FILE) if resume else None
        if state is not None:
            choice = resumed_precision(
                state.precision, state.precision_reason, configured=config.precision, device=ctx.device
            )
        else:
            # Rank 0 decides (and times, alone) for every rank: all must compute alike.
            choice = None
            if ctx.is_main:
                choice = choose_training_precision(
                    config.precision, device=ctx.device, spec=spec, batch_size=config.batch_size
                )
            choice = ctx.broadcast_object(choice)
            check_training_precision(choice.precision, ctx.device)
        emit("info", f"precision: {choice.reason}")
        if data.conditions is not None:  # timed above without them: the embedding costs little
            spec = dataclasses.replace(spec, conditions=data.conditions)
        nets = build_networks(
            config,
            ctx,
            spec,
            precision=choice.precision,
            init_seed=derive_seed(config.seed, "init"),
            report=emit,
            autoencoder=autoencoder,
        )
        progress = TrainingProgress()
        if state is not None:
            progress = _restore(nets, state, config=config, ctx=ctx, n_train=len(data.train_set), emit=emit)
        return cls(
            config=config,
            ctx=ctx,
            spec=spec,
            precision=choice.precision,
            precision_reason=choice.reason,
            data=data,
            nets=nets,
            progress=progress,
            noise=noise or StepNoise(config.seed, spec.schedule.num_train_timesteps),
            emit=emit,
            stop_requested=stop_requested or (lambda: False),
        )

    # ------------------------------------------------------------------ resume state
    def _save_state(self, order: list[int]) -> None:
        if self.ctx.is_main:
            from engine.training.logging import sync_logs

            sync_logs(self.run_dir / "logs")  # the logs on disk hold every row this state counts
            nets = self.nets
            ResumeState.capture(
                model=nets.model,
                ema=nets.ema,
                optimizer=nets.optimizer,
                scaler=nets.scaler,
                progress=self.progress,
                world_size=self.ctx.world_size,
                batch_size=self.config.batch_size,
                grad_accum=self.config.grad_accum,
                seed=self.config.seed,
                data_order=order,
                precision=self.precision,
                precision_reason=self.precision_reason,
            ).write(self.run_dir / RESUME_FILE)
        self.last_state_save = time.monotonic()

    def _state_due(self) -> bool:
        return state_due(self.config, global_step=self.progress.global_step, last_save=self.last_state_save)

    # ------------------------------------------------------------------ checkpoints
    def _provenance(self, **extra: Any) -> dict:
        return {
            "source": "brainsynth-cli train",
            "training": {
                "run_dir": str(self.run_dir.resolve()),
                "epoch": self.progress.epoch + 1,
                "global_step": self.progress.global_step,
                "train_scans": len(self.data.split.train),
                "val_scans": len(self.data.split.val),
                "effective_batch_size": self.effective_batch_size,
                "world_size": self.ctx.world_size,
                "precision": self.precision,
                "precision_reason": self.precision_reason,
                "config": self.config.to_dict(),
                **self.nets.init_info,
                **extra,
            },
        }

    def _save_checkpoint(self, name: str, **extra: Any) -> Path:
        from engine.checkpoint import save_checkpoint

        path = self.run_dir / CHECKPOINT_DIR / f"{name}.safetensors"
        save_checkpoint(
            path,
            spec=self.spec,
            weights=self.nets.model.state_dict(),
            ema_weights=self.nets.ema.module.state_dict() if self.nets.ema else None,
            provenance=self._provenance(**extra),
            overwrite=True,
        )
        return path

    # ------------------------------------------------------------------ one step
    def epoch_groups(self, epoch: int) -> tuple[list[int], list[list[list[int]]]]:
        """The epoch's global sample order, and this rank's optimizer steps in it.

        Returns:
            ``(order, groups)``: ``groups[k]`` is step k's micro-batches, each a list of
            training-set indices (``batch_size`` at most, ``grad_accum`` per step at most).
        """
        cfg = self.config
        order = epoch_order(len(self.data.train_set), seed=cfg.seed, epoch=epoch)
        mine = shard_indices(order, rank=self.ctx.rank, world_size=self.ctx.world_size)
        batches = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
        return order, [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]

    def _batch(self, indices: list[int]) -> torch.Tensor:
        batch = torch.stack([self.data.train_set[i] for i in indices])
        return batch.to(self.device, non_blocking=True)

    def _labels(self, conditions: list[dict], *, dropout_seed: int | None = None) -> dict[str, torch.Tensor]:
        """MONAI's ``class_labels`` for a conditional run (nothing otherwise), with condition
        dropout drawn from ``dropout_seed`` when given (training; not validation)."""
        spec = self.spec.conditions
        if spec is None:
            return {}
        from engine.conditions import apply_dropout

        encoded = spec.encode(conditions, device=self.device)
        if dropout_seed is not None:
            encoded = apply_dropout(encoded, spec, torch.Generator().manual_seed(dropout_seed))
        return {"class_labels": encoded}

    def _autocast(self):
        return training_autocast(self.device, self.precision)

    def _noised_and_target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, what the network should output there) for the schedule's prediction type."""
        schedule = self.spec.schedule
        xt = schedule.add_noise(x0, eps, t)
        target = schedule.training_target(x0, eps, *schedule.noise_coefficients(t, ndim=x0.ndim))
        return xt, target

    def optimizer_step(self, micro_batches: list[list[int]]) -> _StepOutcome:
        """One optimizer step over a group of micro-batches (training-set indices).

        Every rank must call it together (gradients and losses are summed over ranks); it
        does not touch :attr:`progress`.
        """
        step = self.progress.global_step
        nets = self.nets
        local_volumes = sum(len(b) for b in micro_batches)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        nets.ddp.train()
        for j, indices in enumerate(micro_batches):
            x0 = self._batch(indices)
            t, eps = self.noise(x0, step=step, rank=self.ctx.rank, micro_batch=j, indices=indices)
            xt, target = self._noised_and_target(x0, eps, t)
            last = j == len(micro_batches) - 1
            with no_sync_if(nets.ddp, self.ctx.distributed and not last):
                with self._autocast():
                    labels = self._labels(
                        [self.data.train_conditions[i] for i in indices] if self.data.train_conditions else [],
                        dropout_seed=derive_seed(self.config.seed, "conditions", step, self.ctx.rank, j),
                    )
                    pred = nets.ddp(x=xt, timesteps=t, **labels)
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                # Weight by volumes so the step's gradient is the mean over all its volumes,
                # whatever the size of the last (short) micro-batch.
                nets.scaler.scale(loss * (len(indices) / local_volumes)).backward()
            loss_sum += loss.detach().double() * len(indices)
        stop = 1.0 if self.stop_requested() else 0.0
        total_loss, total_volumes, stop_votes = self.ctx.all_sum([loss_sum.item(), float(local_volumes), stop])
        mean_loss = total_loss / total_volumes
        where = f"at epoch {self.progress.epoch + 1}, step {step + 1}"
        if not math.isfinite(mean_loss):
            self._diverged(f"the training loss became {mean_loss} {where}")
        nets.scaler.unscale_(nets.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(nets.params, max_norm))
        if not math.isfinite(grad_norm) and self.precision != "fp16":
            # fp16's scaler skips such steps by design; elsewhere it means divergence.
            self._diverged(f"the gradient norm became {grad_norm} {where}")
        nets.scaler.step(nets.optimizer)
        nets.scaler.update()
        nets.optimizer.zero_grad(set_to_none=True)
        if nets.ema is not None:
            nets.ema.update(nets.model)
        return _StepOutcome(loss=mean_loss, volumes=total_volumes, grad_norm=grad_norm, stop=stop_votes > 0)

    def _diverged(self, what: str) -> None:
        last = self.run_dir / CHECKPOINT_DIR / "last.safetensors"
        kept = (
            f"the last good checkpoint is {last} and --resume {self.run_dir} continues from the last saved state"
            if last.exists()
            else "no epoch had finished, so there is no checkpoint yet"
        )
        raise TrainingError(
            f"training stopped: {what}, not a finite number; nothing after the last good state was saved — {kept}. "
            "Try a lower --lr, --precision fp32, or check the data"
        )

    # ------------------------------------------------------------------ validation and samples
    @torch.no_grad()
    def _validate(self, model: torch.nn.Module) -> float | None:
        """Mean MSE over the validation scans at fixed timesteps with fixed noise."""
        val_set = self.data.val_set
        if len(val_set) == 0:
            return None
        model.eval()
        big_t = self.spec.schedule.num_train_timesteps
        k = self.config.val_timesteps
        # Golden-ratio offsets: volume v's k timesteps are stratified and shifted by a fixed
        # amount, so the set covers 0..T-1 evenly yet never changes between epochs.
        golden = (math.sqrt(5) - 1) / 2

        def timestep(v: int, i: int) -> int:
            return min(big_t - 1, int((i + (v * golden) % 1.0) * big_t / k))

        pairs = [(v, i) for v in range(len(val_set)) for i in range(k)]
        mine = pairs[self.ctx.rank :: self.ctx.world_size]
        total = 0.0
        for start in range(0, len(mine), self.config.batch_size):
            chunk = mine[start : start + self.config.batch_size]
            x0 = torch.stack([val_set[v] for v, _ in chunk]).to(self.device)
            # CPU generators: the same noise on every device and in every epoch.
            seeds = [derive_seed(self.config.seed, "val", v, i) for v, i in chunk]
            eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
            eps = eps.to(self.device)
            t = torch.tensor([timestep(v, i) for v, i in chunk], device=self.device)
            xt, target = self._noised_and_target(x0, eps, t)
            with self._autocast():
                labels = self._labels(
                    [self.data.val_conditions[v] for v, _ in chunk] if self.data.val_conditions else []
                )
                pred = model(x=xt, timesteps=t, **labels)
            per_volume = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
            total += float(per_volume.double().sum())
        summed, count = self.ctx.all_sum([total, float(len(mine))])
        return summed / count

    def _sample_png(self, epoch: int) -> Path | None:
        from engine.generation import GenerationRequest, generate
        from engine.samplers import SamplerSettings

        cfg = self.config
        ema = self.nets.ema
        model = ema.module if ema else self.nets.model
        steps = min(cfg.sample_steps, self.spec.schedule.num_train_timesteps)
        settings = SamplerSettings(name=cfg.sample_sampler, steps=steps)
        volumes = []
        request = GenerationRequest(
            spec=self.spec,
            seeds=tuple(range(cfg.sample_count)),
            settings=settings,
            device=str(self.device),
            precision="bf16" if self.precision == "bf16" else "fp32",
            batch_size=cfg.sample_count,
            weights="ema" if ema else "raw",
        )
        events = generate(model, request)
        for event in events:
            volumes.extend(v.array for v in event.finished)
        standard = [self.spec.intensity.model_to_standard(v) for v in volumes]
        which = "EMA" if ema else "raw"
        return plot_sample_slices(
            standard,
            self.run_dir / "samples" / f"epoch_{epoch:04d}.png",
            title=f"epoch {epoch}, {which} weights, {cfg.sample_sampler} {steps} steps, seeds 0-{cfg.sample_count - 1}",
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, ctx, p = self.config, self.ctx, self.progress
        n_steps = steps_per_epoch(
            len(self.data.train_set), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world_size=ctx.world_size
        )
        self.emit(
            "info",
            f"{self.spec.name} preset on {ctx.describe()}, {self.precision}; effective batch size "
            f"{self.effective_batch_size} = {cfg.batch_size} per process x {cfg.grad_accum} accumulation x "
            f"{ctx.world_size} process(es); {n_steps} optimizer steps per epoch",
        )
        steps_log = epochs_log = None
        tb = TensorBoardLog(self.run_dir / "logs" / "tensorboard", enabled=cfg.tensorboard and ctx.is_main)
        if cfg.tensorboard and ctx.is_main and not tb.available:
            self.emit("info", f"TensorBoard logging off: {tb.reason}")
        if ctx.is_main:
            steps_log = CsvLog(self.run_dir / "logs" / "steps.csv", STEP_COLUMNS)
            epochs_log = CsvLog(self.run_dir / "logs" / "epochs.csv", EPOCH_COLUMNS)
            # Rows logged after the saved state will be redone: drop them so nothing counts twice.
            steps_log.truncate(key="global_step", keep_through=p.global_step)
            epochs_log.truncate(key="epoch", keep_through=p.epoch)
        invocation_start = time.perf_counter()
        stopped = False
        last_ckpt = best_ckpt = None
        try:
            while p.epoch < cfg.epochs and not stopped:
                order, groups = self.epoch_groups(p.epoch)
                epoch_start = time.perf_counter()
                while p.step_in_epoch < len(groups):
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    step = self.optimizer_step(groups[p.step_in_epoch])
                    p.record_step(
                        loss=step.loss,
                        volumes=step.volumes,
                        seconds=time.perf_counter() - t0,
                        cpu_seconds=time.process_time() - cpu0,
                    )
                    if steps_log is not None:
                        steps_log.write(
                            {
                                "epoch": p.epoch + 1,
                                "step_in_epoch": p.step_in_epoch,
                                "global_step": p.global_step,
                                "loss": step.loss,
                                "lr": self.nets.optimizer.param_groups[0]["lr"],
                                "grad_norm": step.grad_norm,
                                "elapsed_s": p.elapsed_s,
                                "cpu_s": p.cpu_s,
                            }
                        )
                        tb.scalars(p.global_step, {"loss/train_step": step.loss, "grad_norm": step.grad_norm})
                    if step.stop:
                        stopped = True
                        break
                    if p.step_in_epoch < len(groups) and self._state_due():
                        self._save_state(order)
                if stopped:
                    self._save_state(order)
                    self.emit("info", f"stopped on request at step {p.global_step}; --resume {self.run_dir} continues")
                    break
                last_ckpt, best_ckpt = self._end_epoch(epoch_start, tb, epochs_log, order)
        finally:
            for log in (steps_log, epochs_log):
                if log is not None:
                    log.close()
            tb.close()
        ckpt_dir = self.run_dir / CHECKPOINT_DIR
        last = ckpt_dir / "last.safetensors"
        if not stopped:
            best_text = f"{p.best_metric:.6g}" if math.isfinite(p.best_metric) else "n/a"
            self.emit(
                "info",
                f"done: {p.epoch} epochs, {p.global_step} optimizer steps, best {best_text}; "
                f"checkpoints in {ckpt_dir} (last.safetensors, best.safetensors)",
            )
        best = ckpt_dir / "best.safetensors"
        return TrainResult(
            run_dir=self.run_dir,
            epochs_done=p.epoch,
            global_step=p.global_step,
            best_metric=p.best_metric if math.isfinite(p.best_metric) else None,
            last_checkpoint=last if (last_ckpt or last.exists()) else None,
            best_checkpoint=best if (best_ckpt or best.exists()) else None,
            effective_batch_size=self.effective_batch_size,
            stopped_early=stopped,
            train_seconds=time.perf_counter() - invocation_start,
        )

    def _end_epoch(
        self, epoch_start: float, tb: TensorBoardLog, epochs_log: CsvLog | None, order: list[int]
    ) -> tuple[Path | None, Path | None]:
        cfg, ctx, p = self.config, self.ctx, self.progress
        train_loss = p.epoch_mean_loss
        volumes_per_s = p.epoch_volumes / p.epoch_train_s if p.epoch_train_s > 0 else 0.0
        val_loss = self._validate(self.nets.model)
        val_ema = self._validate(self.nets.ema.module) if self.nets.ema is not None else None
        metric = val_ema if val_ema is not None else (val_loss if val_loss is not None else train_loss)
        is_best = metric < p.best_metric
        epoch = p.epoch + 1
        last = best = None
        losses = {"train_loss": train_loss, "val_loss": val_loss, "val_loss_ema": val_ema}
        if ctx.is_main:
            last = self._save_checkpoint("last", **losses)
            if is_best:
                best_by = "val_loss_ema" if val_ema is not None else "val_loss"
                best_by = best_by if val_loss is not None else "train_loss"
                best = self._save_checkpoint("best", **losses, best_by=best_by)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                self._save_checkpoint(f"epoch_{epoch:04d}", **losses)
        if is_best:
            p.best_metric = metric
        epoch_s = time.perf_counter() - epoch_start
        summary = EpochSummary(
            epoch=epoch,
            epochs=cfg.epochs,
            global_step=p.global_step,
            train_loss=train_loss,
            val_loss=val_loss,
            val_loss_ema=val_ema,
            epoch_s=epoch_s,
            volumes_per_s=volumes_per_s,
            is_best=is_best,
            eta_s=(cfg.epochs - epoch) * epoch_s,
        )
        if ctx.is_main and epochs_log is not None:
            epochs_log.write({**dataclasses.asdict(summary), "best": is_best})  # the log keeps EPOCH_COLUMNS
            tb.scalars(epoch, {"loss/train": train_loss, "loss/val": val_loss, "loss/val_ema": val_ema})
            plot_loss_curve(
                epochs_log.path,
                self.run_dir / "loss_curve.png",
                title=f"{self.run_dir.name}: MSE per epoch",
                prediction_type=self.spec.schedule.prediction_type,
            )
        if ctx.is_main and cfg.sample_every and epoch % cfg.sample_every == 0:
            png = self._sample_png(epoch)
            self.emit("info", f"samples → {png}")
        self.emit("epoch", "", summary)
        p.next_epoch()
        self._save_state(order)
        ctx.barrier()
        return last, best
