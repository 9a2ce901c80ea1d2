"""What ``--resume`` reads and writes in a run directory: the progress counters and the resume state.

A run directory holds ``config.toml`` (the resolved configuration, written before the first
step) and ``resume/state.pt``, everything needed to continue a run as if it had never
stopped: the weights, the EMA, the optimizer and gradient-scaler state, the progress
counters (:class:`TrainingProgress`), the batch layout the run used, the epoch's data order
and the global RNG states.

It also keeps the precision the run computes in, so a resumed run continues in it (see
:mod:`engine.training.precision`); states written before that resume in the precision the
old rule gave.

``state.pt`` is a ``torch.save`` of tensors and plain containers only, loaded with
``weights_only=True`` (no pickled code runs). Its keys are flat, one per counter, as they have
been since version 1; a damaged or foreign file is a :class:`TrainingError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.training.config import PRECISIONS, RESUMABLE_OVERRIDES, TrainConfig, load_config
from engine.training.errors import TrainingError

RESUME_FORMAT = "brainsynth-resume"
RESUME_VERSION = 1
CONFIG_FILE = "config.toml"
RESUME_FILE = Path("resume") / "state.pt"


@dataclass
class TrainingProgress:
    """Where a run stands: the counters saved with the resume state and restored as one object.

    Attributes:
        epoch: index of the epoch in progress (0-based).
        step_in_epoch: optimizer steps already done in that epoch.
        global_step: optimizer steps done in total.
        best_metric: the best epoch metric so far (validation MSE, or training MSE without a
            validation split); ``inf`` before the first epoch ends.
        elapsed_s: training seconds over all invocations (wall time of optimizer steps).
        cpu_s: CPU seconds of this process in optimizer steps, over all invocations.
        epoch_loss_sum: sum of per-volume MSE so far in this epoch, over all ranks.
        epoch_volumes: volumes trained on so far in this epoch, over all ranks.
        epoch_train_s: seconds spent in this epoch's optimizer steps.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = math.inf
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_volumes: float = 0.0
    epoch_train_s: float = 0.0

    def record_step(self, *, loss: float, volumes: float, seconds: float, cpu_seconds: float) -> None:
        """Count one optimizer step of ``volumes`` volumes with mean loss ``loss``."""
        self.step_in_epoch += 1
        self.global_step += 1
        self.epoch_loss_sum += loss * volumes
        self.epoch_volumes += volumes
        self.epoch_train_s += seconds
        self.elapsed_s += seconds
        self.cpu_s += cpu_seconds

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (the per-epoch sums start again)."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum = self.epoch_volumes = self.epoch_train_s = 0.0

    @property
    def epoch_mean_loss(self) -> float:
        """Mean per-volume MSE of the epoch so far (0 before its first step)."""
        return self.epoch_loss_sum / max(self.epoch_volumes, 1.0)

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Path) -> TrainingProgress:
        """The counters from a resume state's flat keys.

        ``cpu_s`` is absent from states written before it was counted and starts at 0 then.

        Raises:
            TrainingError: a counter is missing or not a number.
        """
        values: dict[str, int | float] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data and f.name == "cpu_s":
                continue
            try:
                raw = data[f.name]
                values[f.name] = int(raw) if f.type == "int" else float(raw)
            except (KeyError, TypeError, ValueError):
                message = f"the resume state {source} is damaged ({f.name!r} is missing or invalid)"
                raise TrainingError(message) from None
        return cls(**values)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, NumPy, Python, and CUDA's when present) as tensors and lists."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA's only on the same number of GPUs)."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class ResumeState:
    """Everything ``--resume`` restores, as written to ``resume/state.pt``.

    Attributes:
        model: the raw weights (CPU tensors).
        ema: the EMA weights, empty when the run keeps no EMA.
        ema_updates: EMA updates done (drives the EMA's decay warm-up).
        optimizer: ``torch.optim.Optimizer.state_dict()``.
        scaler: ``torch.amp.GradScaler.state_dict()``.
        progress: the counters.
        world_size: processes the run used when the state was saved.
        batch_size: volumes per process per micro-batch.
        grad_accum: micro-batches per optimizer step.
        seed: the run's seed.
        data_order: the epoch's global sample order (checks a mid-epoch resume sees the same data).
        rng: the global RNG states (:func:`rng_state`).
        precision: the precision the run computes in (``fp32``, ``bf16``, ``fp16``), so a
            resumed run keeps it; None in states written before it was saved.
        precision_reason: why that precision was chosen, as reported when the run started.
        extra: what else a trainer must restore, as tensors and plain containers (the
            autoencoder trainer's discriminator, its optimizer and the epoch's loss sums);
            empty for the diffusion trainer and in states written before it was saved.
    """

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    ema_updates: int
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    progress: TrainingProgress
    world_size: int
    batch_size: int
    grad_accum: int
    seed: int
    data_order: list[int]
    rng: dict[str, Any]
    precision: str | None = None
    precision_reason: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def capture(
        cls,
        *,
        model: torch.nn.Module,
        ema: Any,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        progress: TrainingProgress,
        world_size: int,
        batch_size: int,
        grad_accum: int,
        seed: int,
        data_order: list[int],
        precision: str | None,
        precision_reason: str | None,
        extra: dict[str, Any] | None = None,
    ) -> ResumeState:
        """The state of a run now: weights copied to the CPU, the global RNGs read.

        ``ema`` is the run's ``EMA`` (or None); ``extra`` as the attribute of that name.
        """
        return cls(
            model=cpu_state(model),
            ema=cpu_state(ema.module) if ema else {},
            ema_updates=ema.updates if ema else 0,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            progress=progress,
            world_size=world_size,
            batch_size=batch_size,
            grad_accum=grad_accum,
            seed=seed,
            data_order=data_order,
            rng=rng_state(),
            precision=precision,
            precision_reason=precision_reason,
            extra=extra or {},
        )

    def write(self, path: Path) -> None:
        """Write the state atomically (a killed write leaves the previous state intact)."""
        from engine.atomic import atomic_path

        state = {
            "format": RESUME_FORMAT,
            "version": RESUME_VERSION,
            "model": self.model,
            "ema": self.ema,
            "ema_updates": self.ema_updates,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            **self.progress.to_dict(),
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "data_order": torch.tensor(self.data_order, dtype=torch.int64),
            "rng": self.rng,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "extra": self.extra,
        }
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(state, tmp)

    @classmethod
    def read(cls, path: Path) -> ResumeState:
        """Read a state written by :meth:`write` (this version or an earlier one).

        Raises:
            TrainingError: the file is unreadable, not a resume state, from a newer version,
                or misses an entry.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises any of several types
            # torch's refusals run to many lines; the first says what is wrong.
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainingError(f"cannot read the resume state {path}: {first_line}") from None
        foreign = not isinstance(state, dict) or state.get("format") != RESUME_FORMAT
        if foreign or int(state.get("version", 0)) > RESUME_VERSION:
            raise TrainingError(f"{path} is not a resume state this version of BrainSynth can read")
        progress = TrainingProgress.from_dict(state, source=path)
        precision, reason = state.get("precision"), state.get("precision_reason")
        if precision is not None and precision not in PRECISIONS[1:]:
            raise TrainingError(f"the resume state {path} is damaged (precision {precision!r})")
        try:
            return cls(
                model=state["model"],
                ema=state["ema"],
                ema_updates=int(state["ema_updates"]),
                optimizer=state["optimizer"],
                scaler=state["scaler"],
                progress=progress,
                world_size=int(state["world_size"]),
                batch_size=int(state["batch_size"]),
                grad_accum=int(state["grad_accum"]),
                seed=int(state["seed"]),
                data_order=state["data_order"].tolist(),
                rng=state["rng"],
                precision=precision,
                precision_reason=reason if isinstance(reason, str) else None,
                extra=dict(state.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrainingError(f"the resume state {path} is damaged (bad or missing entry {exc})") from None

    def check_fits(self, *, world_size: int, epoch_order: list[int], source: Path) -> None:
        """Refuse a resume that could not continue the saved run step for step.

        Args:
            world_size: processes of the resuming run.
            epoch_order: the resuming run's sample order for the saved epoch.
            source: the state file, for the message.

        Raises:
            TrainingError: stopped mid-epoch with another number of processes, or mid-epoch
                on other data.
        """
        if self.progress.step_in_epoch == 0:
            return
        if self.world_size != world_size:
            raise TrainingError(
                f"the run was stopped mid-epoch with {self.world_size} process(es); resume it with the same "
                f"number of processes (now {world_size}), or from an epoch boundary"
            )
        if self.data_order != epoch_order:
            raise TrainingError(f"{source} does not match this run's data (the epoch's order differs); start anew")


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's ``state_dict`` detached onto the CPU (what a resume state stores)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def state_due(config: Any, *, global_step: int, last_save: float) -> bool:
    """Whether a mid-epoch resume state is due: every ``config.resume_every_steps`` steps or
    ``config.resume_every_minutes`` minutes (``time.monotonic()`` of the last save)."""
    import time

    if config.resume_every_steps and global_step % config.resume_every_steps == 0:
        return True
    minutes = config.resume_every_minutes
    return bool(minutes) and time.monotonic() - last_save >= minutes * 60


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Check that ``run_dir`` can be started (empty of runs) or resumed (holds a resume state).

    Raises:
        TrainingError: resuming where no state was saved, starting where a run already is,
            or a file where the folder should be.
    """
    state = run_dir / RESUME_FILE
    if resume and not state.exists():
        raise TrainingError(
            f"{run_dir} has no resume state ({RESUME_FILE}); it never finished a checkpoint, start it anew"
        )
    if not resume and ((run_dir / CONFIG_FILE).exists() or state.exists()):
        raise TrainingError(
            f"{run_dir} already holds a training run; continue it with --resume {run_dir} or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is a file; --out must be a folder")


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of an existing run with the overrides a resume may change.

    Args:
        run_dir: the run directory to continue.
        overrides: options given on the command line; None values are ignored.

    Raises:
        TrainingError: no run there, or an override that would change what each step
            computes (batch size, preset, seed...), naming the option.
    """
    run_dir = Path(run_dir).expanduser()
    saved = run_dir / CONFIG_FILE
    if not saved.exists():
        raise TrainingError(f"{run_dir} holds no training run ({CONFIG_FILE} is missing); nothing to resume")
    base = load_config(saved, validate=False)
    given = {k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():
        current = getattr(base, key, None)
        same = list(current) == list(value) if isinstance(current, tuple | list) else current == value
        if key not in RESUMABLE_OVERRIDES and not same:
            raise TrainingError(
                f"--{key.replace('_', '-')} cannot change when resuming (the run used {current!r}); "
                f"a resume may change only: {', '.join(sorted(k.replace('_', '-') for k in RESUMABLE_OVERRIDES))}"
            )
    given["out"] = str(run_dir)
    return load_config(saved, given)
