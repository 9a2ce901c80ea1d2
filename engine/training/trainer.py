"""The training loop: DDPM noise-prediction MSE, Adam, EMA, validation, checkpoints, exact resume.

One step, as in the reference study and MONAI's tutorials: draw a timestep t uniformly in
0..T-1 and Gaussian noise eps for each volume x_0 (model space), form
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` and minimise ``MSE(model(x_t, t), eps)``
(or the MSE to v or x_0 when the preset's ``prediction_type`` says so).

Exact resume. Everything random in a step (timesteps and noise) comes from a generator
seeded with ``(seed, global step, rank, micro-batch)``, and each epoch's data order from
``(seed, epoch)``. Randomness therefore never depends on what ran before in the process,
and restoring the weights, the EMA, the optimizer and scaler state and the counters is
enough to continue as if never interrupted: on the CPU a killed-and-resumed run ends with
weights equal to an uninterrupted run's (tested). The global RNG states are saved and
restored as well, for anything else (dropout, if a preset ever turns it on).

Files in the run directory (rank 0 writes; see :mod:`engine.training.logging` for logs)::

    config.toml              resolved configuration
    split.csv                train/validation assignment, written before the first step
    failed_files.csv         inputs that could not be used, with reasons
    checkpoints/last.safetensors, best.safetensors, epoch_NNNN.safetensors
    resume/state.pt          everything --resume needs (torch.save of tensors and plain
                             containers; loaded with weights_only=True)
    logs/steps.csv, logs/epochs.csv, logs/tensorboard/, loss_curve.png, samples/
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.training.config import RESUMABLE_OVERRIDES, TrainConfig, load_config
from engine.training.distributed import DistContext, no_sync_if, setup, shard_indices
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

RESUME_FORMAT = "brainsynth-resume"
RESUME_VERSION = 1
CONFIG_FILE = "config.toml"
RESUME_FILE = Path("resume") / "state.pt"
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


@dataclass
class _Counters:
    epoch: int = 0  # index of the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps already done in that epoch
    global_step: int = 0
    best_metric: float = math.inf
    elapsed_s: float = 0.0  # training seconds over all invocations
    cpu_s: float = 0.0  # CPU seconds of this process in training steps
    epoch_loss_sum: float = 0.0  # sum of per-volume MSE so far in this epoch (all ranks)
    epoch_volumes: float = 0.0
    epoch_train_s: float = 0.0
    history: dict[str, Any] = field(default_factory=dict)


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from integers and labels; stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The global sample order of an epoch: a permutation fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(_mix(seed, "order", epoch))
    return torch.randperm(n, generator=generator).tolist()


def steps_per_epoch(n_train: int, *, batch_size: int, grad_accum: int, world_size: int) -> int:
    """Optimizer steps per epoch for ``n_train`` volumes (the last step may be smaller)."""
    per_rank = -(-n_train // world_size)
    batches = -(-per_rank // batch_size)
    return -(-batches // grad_accum)


def diffuse(
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    *,
    sqrt_abar: torch.Tensor,
    sqrt_one_minus_abar: torch.Tensor,
) -> torch.Tensor:
    """The forward process q(x_t | x_0): ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` per volume.

    What MONAI's ``DDPMScheduler.add_noise`` computes; the tables are precomputed once (on
    the training device) from the float64 schedule.

    Args:
        x0: clean volumes ``(B, C, D, H, W)``, model space.
        eps: standard normal noise of the same shape.
        t: integer timesteps ``(B,)`` in 0..T-1.
        sqrt_abar: ``sqrt(alphas_cumprod)`` as a float32 tensor of length T.
        sqrt_one_minus_abar: ``sqrt(1 - alphas_cumprod)``, same.
    """
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    return sqrt_abar[t].view(shape) * x0 + sqrt_one_minus_abar[t].view(shape) * eps


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA GPU with bf16 support, else ``fp32``.

    On the CPU bf16 autocast of 3-D convolutions is about 100x slower than fp32, so it is
    never chosen automatically there.

    Raises:
        TrainingError: bf16/fp16 asked for on a device that cannot do it.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise TrainingError(f"{precision} mixed precision needs a CUDA GPU; on {device.type} use fp32 (or auto)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError("this GPU does not support bf16; use --precision fp16 or fp32")
    return precision


def freeze_encoder(model: torch.nn.Module, levels: int) -> list[str]:
    """Stop gradients for the input convolution and the first ``levels`` encoder levels.

    The time embedding stays trainable: it conditions every level, including the ones
    being fine-tuned. Returns the frozen parameter names.
    """
    if levels <= 0:
        return []
    frozen = []
    modules = [("conv_in", model.conv_in)] + [(f"down_blocks.{i}", model.down_blocks[i]) for i in range(levels)]
    for prefix, module in modules:
        for name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return frozen


class _EMA:
    """Exponential moving average of a model's floating-point state, as a second module.

    Decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (as in diffusers'
    EMAModel), so the first epochs are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _tensor_pairs(self, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            src, dst = model.state_dict(keep_vars=True), self.module.state_dict(keep_vars=True)
            self._pairs = [(dst[k].data, src[k].data) for k in dst if dst[k].is_floating_point()]
        return self._pairs

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        pairs = self._tensor_pairs(model)
        torch._foreach_lerp_([d for d, _ in pairs], [s for _, s in pairs], 1.0 - decay)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        config: the resolved config; for a resume, use :func:`resume_config`.
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
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    ctx = setup(config.device)
    try:
        return _Trainer(config, ctx, resume=resume, callback=callback, stop_requested=stop_requested).run()
    finally:
        ctx.shutdown()


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext,
        *,
        resume: bool,
        callback: EventCallback | None,
        stop_requested: Callable[[], bool] | None,
    ) -> None:
        from engine.specs import get_preset

        self.config = config
        self.ctx = ctx
        self.resume = resume
        self.callback = callback if ctx.is_main else None
        self.stop_requested = stop_requested or (lambda: False)
        self.spec = get_preset(config.preset)
        self.run_dir = config.run_dir
        self.device = ctx.device
        self.precision = resolve_precision(config.precision, self.device)
        self.counters = _Counters()
        self.init_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ reporting
    def emit(self, kind: str, message: str, summary: EpochSummary | None = None) -> None:
        if self.callback is not None:
            self.callback(TrainEvent(kind, message, summary))

    # ------------------------------------------------------------------ set-up
    def _prepare_run_dir(self) -> None:
        from engine.atomic import atomic_write_text, remove_orphaned_temporaries

        state = self.run_dir / RESUME_FILE
        if self.resume and not state.exists():
            raise TrainingError(
                f"{self.run_dir} has no resume state ({RESUME_FILE}); it never finished a checkpoint, start it anew"
            )
        if not self.resume and ((self.run_dir / CONFIG_FILE).exists() or state.exists()):
            raise TrainingError(
                f"{self.run_dir} already holds a training run; continue it with --resume {self.run_dir} "
                "or choose another --out"
            )
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise TrainingError(f"{self.run_dir} is a file; --out must be a folder")
        # Every rank has looked before rank 0 writes, or a slow rank would find rank 0's
        # fresh config.toml and take it for an earlier run.
        self.ctx.barrier()
        if self.ctx.is_main:
            for sub in ("", CHECKPOINT_DIR, "logs", "resume"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            remove_orphaned_temporaries(self.run_dir, recursive=True)  # what a killed run left
            atomic_write_text(self.run_dir / CONFIG_FILE, self.config.to_toml(), overwrite=True)
        self.ctx.barrier()

    def _prepare_data(self) -> None:
        from engine.training import data as D

        cfg, ctx = self.config, self.ctx
        items = D.discover(cfg.data)
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else D.default_cache_dir()
        cache = D.PreparationCache(cache_dir, self.spec)
        started = time.perf_counter()
        mine = {i: cache.prepare(items[i]) for i in range(ctx.rank, len(items), ctx.world_size)}
        merged: dict[int, D.PreparedItem] = {}
        for part in ctx.gather_objects(mine):
            merged.update(part)
        results = [merged[i] for i in range(len(items))]
        failed = [r for r in results if not r.ok]
        if ctx.is_main:
            D.write_failures(self.run_dir / D.FAILED_FILE, results)
            cached = sum(r.from_cache for r in results)
            self.emit(
                "info",
                f"data: {len(results) - len(failed)} of {len(results)} scans usable ({cached} from the cache in "
                f"{cache.root}, {time.perf_counter() - started:.1f} s)",
            )
            for r in failed:
                self.emit("warning", f"skipped {r.item.path}: {r.reason}")
            if failed:
                self.emit("warning", f"{len(failed)} file(s) skipped; listed in {self.run_dir / D.FAILED_FILE}")
        usable = D.check_failures(results, max_failed_fraction=cfg.max_failed_fraction)
        split_file = self.run_dir / D.SPLIT_FILE
        if self.resume and split_file.exists():
            split = D.read_split(split_file, usable, seed=cfg.seed)
        else:
            split = D.make_split(usable, val_fraction=cfg.val_fraction, seed=cfg.seed)
            if ctx.is_main:
                D.write_split(split_file, split)
        ctx.barrier()
        if ctx.is_main:
            self.emit(
                "info",
                f"split (seed {cfg.seed}): {len(split.train)} training, {len(split.val)} validation scans "
                f"→ {split_file}",
            )
            if not split.val:
                self.emit("warning", "no validation scans: 'best' is chosen by the training loss")
        self.split = split
        self.train_set = D.VolumeDataset(split.train, self.spec.intensity)
        self.val_set = D.VolumeDataset(split.val, self.spec.intensity)

    def _build_model(self) -> None:
        cfg = self.config
        torch.manual_seed(_mix(cfg.seed, "init"))
        use_flash = self.device.type == "cuda"
        model = self.spec.build_model(use_flash_attention=use_flash)
        if cfg.init_from:
            model = self._load_init(model)
        frozen = freeze_encoder(model, cfg.freeze_encoder_levels)
        if frozen and self.ctx.is_main:
            self.emit("info", f"frozen: input convolution and {cfg.freeze_encoder_levels} encoder level(s)")
        model.to(self.device)
        self.model = model
        self.ema = _EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        if self.ctx.distributed:
            kwargs: dict[str, Any] = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.ddp: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model, **kwargs)
        else:
            self.ddp = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay, fused=fused
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        abar = self.spec.schedule.alphas_cumprod()
        self.sqrt_abar = abar.sqrt().float().to(self.device)
        self.sqrt_one_minus_abar = (1.0 - abar).sqrt().float().to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed volume shapes: pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True

    def _load_init(self, model: torch.nn.Module) -> torch.nn.Module:
        from engine.checkpoint import check_state_dict, load_checkpoint

        ckpt = load_checkpoint(self.config.init_from)
        if ckpt.spec.unet != self.spec.unet:
            raise TrainingError(
                f"--init-from {Path(self.config.init_from).name} holds a {ckpt.spec.name!r} network, which does not "
                f"match preset {self.spec.name!r}; use --preset {ckpt.spec.name}"
            )
        kind, weights = ckpt.select_weights(prefer_ema=self.config.init_use_ema)
        use_ema = kind == "ema"
        check_state_dict(model, weights, source=ckpt.describe_source())
        model.load_state_dict(weights, strict=True)
        self.init_info = {
            "init_from": str(Path(self.config.init_from).resolve()),
            "init_from_sha256": ckpt.sha256,
            "init_from_weights": "ema" if use_ema else "model",
        }
        self.emit("info", f"starting from {Path(self.config.init_from).name} ({'EMA' if use_ema else 'raw'} weights)")
        if ckpt.spec.schedule.prediction_type != self.spec.schedule.prediction_type:
            self.emit(
                "info",
                f"the starting weights predicted {ckpt.spec.schedule.prediction_type}; "
                f"this run trains them to predict {self.spec.schedule.prediction_type}",
            )
        return model

    # ------------------------------------------------------------------ resume state
    def _state_path(self) -> Path:
        return self.run_dir / RESUME_FILE

    def _save_state(self, order: list[int]) -> None:
        if not self.ctx.is_main:
            return
        from engine.atomic import atomic_path
        from engine.training.logging import sync_logs

        c = self.counters
        state = {
            "format": RESUME_FORMAT,
            "version": RESUME_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema else {},
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": c.epoch,
            "step_in_epoch": c.step_in_epoch,
            "global_step": c.global_step,
            "best_metric": c.best_metric,
            "elapsed_s": c.elapsed_s,
            "cpu_s": c.cpu_s,
            "epoch_loss_sum": c.epoch_loss_sum,
            "epoch_volumes": c.epoch_volumes,
            "epoch_train_s": c.epoch_train_s,
            "world_size": self.ctx.world_size,
            "batch_size": self.config.batch_size,
            "grad_accum": self.config.grad_accum,
            "seed": self.config.seed,
            "data_order": torch.tensor(order, dtype=torch.int64),
            "rng": _rng_state(),
        }
        sync_logs(self.run_dir / "logs")  # the logs on disk hold every row this state counts
        with atomic_path(self._state_path(), overwrite=True) as tmp:
            torch.save(state, tmp)
        self._last_state_save = time.monotonic()

    def _load_state(self) -> None:
        path = self._state_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises any of several types
            raise TrainingError(f"cannot read the resume state {path}: {exc}") from None
        if state.get("format") != RESUME_FORMAT or int(state.get("version", 0)) > RESUME_VERSION:
            raise TrainingError(f"{path} is not a resume state this version of BrainSynth can read")
        c = self.counters
        c.epoch, c.step_in_epoch, c.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        if state["world_size"] != self.ctx.world_size and c.step_in_epoch != 0:
            raise TrainingError(
                f"the run was stopped mid-epoch with {state['world_size']} process(es); resume it with the same "
                f"number of processes (now {self.ctx.world_size}), or from an epoch boundary"
            )
        if state["world_size"] != self.ctx.world_size:
            self.emit(
                "warning",
                f"resuming with {self.ctx.world_size} instead of {state['world_size']} processes: the effective "
                "batch size changes from here on",
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"]:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr  # the one hyper-parameter a resume may change
        self.scaler.load_state_dict(state["scaler"])
        c.best_metric = float(state["best_metric"])
        c.elapsed_s = float(state["elapsed_s"])
        c.cpu_s = float(state.get("cpu_s", 0.0))
        c.epoch_loss_sum = float(state["epoch_loss_sum"])
        c.epoch_volumes = float(state["epoch_volumes"])
        c.epoch_train_s = float(state["epoch_train_s"])
        _set_rng_state(state["rng"])
        if c.step_in_epoch:
            expected = epoch_order(len(self.train_set), seed=self.config.seed, epoch=c.epoch)
            if state["data_order"].tolist() != expected:
                raise TrainingError(f"{path} does not match this run's data (the epoch's order differs); start anew")
        self.emit("info", f"resuming at epoch {c.epoch + 1}, step {c.step_in_epoch} of it ({c.global_step} in total)")

    # ------------------------------------------------------------------ checkpoints
    def _provenance(self, **extra: Any) -> dict:
        return {
            "source": "brainsynth-cli train",
            "training": {
                "run_dir": str(self.run_dir.resolve()),
                "epoch": self.counters.epoch + 1,
                "global_step": self.counters.global_step,
                "train_scans": len(self.split.train),
                "val_scans": len(self.split.val),
                "effective_batch_size": self.effective_batch_size,
                "world_size": self.ctx.world_size,
                "precision": self.precision,
                "config": self.config.to_dict(),
                **self.init_info,
                **extra,
            },
        }

    def _save_checkpoint(self, name: str, **extra: Any) -> Path:
        from engine.checkpoint import save_checkpoint

        path = self.run_dir / CHECKPOINT_DIR / f"{name}.safetensors"
        save_checkpoint(
            path,
            spec=self.spec,
            weights=self.model.state_dict(),
            ema_weights=self.ema.module.state_dict() if self.ema else None,
            provenance=self._provenance(**extra),
            overwrite=True,
        )
        return path

    # ------------------------------------------------------------------ one step
    def _batch(self, indices: list[int]) -> torch.Tensor:
        batch = torch.stack([self.train_set[i] for i in indices])
        return batch.to(self.device, non_blocking=True)

    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(device_type="cuda", dtype=dtype)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _noisy(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for a batch; t and eps drawn from ``generator`` (on the model's device)."""
        n = x0.shape[0]
        t = torch.randint(0, self.spec.schedule.num_train_timesteps, (n,), device=self.device, generator=generator)
        eps = torch.randn(x0.shape, device=self.device, generator=generator, dtype=x0.dtype)
        xt, target = self._noised_and_target(x0, eps, t)
        return xt, t, target

    def _noised_and_target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, what the network should output there) for the schedule's prediction type."""
        xt = diffuse(x0, eps, t, sqrt_abar=self.sqrt_abar, sqrt_one_minus_abar=self.sqrt_one_minus_abar)
        shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
        target = self.spec.schedule.training_target(
            x0, eps, self.sqrt_abar[t].view(shape), self.sqrt_one_minus_abar[t].view(shape)
        )
        return xt, target

    def _optimizer_step(self, micro_batches: list[list[int]]) -> tuple[float, float, float]:
        """One optimizer step over a group of micro-batches; returns (mean loss, volumes, grad norm)."""
        c = self.counters
        local_volumes = sum(len(b) for b in micro_batches)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.ddp.train()
        for j, indices in enumerate(micro_batches):
            x0 = self._batch(indices)
            generator = torch.Generator(device=self.device).manual_seed(
                _mix(self.config.seed, "step", c.global_step, self.ctx.rank, j)
            )
            xt, t, target = self._noisy(x0, generator)
            last = j == len(micro_batches) - 1
            with no_sync_if(self.ddp, self.ctx.distributed and not last):
                with self._autocast():
                    pred = self.ddp(x=xt, timesteps=t)
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                # Weight by volumes so the step's gradient is the mean over all its volumes,
                # whatever the size of the last (short) micro-batch.
                self.scaler.scale(loss * (len(indices) / local_volumes)).backward()
            loss_sum += loss.detach().double() * len(indices)
        stop = 1.0 if self.stop_requested() else 0.0
        total_loss, total_volumes, stop_votes = self.ctx.all_sum([loss_sum.item(), float(local_volumes), stop])
        mean_loss = total_loss / total_volumes
        if not math.isfinite(mean_loss):
            self._diverged(f"the training loss became {mean_loss} at epoch {c.epoch + 1}, step {c.global_step + 1}")
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm) and self.precision != "fp16":
            # fp16's scaler skips such steps by design; elsewhere it means divergence.
            self._diverged(f"the gradient norm became {grad_norm} at epoch {c.epoch + 1}, step {c.global_step + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self._stop_votes = stop_votes
        return mean_loss, total_volumes, grad_norm

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
        if len(self.val_set) == 0:
            return None
        model.eval()
        big_t = self.spec.schedule.num_train_timesteps
        k = self.config.val_timesteps
        # Golden-ratio offsets: volume v's k timesteps are stratified and shifted by a fixed
        # amount, so the set covers 0..T-1 evenly yet never changes between epochs.
        golden = (math.sqrt(5) - 1) / 2

        def timestep(v: int, i: int) -> int:
            return min(big_t - 1, int((i + (v * golden) % 1.0) * big_t / k))

        pairs = [(v, i) for v in range(len(self.val_set)) for i in range(k)]
        mine = pairs[self.ctx.rank :: self.ctx.world_size]
        total = 0.0
        for start in range(0, len(mine), self.config.batch_size):
            chunk = mine[start : start + self.config.batch_size]
            x0 = torch.stack([self.val_set[v] for v, _ in chunk]).to(self.device)
            # CPU generators: the same noise on every device and in every epoch.
            seeds = [_mix(self.config.seed, "val", v, i) for v, i in chunk]
            eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
            eps = eps.to(self.device)
            t = torch.tensor([timestep(v, i) for v, i in chunk], device=self.device)
            xt, target = self._noised_and_target(x0, eps, t)
            with self._autocast():
                pred = model(x=xt, timesteps=t)
            per_volume = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
            total += float(per_volume.double().sum())
        summed, count = self.ctx.all_sum([total, float(len(mine))])
        return summed / count

    def _sample_png(self, epoch: int) -> Path | None:
        from engine.generation import GenerationRequest, generate
        from engine.samplers import SamplerSettings

        cfg = self.config
        model = self.ema.module if self.ema else self.model
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
            weights="ema" if self.ema else "raw",
        )
        events = generate(model, request)
        for event in events:
            volumes.extend(v.array for v in event.finished)
        standard = [self.spec.intensity.model_to_standard(v) for v in volumes]
        which = "EMA" if self.ema else "raw"
        return plot_sample_slices(
            standard,
            self.run_dir / "samples" / f"epoch_{epoch:04d}.png",
            title=f"epoch {epoch}, {which} weights, {cfg.sample_sampler} {steps} steps, seeds 0-{cfg.sample_count - 1}",
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, ctx, c = self.config, self.ctx, self.counters
        self._prepare_run_dir()
        self._prepare_data()
        self._build_model()
        self.effective_batch_size = cfg.batch_size * cfg.grad_accum * ctx.world_size
        if self.resume:
            self._load_state()
        n_steps = steps_per_epoch(
            len(self.train_set), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world_size=ctx.world_size
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
            steps_log.truncate(key="global_step", keep_through=c.global_step)
            epochs_log.truncate(key="epoch", keep_through=c.epoch)
        self._last_state_save = time.monotonic()
        self._stop_votes = 0.0
        invocation_start = time.perf_counter()
        stopped = False
        last_ckpt = best_ckpt = None
        try:
            while c.epoch < cfg.epochs and not stopped:
                order = epoch_order(len(self.train_set), seed=cfg.seed, epoch=c.epoch)
                mine = shard_indices(order, rank=ctx.rank, world_size=ctx.world_size)
                batches = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
                groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                epoch_start = time.perf_counter()
                while c.step_in_epoch < len(groups):
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    loss, volumes, grad_norm = self._optimizer_step(groups[c.step_in_epoch])
                    dt = time.perf_counter() - t0
                    c.cpu_s += time.process_time() - cpu0
                    c.step_in_epoch += 1
                    c.global_step += 1
                    c.epoch_loss_sum += loss * volumes
                    c.epoch_volumes += volumes
                    c.epoch_train_s += dt
                    c.elapsed_s += dt
                    if steps_log is not None:
                        steps_log.write(
                            {
                                "epoch": c.epoch + 1,
                                "step_in_epoch": c.step_in_epoch,
                                "global_step": c.global_step,
                                "loss": loss,
                                "lr": self.optimizer.param_groups[0]["lr"],
                                "grad_norm": grad_norm,
                                "elapsed_s": c.elapsed_s,
                                "cpu_s": c.cpu_s,
                            }
                        )
                        tb.scalars(c.global_step, {"loss/train_step": loss, "grad_norm": grad_norm})
                    if self._stop_votes > 0:
                        stopped = True
                        break
                    if c.step_in_epoch < len(groups) and self._state_due():
                        self._save_state(order)
                if stopped:
                    self._save_state(order)
                    self.emit("info", f"stopped on request at step {c.global_step}; --resume {self.run_dir} continues")
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
            best_text = f"{c.best_metric:.6g}" if math.isfinite(c.best_metric) else "n/a"
            self.emit(
                "info",
                f"done: {c.epoch} epochs, {c.global_step} optimizer steps, best {best_text}; "
                f"checkpoints in {ckpt_dir} (last.safetensors, best.safetensors)",
            )
        best = ckpt_dir / "best.safetensors"
        return TrainResult(
            run_dir=self.run_dir,
            epochs_done=c.epoch,
            global_step=c.global_step,
            best_metric=c.best_metric if math.isfinite(c.best_metric) else None,
            last_checkpoint=last if (last_ckpt or last.exists()) else None,
            best_checkpoint=best if (best_ckpt or best.exists()) else None,
            effective_batch_size=self.effective_batch_size,
            stopped_early=stopped,
            train_seconds=time.perf_counter() - invocation_start,
        )

    def _state_due(self) -> bool:
        cfg = self.config
        if cfg.resume_every_steps and self.counters.global_step % cfg.resume_every_steps == 0:
            return True
        minutes = cfg.resume_every_minutes
        return bool(minutes) and time.monotonic() - self._last_state_save >= minutes * 60

    def _end_epoch(self, epoch_start: float, tb: TensorBoardLog, epochs_log: CsvLog | None, order: list[int]):
        cfg, ctx, c = self.config, self.ctx, self.counters
        train_loss = c.epoch_loss_sum / max(c.epoch_volumes, 1.0)
        volumes_per_s = c.epoch_volumes / c.epoch_train_s if c.epoch_train_s > 0 else 0.0
        val_loss = self._validate(self.model)
        val_ema = self._validate(self.ema.module) if self.ema is not None else None
        metric = val_ema if val_ema is not None else (val_loss if val_loss is not None else train_loss)
        is_best = metric < c.best_metric
        epoch = c.epoch + 1
        last = best = None
        if ctx.is_main:
            extra = {"train_loss": train_loss, "val_loss": val_loss, "val_loss_ema": val_ema}
            last = self._save_checkpoint("last", **extra)
            if is_best:
                best_by = "val_loss_ema" if val_ema is not None else "val_loss"
                best_by = best_by if val_loss is not None else "train_loss"
                best = self._save_checkpoint("best", **extra, best_by=best_by)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                self._save_checkpoint(f"epoch_{epoch:04d}", **extra)
        if is_best:
            c.best_metric = metric
        epoch_s = time.perf_counter() - epoch_start
        remaining = cfg.epochs - epoch
        summary = EpochSummary(
            epoch=epoch,
            epochs=cfg.epochs,
            global_step=c.global_step,
            train_loss=train_loss,
            val_loss=val_loss,
            val_loss_ema=val_ema,
            epoch_s=epoch_s,
            volumes_per_s=volumes_per_s,
            is_best=is_best,
            eta_s=remaining * epoch_s,
        )
        if ctx.is_main and epochs_log is not None:
            epochs_log.write(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_loss_ema": val_ema,
                    "epoch_s": epoch_s,
                    "volumes_per_s": volumes_per_s,
                    "global_step": c.global_step,
                    "best": is_best,
                }
            )
            tb.scalars(epoch, {"loss/train": train_loss, "loss/val": val_loss, "loss/val_ema": val_ema})
            title = f"{self.run_dir.name}: MSE per epoch"
            plot_loss_curve(
                epochs_log.path,
                self.run_dir / "loss_curve.png",
                title=title,
                prediction_type=self.spec.schedule.prediction_type,
            )
        if ctx.is_main and cfg.sample_every and epoch % cfg.sample_every == 0:
            png = self._sample_png(epoch)
            self.emit("info", f"samples → {png}")
        self.emit("epoch", "", summary)
        c.epoch += 1
        c.step_in_epoch = 0
        c.epoch_loss_sum = c.epoch_volumes = c.epoch_train_s = 0.0
        self._save_state(order)
        ctx.barrier()
        return last, best
