"""Training the autoencoder of a latent-diffusion model (``brainsynth-cli train-autoencoder``).

MONAI's ``AutoencoderKL`` with the losses of MONAI's 3-D latent-diffusion tutorial: L1
reconstruction, the KL term (weight 1e-6), optionally a perceptual term, and after a warm-up a
patch adversarial term (MONAI's ``PatchDiscriminator``, least-squares GAN loss, weight 0.01).

* **One code path for 1 CPU, 1 GPU, N GPUs and N nodes**, the diffusion trainer's
  (:mod:`engine.training.distributed`): ranks come from torchrun / SLURM, each epoch's order
  is fixed by the seed and dealt out by rank, and DDP averages the gradients of both networks
  (the autoencoder and the discriminator, each wrapped with its own optimizer). Only rank 0
  writes (config, split, logs, PNGs, checkpoints, the resume state). The effective batch size
  is ``batch_size`` x processes.
* **The same step in 1 and N processes.** The reparameterisation noise is drawn per volume from
  ``(seed, global step, training-set index)``, not from the global RNG, and the discriminator
  normalises each volume by itself (instance norm with affine parameters: MONAI's default
  batch norm would see each rank's batch only, so N processes would train another
  discriminator than one). At one volume per call (the default batch size) this is what
  batch norm computes in training mode. The warm-up is counted in epochs, so the adversarial
  terms start after the same number of volumes whatever the number of processes.
* **Data** as ``train`` prepares it (the trainer's own preparation: the same cache, failures
  file, ranks sharing the preparation, and the subject-level split stratified by group), on
  the grid of the chosen latent preset (``ldm-demo``: 88 x 104 x 88).
* **Precision** as the trainer chooses it (:mod:`engine.training.precision`): ``auto`` is bf16
  on a GPU with bf16, and on a CPU with bf16 units when one timed autoencoder step says it is
  faster; rank 0 decides for all ranks, and a resumed run keeps its precision.
* **Perceptual loss** needs network weights that MONAI downloads (LPIPS or torchvision); this
  machine may be offline, so it is off by default (``perceptual_weight = 0``) and asking for it
  where the weights cannot be had is one clear error.
* **Resume**: ``resume/state.pt`` (:class:`engine.training.resume.ResumeState`: the autoencoder,
  its optimizer, the EMA, the scaler, the counters and RNG states, and as ``extra`` the
  discriminator, its optimizer and the epoch's loss sums; read back with ``weights_only=True``)
  after every epoch, every ``resume_every_minutes`` (10) or ``resume_every_steps``, and when a
  stop is requested (SLURM's signal before a time limit), so
  ``resume=True`` continues where the run stopped; mid-epoch only with as many processes.
* **EMA** of the autoencoder's weights (decay 0.999 with the trainer's warm-up), saved beside
  the raw weights; the EMA is what ``train --autoencoder`` uses.
* **Logs**: ``logs/epochs.csv`` (losses as means per volume, validation L1, PSNR, SSIM, MS-SSIM
  on the validation scans in [0, 1]), ``samples/epoch_NNNN.png`` (validation inputs beside
  their reconstructions), ``autoencoder.safetensors`` (best validation L1) and
  ``autoencoder_last.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.training.config import RunConfig, _finite, _non_negative_int
from engine.training.distributed import DistContext, set_threads, setup, shard_indices
from engine.training.errors import TrainingError
from engine.training.resume import RESUME_FILE, ResumeState, TrainingProgress, cpu_state, set_rng_state, state_due
from engine.training.trainer import derive_seed, epoch_order, prepare_training_data

if TYPE_CHECKING:
    from engine.precision import PrecisionChoice
    from engine.specs import ModelSpec
    from engine.training.data import VolumeDataset
    from engine.training.logging import CsvLog

STATE_FILE = RESUME_FILE
CONFIG_FILE = "config.json"
BEST_FILE = "autoencoder.safetensors"
LAST_FILE = "autoencoder_last.safetensors"
EPOCH_COLUMNS = ("epoch", "l1", "kl", "generator_adv", "discriminator", "val_l1", "psnr", "ssim", "ms_ssim", "seconds")
_SUMS = ("l1", "kl", "g", "d")


@dataclass
class AutoencoderTrainConfig(RunConfig):
    """Options of one autoencoder run: the shared options of :class:`RunConfig` (data, split,
    seed, EMA, precision, device, threads; here per process, as in ``train``) and the losses.

    Attributes:
        preset: latent preset whose autoencoder and grid are trained (``ldm-demo``, ``ldm-tiny``,
            ``ldm-1mm``).
        batch_size: volumes per step on each process.
        lr: Adam learning rate of the autoencoder (the discriminator's is the same).
        sample_every: PNG of reconstructions every N epochs (0 = never).
        kl_weight: weight of the KL term.
        perceptual_weight: weight of the perceptual term (0 = off; needs downloadable weights).
        adversarial_weight: weight of the generator's adversarial term (and of the
            discriminator's loss; 0 = no adversarial training).
        adversarial_warmup_epochs: epochs before the adversarial terms start.
    """

    preset: str = "ldm-demo"
    batch_size: int = 1
    lr: float = 1e-4
    sample_every: int = 5
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    adversarial_weight: float = 0.01
    adversarial_warmup_epochs: int = 5

    def validate(self) -> None:
        """Check every value; raise one :class:`TrainingError` naming the bad key."""
        from engine.specs import PRESETS

        if self.preset not in PRESETS or PRESETS[self.preset].latent is None:
            latent = ", ".join(n for n, s in PRESETS.items() if s.latent is not None)
            raise TrainingError(f"train-autoencoder needs a latent preset ({latent}), not {self.preset!r}")
        self.validate_run()
        _non_negative_int(self.adversarial_warmup_epochs, "adversarial-warmup-epochs")
        for name in ("kl_weight", "perceptual_weight", "adversarial_weight"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise TrainingError(f"{name.replace('_', '-')} must be a non-negative number (got {value!r})")


def saved_config(run_dir: str | Path, **changes) -> AutoencoderTrainConfig:
    """The config a run in ``run_dir`` was started with (for ``--resume``), with ``changes``."""
    path = Path(run_dir).expanduser() / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(AutoencoderTrainConfig)}
        return AutoencoderTrainConfig(**{**{k: v for k, v in values.items() if k in known}, **changes})
    except (OSError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise TrainingError(f"{path} cannot be read as an autoencoder run's config ({exc})") from None


@dataclass
class AutoencoderEpoch:
    """One epoch's numbers (losses are means per volume over all ranks; metrics over the validation scans)."""

    epoch: int
    l1: float
    kl: float
    generator_adv: float | None
    discriminator: float | None
    val_l1: float | None
    psnr: float | None
    ssim: float | None
    ms_ssim: float | None
    seconds: float


def perceptual_loss(device: torch.device):
    """MONAI's 3-D perceptual loss, or a TrainingError when its weights cannot be had offline."""
    try:
        from monai.losses import PerceptualLoss

        return PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=0.2).to(device)
    except Exception as exc:  # ImportError (lpips), URLError / OSError (no network), RuntimeError
        raise TrainingError(
            "the perceptual loss needs the LPIPS network's weights, which MONAI downloads and which are not "
            f"available here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "train with --perceptual-weight 0 (the default); or install lpips and torchvision and, offline, copy "
            "the torch hub cache (TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints) with "
            "torchvision's SqueezeNet 1.1 weights from a machine where MONAI's PerceptualLoss has loaded once"
        ) from None


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)) summed over the latent, averaged over the batch (MONAI's tutorial)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def reconstruction_metrics(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float | None]:
    """PSNR (dB), SSIM and MS-SSIM of a reconstruction ``y`` of ``x`` (both mapped to [0, 1]).

    SSIM and MS-SSIM are the project's own (:mod:`engine.metrics.msssim`, checked against MONAI
    and scikit-image); MS-SSIM is None on grids too small for two scales.
    """
    from engine.metrics.errors import EvaluationError
    from engine.metrics.msssim import choose_settings, ms_ssim, ssim_and_cs

    mse = float(np.mean((x - y) ** 2))
    psnr = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
    try:
        settings = choose_settings(x.shape)
    except EvaluationError:
        settings = None
    if settings is None:
        return psnr, math.nan, None
    ssim, _ = ssim_and_cs(x, y, settings)
    return psnr, float(ssim), float(ms_ssim(x, y, settings).value)


def build_discriminator(spec: ModelSpec) -> torch.nn.Module:
    """MONAI's patch discriminator for the preset's grid, normalising each volume by itself.

    MONAI's tutorial uses 3 layers; each halves the grid and the last needs 4 voxels, so small
    grids get fewer (a 16-voxel axis one). Instance norm with affine parameters instead of the
    tutorial's batch norm: the same computation at one volume per call, and per volume, so a
    step does not depend on how its volumes are dealt out to processes.
    """
    from monai.networks.nets import PatchDiscriminator

    layers = max(1, min(3, int(math.log2(min(spec.grid.shape))) - 3))
    return PatchDiscriminator(
        spatial_dims=3,
        num_layers_d=layers,
        channels=32,
        in_channels=1,
        out_channels=1,
        norm=("INSTANCE", {"affine": True}),
    )


class ReconstructionStep(torch.nn.Module):
    """The autoencoder's training forward pass, with the reparameterisation noise drawn per volume.

    ``AutoencoderKL.forward`` samples ``z = mu + sigma * eps`` with the global RNG, so a volume's
    noise would depend on the process and on what ran before. Here volume i's ``eps`` comes
    from a generator seeded with ``seeds[i]``; DDP wraps this module so that the gradients of
    the whole autoencoder are averaged.
    """

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, z_mu, z_sigma)`` of ``x`` ``(B, 1, D, H, W)`` in the autoencoder's data range."""
        z_mu, z_sigma = self.autoencoder.encode(x)
        eps = torch.stack(
            [
                torch.randn(
                    z_sigma.shape[1:], generator=torch.Generator(device=x.device).manual_seed(s), device=x.device
                )
                for s in seeds
            ]
        )
        return self.autoencoder.decode(z_mu + eps.to(z_sigma.dtype) * z_sigma), z_mu, z_sigma


