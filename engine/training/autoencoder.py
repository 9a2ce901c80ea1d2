"""Training the autoencoder of a latent-diffusion model (``brainsynth-cli train-autoencoder``).

MONAI's ``AutoencoderKL`` with the losses of MONAI's 3-D latent-diffusion tutorial: L1
reconstruction, the KL term (weight 1e-6), optionally a perceptual term, and after a warm-up a
patch adversarial term (MONAI's ``PatchDiscriminator``, least-squares GAN loss, weight 0.01).

* **Data** as ``train`` prepares it (:mod:`engine.training.data`: the same cache, failures file
  and subject-level split), on the grid of the chosen latent preset (``ldm-demo``: 88 x 104 x 88).
* **Perceptual loss** needs network weights that MONAI downloads (LPIPS or torchvision); this
  machine may be offline, so it is off by default (``perceptual_weight = 0``) and asking for it
  where the weights cannot be had is one clear error.
* **Resume**: ``state.pt`` in the run directory after every epoch (both networks, their
  optimizers, the EMA, counters; read back with ``weights_only=True``), so ``resume=True``
  continues after the last finished epoch.
* **EMA** of the autoencoder's weights (decay 0.999 with the trainer's warm-up), saved beside
  the raw weights; the EMA is what ``train --autoencoder`` uses.
* **Logs**: ``logs/epochs.csv`` (losses, validation L1, PSNR, SSIM, MS-SSIM on the validation
  scans in [0, 1]), ``samples/epoch_NNNN.png`` (each validation input beside its reconstruction),
  ``autoencoder.safetensors`` (best validation L1) and ``autoencoder_last.safetensors``.
* **One process**: the diffusion trainer's distributed path (torchrun, DDP) is not used here yet;
  an autoencoder for the demo grid trains on one GPU or a few CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.training.errors import TrainingError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
BEST_FILE = "autoencoder.safetensors"
LAST_FILE = "autoencoder_last.safetensors"
STATE_VERSION = 1
EPOCH_COLUMNS = ("epoch", "l1", "kl", "generator_adv", "discriminator", "val_l1", "psnr", "ssim", "ms_ssim", "seconds")


@dataclass
class AutoencoderTrainConfig:
    """Options of one autoencoder run.

    Attributes:
        preset: latent preset whose autoencoder and grid are trained (``ldm-demo``, ``ldm-tiny``,
            ``ldm-1mm``).
        data: folders or manifests of scans (as ``train``'s).
        out: run directory.
        epochs: epochs in all (a resumed run continues to this).
        batch_size: volumes per step.
        lr: Adam learning rate of the autoencoder (the discriminator's is the same).
        kl_weight: weight of the KL term.
        perceptual_weight: weight of the perceptual term (0 = off; needs downloadable weights).
        adversarial_weight: weight of the generator's adversarial term.
        adversarial_warmup_epochs: epochs before the adversarial terms start.
        ema_decay: EMA decay (0 = off).
        val_fraction: share of subjects held out for validation.
        seed: split, initialisation and order.
        device: ``auto``, ``cpu`` or ``cuda``.
        sample_every: PNG of reconstructions every N epochs (0 = never).
        cache_dir: cache of prepared volumes (default: the user cache).
        max_failed_fraction: share of unusable scans tolerated.
    """

    preset: str = "ldm-demo"
    data: list[str] = field(default_factory=list)
    out: str = ""
    epochs: int = 100
    batch_size: int = 1
    lr: float = 1e-4
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    adversarial_weight: float = 0.01
    adversarial_warmup_epochs: int = 5
    ema_decay: float = 0.999
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    sample_every: int = 5
    cache_dir: str | None = None
    max_failed_fraction: float = 0.1

    def validate(self) -> None:
        from engine.specs import PRESETS

        if self.preset not in PRESETS or PRESETS[self.preset].latent is None:
            latent = ", ".join(n for n, s in PRESETS.items() if s.latent is not None)
            raise TrainingError(f"train-autoencoder needs a latent preset ({latent}), not {self.preset!r}")
        if not self.data:
            raise TrainingError("no training data given; pass --data FOLDER or CSV manifest")
        if not self.out:
            raise TrainingError("no run directory given; pass --out RUN_DIR")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be a whole number of at least 1 (got {value!r})")
        for name in ("adversarial_warmup_epochs", "sample_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainingError(f"{name.replace('_', '-')} must be 0 or more (got {value!r})")
        for name in ("lr", "kl_weight", "perceptual_weight", "adversarial_weight"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (name == "lr" and not value)
            ):
                raise TrainingError(f"{name.replace('_', '-')} must be a non-negative number (got {value!r})")
        if not 0 <= self.ema_decay < 1:
            raise TrainingError(f"ema-decay must be in [0, 1) (got {self.ema_decay!r})")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"val-fraction must be in [0, 1) (got {self.val_fraction!r})")

    @property
    def run_dir(self) -> Path:
        return Path(self.out).expanduser()

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


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
    """One epoch's numbers (losses are means over its steps; metrics over the validation scans)."""

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
            "train with --perceptual-weight 0 (the default), or install lpips where its weights can be downloaded"
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


def train_autoencoder(
    config: AutoencoderTrainConfig,
    *,
    resume: bool = False,
    callback: Callable[[str], None] | None = None,
) -> Path:
    """Train (or with ``resume`` continue) the run; returns the best autoencoder checkpoint.

    Raises:
        TrainingError: bad options, unusable data, a diverging loss, an unavailable perceptual loss.
    """
    from monai.losses import PatchAdversarialLoss
    from monai.networks.nets import PatchDiscriminator

    from engine.atomic import atomic_path, atomic_write_text
    from engine.autoencoder_checkpoint import save_autoencoder
    from engine.device import resolve_device
    from engine.specs import get_preset
    from engine.training import data as data_module
    from engine.training.logging import CsvLog, plot_sample_slices
    from engine.training.networks import EMA

    config.validate()
    say = callback or (lambda _line: None)
    spec = get_preset(config.preset)
    ae_spec = spec.latent.autoencoder
    device = resolve_device(config.device)
    run_dir = config.run_dir
    state_path = run_dir / STATE_FILE
    if resume and not state_path.exists():
        raise TrainingError(f"{run_dir} has no {STATE_FILE} to resume from")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise TrainingError(f"{run_dir} is not empty; give a new --out, or --resume {run_dir}")
    perceptual = perceptual_loss(device) if config.perceptual_weight > 0 else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2))

    items = data_module.discover(config.data)
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else data_module.default_cache_dir()
    cache = data_module.PreparationCache(cache_dir, spec)
    results = [cache.prepare(item) for item in items]
    data_module.write_failures(run_dir / data_module.FAILED_FILE, results)
    usable = data_module.check_failures(results, max_failed_fraction=config.max_failed_fraction)
    split_file = run_dir / data_module.SPLIT_FILE
    if resume and split_file.exists():  # the run's own split, whatever was added to the data since
        split = data_module.read_split(split_file, usable, seed=config.seed)
    else:
        split = data_module.make_split(usable, val_fraction=config.val_fraction, seed=config.seed)
        data_module.write_split(split_file, split)
    train_set = data_module.VolumeDataset(split.train, spec.intensity)
    val_set = data_module.VolumeDataset(split.val, spec.intensity)
    say(f"data: {len(train_set)} training, {len(val_set)} validation scans on the {spec.name} grid")

    torch.manual_seed(config.seed)
    model = ae_spec.build().to(device)
    # MONAI's tutorial uses 3 layers; each halves the grid and the last needs 4 voxels, so small
    # grids get fewer (a 16-voxel axis one).
    layers = max(1, min(3, int(math.log2(min(spec.grid.shape))) - 3))
    disc = PatchDiscriminator(spatial_dims=3, num_layers_d=layers, channels=32, in_channels=1, out_channels=1)
    disc = disc.to(device)
    opt_g = torch.optim.Adam(model.parameters(), lr=config.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    start_epoch, best = 0, math.inf
    if resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise TrainingError(f"{state_path} is not a resume state of this version")
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
            ema.updates = int(state["ema_updates"])
        start_epoch, best = int(state["epoch"]), float(state["best"])
        say(f"resuming after epoch {start_epoch}")
    log = CsvLog(run_dir / "logs" / "epochs.csv", EPOCH_COLUMNS)
    log.truncate(key="epoch", keep_through=start_epoch)
    lo, hi = ae_spec.data_range

    def to_data(x: torch.Tensor) -> torch.Tensor:  # model space -> the autoencoder's data range
        return (x + 1.0) * ((hi - lo) / 2.0) + lo

    best_path = run_dir / BEST_FILE
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
        adv_on = epoch >= config.adversarial_warmup_epochs and config.adversarial_weight > 0
        sums = {"l1": 0.0, "kl": 0.0, "g": 0.0, "d": 0.0}
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        model.train()
        for indices in batches:
            x = to_data(torch.stack([train_set[i] for i in indices]).to(device))
            recon, z_mu, z_sigma = model(x)
            l1 = torch.nn.functional.l1_loss(recon.float(), x)
            kl = kl_loss(z_mu.float(), z_sigma.float())
            loss = l1 + config.kl_weight * kl
            if perceptual is not None:
                loss = loss + config.perceptual_weight * perceptual(recon.float(), x)
            g_adv = torch.zeros(())
            if adv_on:
                g_adv = adversarial(disc(recon.contiguous().float())[-1], target_is_real=True, for_discriminator=False)
                loss = loss + config.adversarial_weight * g_adv
            if not torch.isfinite(loss):
                raise TrainingError(f"the autoencoder loss became {float(loss)} at epoch {epoch + 1}; try a lower --lr")
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            if ema is not None:
                ema.update(model)
            if adv_on:
                fake = adversarial(disc(recon.detach().contiguous())[-1], target_is_real=False, for_discriminator=True)
                real = adversarial(disc(x.contiguous())[-1], target_is_real=True, for_discriminator=True)
                d_loss = config.adversarial_weight * 0.5 * (fake + real)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                sums["d"] += float(d_loss.detach())
            sums["l1"] += float(l1.detach())
            sums["kl"] += float(kl.detach())
            sums["g"] += float(g_adv.detach())
        n = max(1, len(batches))
        evaluated = ema.module if ema is not None else model
        val_l1, metrics, pairs = _validate(evaluated, val_set, to_data, lo=lo, hi=hi, device=device)
        summary = AutoencoderEpoch(
            epoch=epoch + 1,
            l1=sums["l1"] / n,
            kl=sums["kl"] / n,
            generator_adv=sums["g"] / n if adv_on else None,
            discriminator=sums["d"] / n if adv_on else None,
            val_l1=val_l1,
            psnr=metrics[0],
            ssim=metrics[1],
            ms_ssim=metrics[2],
            seconds=time.perf_counter() - started,
        )
        provenance = {
            "source": "brainsynth-cli train-autoencoder",
            "training": {"epoch": epoch + 1, "config": config.to_dict(), "train_scans": len(train_set)},
            "reconstruction": {k: getattr(summary, k) for k in ("val_l1", "psnr", "ssim", "ms_ssim")},
        }
        weights = {
            "spec": ae_spec,
            "grid": spec.grid,
            "intensity": spec.intensity,
            "weights": model.state_dict(),
            "ema_weights": ema.module.state_dict() if ema is not None else None,
            "provenance": provenance,
            "overwrite": True,
        }
        save_autoencoder(run_dir / LAST_FILE, **weights)
        score = val_l1 if val_l1 is not None else summary.l1
        if score < best or not best_path.exists():
            best = score
            save_autoencoder(best_path, **weights)
        if config.sample_every and ((epoch + 1) % config.sample_every == 0 or epoch + 1 == config.epochs) and pairs:
            volumes = [spec.intensity.model_to_standard(v) for pair in pairs for v in pair]
            plot_sample_slices(
                volumes,
                run_dir / "samples" / f"epoch_{epoch + 1:04d}.png",
                title=f"epoch {epoch + 1}: validation inputs, each above its reconstruction",
            )
        log.write({k: _cell(getattr(summary, k)) for k in EPOCH_COLUMNS})
        state = {
            "version": STATE_VERSION,
            "epoch": epoch + 1,
            "best": best,
            "model": model.state_dict(),
            "discriminator": disc.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else {},
            "ema_updates": ema.updates if ema is not None else 0,
        }
        with atomic_path(state_path, overwrite=True) as tmp:
            torch.save(state, tmp)
        say(_epoch_line(summary))
    return best_path


def _validate(model, val_set, to_data, *, lo: float, hi: float, device) -> tuple:
    """Validation L1 (the autoencoder's data range), mean (PSNR, SSIM, MS-SSIM) on [0, 1], and up
    to two (input, reconstruction) pairs in model space for the PNG."""
    if len(val_set) == 0:
        return None, (None, None, None), []
    model.eval()
    l1s, scores, pairs = [], [], []
    with torch.inference_mode():
        for i in range(len(val_set)):
            x = to_data(val_set[i][None].to(device))
            recon = model.reconstruct(x)
            l1s.append(float(torch.nn.functional.l1_loss(recon.float(), x)))
            unit_x = ((x - lo) / (hi - lo)).clamp(0, 1)[0, 0].double().cpu().numpy()
            unit_r = ((recon.float() - lo) / (hi - lo)).clamp(0, 1)[0, 0].double().cpu().numpy()
            scores.append(reconstruction_metrics(unit_x, unit_r))
            if len(pairs) < 2:
                pairs.append((unit_x * 2 - 1, unit_r * 2 - 1))
    model.train()
    means = tuple(
        None if any(s[k] is None for s in scores) else float(np.nanmean([s[k] for s in scores])) for k in range(3)
    )
    return float(np.mean(l1s)), means, pairs


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
