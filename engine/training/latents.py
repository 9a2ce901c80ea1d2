"""Training a latent-diffusion model on a trained autoencoder's latents (``train --autoencoder``).

The prepared volumes are encoded once (the posterior mean, as MONAI's LDM tutorial trains on
``encode_stage_2_inputs``) and cached in the run directory (``latents.safetensors``, keyed by
the autoencoder's SHA-256 and the prepared files), so epochs and resumed runs never run the
encoder again. The scale factor is ``1 / std`` of the training latents (Rombach et al. 2022;
MONAI's tutorial takes the std of one batch, we take all training latents, which does not
depend on the batch size). The UNet then trains on ``latent * scale_factor`` as on volumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from engine.atomic import atomic_path
from engine.autoencoder_checkpoint import AutoencoderCheckpoint
from engine.latent import LatentSpec
from engine.specs import ModelSpec
from engine.training.errors import TrainingError

LATENTS_FILE = "latents.safetensors"
_ENCODE_BATCH = 2


def latent_spec(spec: ModelSpec, autoencoder: AutoencoderCheckpoint) -> ModelSpec:
    """The latent preset ``spec`` on the autoencoder's grid and latent (scale factor still 1).

    Raises:
        TrainingError: the autoencoder's latent does not fit the preset's UNet.
    """
    if spec.latent is None:
        raise TrainingError(f"preset {spec.name!r} is not a latent-diffusion preset")
    ae = autoencoder.spec
    factor = ae.downsampling_factor
    latent = LatentSpec(autoencoder=ae, shape=tuple(n // factor for n in autoencoder.grid.shape), scale_factor=1.0)
    unet = replace(spec.unet, in_channels=latent.channels, out_channels=latent.channels)
    try:
        return replace(spec, unet=unet, grid=autoencoder.grid, intensity=autoencoder.intensity, latent=latent)
    except Exception as exc:  # the spec's own checks: a latent the UNet cannot halve
        raise TrainingError(f"the autoencoder's latent does not fit preset {spec.name!r}: {exc}") from None


class LatentDataset:
    """Scaled latents ``(C, d, h, w)`` indexed like the volumes they were encoded from."""

    def __init__(self, latents: torch.Tensor, scale_factor: float) -> None:
        self.latents = latents
        self.scale_factor = scale_factor

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.latents[index] * self.scale_factor


def encode_dataset(dataset, autoencoder: torch.nn.Module, spec: ModelSpec, *, device: torch.device) -> torch.Tensor:
    """Every volume of ``dataset`` (model space) as its unscaled posterior-mean latent, on the CPU."""
    lo, hi = spec.latent.autoencoder.data_range
    out = []
    with torch.inference_mode():
        for start in range(0, len(dataset), _ENCODE_BATCH):
            x = torch.stack([dataset[i] for i in range(start, min(start + _ENCODE_BATCH, len(dataset)))])
            data = (x.to(device) + 1.0) * ((hi - lo) / 2.0) + lo
            z_mu, _ = autoencoder.encode(data)
            out.append(z_mu.float().cpu())
    if not out:
        return torch.empty((0, *spec.sample_shape))
    return torch.cat(out)


def cached_latents(
    run_dir: Path,
    *,
    autoencoder: AutoencoderCheckpoint,
    spec: ModelSpec,
    train_set,
    val_set,
    device: torch.device,
    write: bool,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(training latents, validation latents, read from the cache?), encoding only when the cache
    in ``run_dir`` does not match this autoencoder and these prepared files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = hashlib.sha256(
        json.dumps(
            {
                "autoencoder": autoencoder.sha256,
                "train": [str(p) for p in train_set.paths],
                "val": [str(p) for p in val_set.paths],
            }
        ).encode()
    ).hexdigest()
    path = run_dir / LATENTS_FILE
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") == key:
                    return fh.get_tensor("train"), fh.get_tensor("val"), True
        except Exception:  # a damaged cache is only a cache: encode again
            pass
    model = autoencoder.build().to(device)
    train = encode_dataset(train_set, model, spec, device=device)
    val = encode_dataset(val_set, model, spec, device=device)
    if write:
        with atomic_path(path, overwrite=True) as tmp:
            save_file({"train": train.contiguous(), "val": val.contiguous()}, str(tmp), metadata={"key": key})
    return train, val, False


def scale_factor_of(latents: torch.Tensor) -> float:
    """``1 / std`` of the training latents (all values), so the UNet sees about unit variance."""
    std = float(latents.double().std()) if latents.numel() > 1 else 0.0
    if not std > 0:
        raise TrainingError("the training latents have no spread; the autoencoder puts out a constant")
    return 1.0 / std