@dataclass
class AutoencoderNetworks:
    """What an autoencoder run updates, on the training device.

    Attributes:
        model: the autoencoder (``AutoencoderKL``).
        step: the training forward pass (:class:`ReconstructionStep`), DDP-wrapped when distributed.
        ema: the exponential moving average of ``model``, or None.
        disc: the patch discriminator.
        disc_ddp: the module its own loss runs through (DDP-wrapped when distributed); the
            generator's adversarial term runs through ``disc`` with its weights frozen.
        opt_g: Adam over the autoencoder.
        opt_d: Adam over the discriminator.
        scaler: the fp16 gradient scaler of both (disabled in other precisions).
    """

    model: torch.nn.Module
    step: torch.nn.Module
    ema: Any
    disc: torch.nn.Module
    disc_ddp: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def build_autoencoder_networks(
    config: AutoencoderTrainConfig, ctx: DistContext, spec: ModelSpec, *, precision: str
) -> AutoencoderNetworks:
    """Both networks, seeded alike on every rank, the EMA, the DDP wrappers and the optimizers."""
    from engine.training.networks import EMA

    device = ctx.device
    torch.manual_seed(derive_seed(config.seed, "autoencoder-init"))
    model = spec.latent.autoencoder.build().to(device)
    disc = build_discriminator(spec).to(device)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    step: torch.nn.Module = ReconstructionStep(model)
    disc_ddp: torch.nn.Module = disc
    if ctx.distributed:
        kwargs: dict[str, Any] = {"device_ids": [device.index]} if device.type == "cuda" else {}
        step = torch.nn.parallel.DistributedDataParallel(step, **kwargs)
        disc_ddp = torch.nn.parallel.DistributedDataParallel(disc, **kwargs)
    return AutoencoderNetworks(
        model=model,
        step=step,
        ema=ema,
        disc=disc,
        disc_ddp=disc_ddp,
        opt_g=torch.optim.Adam(model.parameters(), lr=config.lr),
        opt_d=torch.optim.Adam(disc.parameters(), lr=config.lr),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
    )


def train_autoencoder(
    config: AutoencoderTrainConfig,
    *,
    resume: bool = False,
    callback: Callable[[str], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> Path:
    """Train (or with ``resume`` continue) the run; returns the best autoencoder checkpoint.

    Works the same in one process and under torchrun / srun (see
    :mod:`engine.training.distributed`).

    Args:
        config: the run's options (for a resume, :func:`saved_config`).
        resume: continue the run in ``config.out`` from its resume state.
        callback: receives one line per event on rank 0 (never called on other ranks).
        stop_requested: polled once per step on every rank; when it returns True on any rank
            the run saves its resume state and returns (SLURM's signal before a time limit).

    Raises:
        TrainingError: bad options, unusable data, a diverging loss, an unavailable perceptual loss.
    """
    config.validate()
    ctx = setup(config.device)
    try:
        trainer = _AutoencoderTrainer.create(
            config, ctx, resume=resume, callback=callback, stop_requested=stop_requested
        )
        return trainer.run()
    finally:
        ctx.shutdown()


def choose_autoencoder_precision(
    config: AutoencoderTrainConfig, ctx: DistContext, spec: ModelSpec, *, state: ResumeState | None
) -> PrecisionChoice:
    """The run's precision: the saved one for a resume, else rank 0's choice for every rank
    (``auto`` times one autoencoder step on a CPU with bf16 units)."""
    from engine.precision import bf16_support, choose_precision, model_cache_key
    from engine.training.precision import check_training_precision, choose_training_precision, resumed_precision

    if state is not None:
        return resumed_precision(
            state.precision, state.precision_reason, configured=config.precision, device=ctx.device
        )
    choice = None
    if ctx.is_main:
        device = ctx.device
        if config.precision == "auto" and device.type == "cpu" and bf16_support(device) is not None:
            step, model = _timed_step(spec, device=device, batch_size=config.batch_size)
            key = f"train-autoencoder|{model_cache_key(model, (config.batch_size, 1, *spec.grid.shape))}"
            try:
                choice = choose_precision("auto", device=device, step=step, cache_key=key)
            except Exception as exc:  # SamplingError from the shared chooser: one training error line
                raise TrainingError(str(exc)) from None
        else:
            choice = choose_training_precision(
                config.precision, device=device, spec=spec, batch_size=config.batch_size, time_step=False
            )
    choice = ctx.broadcast_object(choice)
    check_training_precision(choice.precision, ctx.device)
    return choice


def _timed_step(spec: ModelSpec, *, device: torch.device, batch_size: int):
    """One forward and backward pass of a throwaway autoencoder (the global RNG forked around it)."""
    from engine.precision import autocast

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.latent.autoencoder.build().to(device).train()
        x = torch.randn((batch_size, 1, *spec.grid.shape), device=device)

        def step(precision: str) -> None:
            with autocast(device, precision):
                recon, _, _ = model(x)
            torch.nn.functional.l1_loss(recon.float(), x).backward()
            model.zero_grad(set_to_none=True)

    return step, model


class _AutoencoderTrainer:
    """One autoencoder run: set up by :meth:`create`, driven by :meth:`run`.

    What changes while it runs: the networks' state, :attr:`progress` and :attr:`sums` (the
    epoch's per-volume loss sums over all ranks).
    """

    def __init__(
        self,
        *,
        config: AutoencoderTrainConfig,
        ctx: DistContext,
        spec: ModelSpec,
        precision: PrecisionChoice,
        train_set: VolumeDataset,
        val_set: VolumeDataset,
        nets: AutoencoderNetworks,
        perceptual: torch.nn.Module | None,
        progress: TrainingProgress,
        sums: dict[str, float],
        say: Callable[[str], None],
        stop_requested: Callable[[], bool],
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.spec = spec
        self.precision = precision
        self.train_set = train_set
        self.val_set = val_set
        self.nets = nets
        self.perceptual = perceptual
        self.progress = progress
        self.sums = sums
        self.say = say
        self.stop_requested = stop_requested
        self.run_dir = config.run_dir
        self.device = ctx.device
        self.last_state_save = time.monotonic()  # when the resume state was last written (monotonic s)
        lo, hi = spec.latent.autoencoder.data_range
        self.lo, self.hi = lo, hi

    @classmethod
    def create(
        cls,
        config: AutoencoderTrainConfig,
        ctx: DistContext,
        *,
        resume: bool,
        callback: Callable[[str], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> _AutoencoderTrainer:
        """Check and create the run directory, prepare the data, build the networks and, for
        ``resume``, restore the saved state (every rank, together).

        Args:
            config: the run's options.
            ctx: this process's place in the job.
            resume: continue the run in ``config.out``.
            callback: receives progress lines (rank 0 only).
            stop_requested: polled once per step; see :func:`train_autoencoder`.
        """
        from engine.atomic import atomic_write_text, remove_orphaned_temporaries
        from engine.specs import get_preset
        from engine.training.precision import check_training_precision

        say = (callback or (lambda _line: None)) if ctx.is_main else (lambda _line: None)

        def emit(kind: str, message: str, summary: Any = None) -> None:
            say(message if kind == "info" else f"{kind}: {message}")

        spec = get_preset(config.preset)
        run_dir = config.run_dir
        check_training_precision(config.precision, ctx.device)  # before minutes of data preparation
        if resume and not (run_dir / STATE_FILE).exists():
            raise TrainingError(f"{run_dir} has no {STATE_FILE} to resume from")
        if not resume and run_dir.exists() and any(run_dir.iterdir()):
            raise TrainingError(f"{run_dir} is not empty; give a new --out, or --resume {run_dir}")
        perceptual = perceptual_loss(ctx.device) if config.perceptual_weight > 0 else None
        threads = set_threads(config.cpu_threads, ctx)
        if ctx.device.type == "cpu":
            emit("info", f"using {threads}")
        # Every rank has looked before rank 0 writes, or a slow rank would find rank 0's
        # fresh config and take it for an earlier run.
        ctx.barrier()
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temporaries(run_dir, recursive=True)
            if not resume:
                atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2))
        ctx.barrier()
        data = prepare_training_data(config, ctx, spec, resume=resume, emit=emit)
        state = ResumeState.read(run_dir / STATE_FILE) if resume else None
        precision = choose_autoencoder_precision(config, ctx, spec, state=state)
        emit("info", f"precision: {precision.reason}")
        nets = build_autoencoder_networks(config, ctx, spec, precision=precision.precision)
        progress, sums = TrainingProgress(), dict.fromkeys(_SUMS, 0.0)
        if state is not None:
            progress, sums = _restore(nets, state, config=config, ctx=ctx, n_train=len(data.train_set), say=say)
        return cls(
            config=config,
            ctx=ctx,
            spec=spec,
            precision=precision,
            train_set=data.train_set,
            val_set=data.val_set,
            nets=nets,
            perceptual=perceptual,
            progress=progress,
            sums=sums,
            say=say,
            stop_requested=stop_requested or (lambda: False),
        )

    # ------------------------------------------------------------------ one step
    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Model space ([-1, 1]) to the autoencoder's data range."""
        return (x + 1.0) * ((self.hi - self.lo) / 2.0) + self.lo

    def epoch_batches(self, epoch: int) -> tuple[list[int], list[list[int]]]:
        """The epoch's global order (as the diffusion trainer's) and this rank's batches in it."""
        order = epoch_order(len(self.train_set), seed=self.config.seed, epoch=epoch)
        mine = shard_indices(order, rank=self.ctx.rank, world_size=self.ctx.world_size)
        size = self.config.batch_size
        return order, [mine[i : i + size] for i in range(0, len(mine), size)]

    def _autocast(self):
        from engine.training.precision import training_autocast

        return training_autocast(self.device, self.precision.precision)

    def optimizer_step(self, indices: list[int], *, adversarial: bool) -> tuple[dict[str, float], float, bool]:
        """One step of both networks on a batch (training-set indices); every rank together.

        Returns:
            ``(sums, volumes, stop)``: the step's per-volume loss sums over all ranks
            (``l1``, ``kl``, ``g``, ``d``), its volumes over all ranks, and whether a rank was
            asked to stop.
        """
        cfg, nets = self.config, self.nets
        step = self.progress.global_step
        x = self.to_data(torch.stack([self.train_set[i] for i in indices]).to(self.device))
        seeds = [derive_seed(cfg.seed, "autoencoder-noise", step, i) for i in indices]
        nets.step.train()
        nets.disc.train()
        with self._autocast():
            recon, z_mu, z_sigma = nets.step(x, seeds)
        l1 = torch.nn.functional.l1_loss(recon.float(), x)
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = l1 + cfg.kl_weight * kl
        if self.perceptual is not None:
            loss = loss + cfg.perceptual_weight * self.perceptual(recon.float(), x)
        adv = _adversarial_loss()
        g_adv = d_loss = torch.zeros((), device=self.device)
        if adversarial:
            # The generator's term must not train the discriminator: its weights are frozen for
            # it (no gradient, so DDP's hooks on them do not fire outside their own pass).
            nets.disc.requires_grad_(False)
            with self._autocast():
                fake_logits = nets.disc(recon.contiguous())[-1]
            nets.disc.requires_grad_(True)
            g_adv = adv(fake_logits.float(), target_is_real=True, for_discriminator=False)
            loss = loss + cfg.adversarial_weight * g_adv
        nets.opt_g.zero_grad(set_to_none=True)
        nets.scaler.scale(loss).backward()
        if adversarial:
            n = len(indices)
            # Fakes and reals in one pass through the DDP wrapper: one reduction of its gradients.
            with self._autocast():
                logits = nets.disc_ddp(torch.cat([recon.detach(), x]).contiguous())[-1].float()
            fake = adv(logits[:n], target_is_real=False, for_discriminator=True)
            real = adv(logits[n:], target_is_real=True, for_discriminator=True)
            d_loss = cfg.adversarial_weight * 0.5 * (fake + real)
            nets.opt_d.zero_grad(set_to_none=True)
            nets.scaler.scale(d_loss).backward()
        n = float(len(indices))
        stop = 1.0 if self.stop_requested() else 0.0
        parts = [float(t.detach()) * n for t in (l1, kl, g_adv, d_loss)]
        *summed, volumes, votes = self.ctx.all_sum([*parts, n, stop])
        total = float(sum(summed))
        if not math.isfinite(total):  # every rank sees the same sums, so all stop together
            where = f"at epoch {self.progress.epoch + 1}, step {step + 1}"
            raise TrainingError(f"the autoencoder loss became {total / volumes} {where}; try a lower --lr")
        nets.scaler.step(nets.opt_g)
        if adversarial:
            nets.scaler.step(nets.opt_d)
        nets.scaler.update()
        if nets.ema is not None:
            nets.ema.update(nets.model)
        return dict(zip(_SUMS, summed, strict=True)), volumes, votes > 0

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to ``config.epochs`` (or until a stop is requested); returns the best checkpoint's path."""
        from engine.training.logging import CsvLog

        cfg, ctx, p = self.config, self.ctx, self.progress
        n_batches = len(self.epoch_batches(0)[1])
        self.say(
            f"{self.spec.name} autoencoder on {ctx.describe()}, {self.precision.precision}; effective batch size "
            f"{cfg.batch_size * ctx.world_size} = {cfg.batch_size} per process x {ctx.world_size} process(es); "
            f"{n_batches} steps per epoch"
        )
        log = None
        if ctx.is_main:
            log = CsvLog(self.run_dir / "logs" / "epochs.csv", EPOCH_COLUMNS)
            log.truncate(key="epoch", keep_through=p.epoch)  # rows after the saved state are redone
        try:
            while p.epoch < cfg.epochs:
                order, batches = self.epoch_batches(p.epoch)
                adversarial = p.epoch >= cfg.adversarial_warmup_epochs and cfg.adversarial_weight > 0
                started = time.perf_counter()
                while p.step_in_epoch < len(batches):
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    sums, volumes, stop = self.optimizer_step(batches[p.step_in_epoch], adversarial=adversarial)
                    for key, value in sums.items():
                        self.sums[key] += value
                    p.record_step(
                        loss=sums["l1"] / volumes,
                        volumes=volumes,
                        seconds=time.perf_counter() - t0,
                        cpu_seconds=time.process_time() - cpu0,
                    )
                    if stop:
                        self._save_state(order)
                        self.say(f"stopped on request at step {p.global_step}; --resume {self.run_dir} continues")
                        return self.run_dir / BEST_FILE
                    if p.step_in_epoch < len(batches) and self._state_due():
                        self._save_state(order)
                self._end_epoch(order, log, adversarial=adversarial, seconds=time.perf_counter() - started)
        finally:
            if log is not None:
                log.close()
        return self.run_dir / BEST_FILE

    def _end_epoch(self, order: list[int], log: CsvLog | None, *, adversarial: bool, seconds: float) -> None:
        from engine.autoencoder_checkpoint import save_autoencoder
        from engine.training.logging import plot_sample_slices

        cfg, ctx, p, spec = self.config, self.ctx, self.progress, self.spec
        nets = self.nets
        volumes = max(p.epoch_volumes, 1.0)
        evaluated = nets.ema.module if nets.ema is not None else nets.model
        val_l1, metrics, pairs = self._validate(evaluated)
        epoch = p.epoch + 1
        summary = AutoencoderEpoch(
            epoch=epoch,
            l1=self.sums["l1"] / volumes,
            kl=self.sums["kl"] / volumes,
            generator_adv=self.sums["g"] / volumes if adversarial else None,
            discriminator=self.sums["d"] / volumes if adversarial else None,
            val_l1=val_l1,
            psnr=metrics[0],
            ssim=metrics[1],
            ms_ssim=metrics[2],
            seconds=seconds,
        )
        score = val_l1 if val_l1 is not None else summary.l1
        best_path = self.run_dir / BEST_FILE
        is_best = score < p.best_metric
        if ctx.is_main:
            provenance = {
                "source": "brainsynth-cli train-autoencoder",
                "training": {
                    "epoch": epoch,
                    "global_step": p.global_step,
                    "config": cfg.to_dict(),
                    "train_scans": len(self.train_set),
                    "world_size": ctx.world_size,
                    "effective_batch_size": cfg.batch_size * ctx.world_size,
                    "precision": self.precision.precision,
                    "precision_reason": self.precision.reason,
                },
                "reconstruction": {k: getattr(summary, k) for k in ("val_l1", "psnr", "ssim", "ms_ssim")},
            }
            weights = {
                "spec": spec.latent.autoencoder,
                "grid": spec.grid,
                "intensity": spec.intensity,
                "weights": nets.model.state_dict(),
                "ema_weights": nets.ema.module.state_dict() if nets.ema is not None else None,
                "provenance": provenance,
                "overwrite": True,
            }
            save_autoencoder(self.run_dir / LAST_FILE, **weights)
            if is_best or not best_path.exists():
                save_autoencoder(best_path, **weights)
            due = cfg.sample_every and (epoch % cfg.sample_every == 0 or epoch == cfg.epochs)
            if due and pairs:
                plot_sample_slices(
                    [spec.intensity.model_to_standard(v) for pair in pairs for v in pair],
                    self.run_dir / "samples" / f"epoch_{epoch:04d}.png",
                    title=f"epoch {epoch}: validation inputs, each above its reconstruction",
                )
            log.write({k: _cell(getattr(summary, k)) for k in EPOCH_COLUMNS})
        if is_best:
            p.best_metric = score
        p.next_epoch()
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self._save_state(order)
        self.say(_epoch_line(summary))
        ctx.barrier()

    # ------------------------------------------------------------------ validation
    def _validate(self, model: torch.nn.Module) -> tuple:
        """Validation L1 (the autoencoder's data range) and mean (PSNR, SSIM, MS-SSIM) on [0, 1]
        over all validation scans (each rank takes every world_size-th), and up to two
        (input, reconstruction) pairs of rank 0's share in model space for the PNG."""
        n_val = len(self.val_set)
        if n_val == 0:
            return None, (None, None, None), []
        lo, hi = self.lo, self.hi
        model.eval()
        # l1, PSNR, SSIM, SSIM scored, MS-SSIM, MS-SSIM missing, volumes
        totals = [0.0] * 7
        pairs = []
        with torch.inference_mode():
            for i in range(self.ctx.rank, n_val, self.ctx.world_size):
                x = self.to_data(self.val_set[i][None].to(self.device))
                recon = model.reconstruct(x).float()
                unit_x = ((x - lo) / (hi - lo)).clamp(0, 1)[0, 0].double().cpu().numpy()
                unit_r = ((recon - lo) / (hi - lo)).clamp(0, 1)[0, 0].double().cpu().numpy()
                psnr, ssim, ms = reconstruction_metrics(unit_x, unit_r)
                totals[0] += float(torch.nn.functional.l1_loss(recon, x))
                totals[1] += psnr
                if math.isfinite(ssim):
                    totals[2] += ssim
                    totals[3] += 1
                if ms is None:
                    totals[5] += 1
                else:
                    totals[4] += ms
                totals[6] += 1
                if len(pairs) < 2:
                    pairs.append((unit_x * 2 - 1, unit_r * 2 - 1))
        model.train()
        l1, psnr, ssim, ssim_n, ms, ms_missing, count = self.ctx.all_sum(totals)
        means = (psnr / count, ssim / ssim_n if ssim_n else math.nan, None if ms_missing else ms / count)
        return l1 / count, means, pairs

    # ------------------------------------------------------------------ resume state
    def _save_state(self, order: list[int]) -> None:
        if self.ctx.is_main:
            from engine.training.logging import sync_logs

            sync_logs(self.run_dir / "logs")  # the log on disk holds every row this state counts
            nets = self.nets
            ResumeState.capture(
                model=nets.model,
                ema=nets.ema,
                optimizer=nets.opt_g,
                scaler=nets.scaler,
                progress=self.progress,
                world_size=self.ctx.world_size,
                batch_size=self.config.batch_size,
                grad_accum=1,
                seed=self.config.seed,
                data_order=order,
                precision=self.precision.precision,
                precision_reason=self.precision.reason,
                extra={
                    "discriminator": cpu_state(nets.disc),
                    "disc_optimizer": nets.opt_d.state_dict(),
                    "epoch_sums": dict(self.sums),
                },
            ).write(self.run_dir / STATE_FILE)
        self.last_state_save = time.monotonic()

    def _state_due(self) -> bool:
        """Whether a mid-epoch resume state is due (``resume_every_steps`` / ``_minutes``, as ``train``)."""
        return state_due(self.config, global_step=self.progress.global_step, last_save=self.last_state_save)


def _restore(
    nets: AutoencoderNetworks,
    state: ResumeState,
    *,
    config: AutoencoderTrainConfig,
    ctx: DistContext,
    n_train: int,
    say: Callable[[str], None],
) -> tuple[TrainingProgress, dict[str, float]]:
    """Put the saved ``state`` into ``nets`` and the global RNGs; returns the counters and the epoch's sums."""
    path = config.run_dir / STATE_FILE
    progress = state.progress
    order = epoch_order(n_train, seed=config.seed, epoch=progress.epoch)
    state.check_fits(world_size=ctx.world_size, epoch_order=order, source=path)
    try:
        disc, disc_optimizer, sums = (state.extra[k] for k in ("discriminator", "disc_optimizer", "epoch_sums"))
        nets.model.load_state_dict(state.model)
        nets.disc.load_state_dict(disc)
        nets.opt_g.load_state_dict(state.optimizer)
        nets.opt_d.load_state_dict(disc_optimizer)
        sums = {k: float(sums[k]) for k in _SUMS}
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingError(f"{path} is not the resume state of an autoencoder run like this one ({first})") from None
    if nets.ema is not None and state.ema:
        nets.ema.module.load_state_dict(state.ema)
        nets.ema.updates = state.ema_updates
    for optimizer in (nets.opt_g, nets.opt_d):
        for group in optimizer.param_groups:
            group["lr"] = config.lr  # as the diffusion trainer: a resume may change the learning rate
    nets.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng)
    if state.world_size != ctx.world_size:
        say(
            f"warning: resuming with {ctx.world_size} instead of {state.world_size} processes: the effective "
            "batch size changes from here on"
        )
    if progress.step_in_epoch:
        say(
            f"resuming in epoch {progress.epoch + 1} after step {progress.step_in_epoch} of it "
            f"({progress.global_step} in total)"
        )
    else:
        say(f"resuming after epoch {progress.epoch}")
    return progress, sums


def _adversarial_loss():
    from monai.losses import PatchAdversarialLoss

    return PatchAdversarialLoss(criterion="least_squares")


def _cell(value) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _epoch_line(s: AutoencoderEpoch) -> str:
    parts = [f"epoch {s.epoch}", f"l1 {s.l1:.4f}", f"kl {s.kl:.3g}"]
    if s.generator_adv is not None:
        parts.append(f"adv {s.generator_adv:.3f} / disc {s.discriminator:.3f}")
    if s.val_l1 is not None:
        parts.append(f"val l1 {s.val_l1:.4f}, PSNR {s.psnr:.2f} dB, SSIM {s.ssim:.3f}")
        if s.ms_ssim is not None:
            parts.append(f"MS-SSIM {s.ms_ssim:.3f}")
    parts.append(f"{s.seconds:.1f} s")
    return ", ".join(parts)
