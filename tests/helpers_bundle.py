"""A fake MONAI brain LDM bundle: the bundle's structure at a small size, old key names.

Both networks are built with MONAI from arguments shaped like the bundle's
``configs/inference.json`` (the same kinds of levels, attention, conditioning), shrunk: an
AutoencoderKL of 4 levels (decoding x8) and a DiffusionModelUNet of 3 levels on a 3 x 4 x 8 x 4
latent, so the decoded grid is 32 x 64 x 32. Their state dicts are written under the older
MONAI GenerativeModels key names, as the real bundle's files are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.specs import reinitialise_zero_layers

AUTOENCODER_DEF = {
    "_target_": "monai.networks.nets.AutoencoderKL",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 3,
    "channels": [8, 16, 16, 16],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "norm_eps": 1e-06,
    "attention_levels": [False, False, False, False],
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
}
DIFFUSION_DEF = {
    "_target_": "monai.networks.nets.DiffusionModelUNet",
    "spatial_dims": 3,
    "in_channels": 7,
    "out_channels": 3,
    "channels": [16, 32, 48],
    "num_res_blocks": 1,
    "attention_levels": [False, True, True],
    "norm_num_groups": 8,
    "norm_eps": 1e-06,
    "resblock_updown": True,
    "num_head_channels": [0, 32, 48],
    "with_conditioning": True,
    "transformer_num_layers": 1,
    "cross_attention_dim": 4,
    "upcast_attention": True,
    "use_flash_attention": False,
}
LATENT = (3, 4, 8, 4)


def config() -> dict:
    """An inference.json of the bundle's form (only the entries BrainSynth reads)."""
    return {
        "gender": 0.0,
        "age": 0.1,
        "ventricular_vol": 0.2,
        "brain_vol": 0.4,
        "autoencoder_def": AUTOENCODER_DEF,
        "diffusion_def": DIFFUSION_DEF,
        "scheduler": {
            "_target_": "monai.networks.schedulers.DDIMScheduler",
            "beta_start": 0.0015,
            "beta_end": 0.0205,
            "num_train_timesteps": 1000,
            "schedule": "scaled_linear_beta",
            "clip_sample": False,
        },
        "noise": f"$torch.randn((1, {', '.join(map(str, LATENT[:1] + LATENT[1:]))})).to(@device)",
        "set_timesteps": "$@scheduler.set_timesteps(num_inference_steps=50)",
    }


def build_networks(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The two networks with random weights (MONAI's zero-initialised layers re-drawn)."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    def args(definition):
        return {k: v for k, v in definition.items() if k != "_target_"}

    torch.manual_seed(seed)
    autoencoder = AutoencoderKL(**args(AUTOENCODER_DEF))
    unet = reinitialise_zero_layers(DiffusionModelUNet(**args(DIFFUSION_DEF)), seed=seed)
    return autoencoder, unet


def to_old_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Today's MONAI key names -> MONAI GenerativeModels' (the inverse of load_old_state_dict)."""
    out = {}
    for key, value in state.items():
        old = key
        if "transformer_blocks" in old and ".out_proj." in old:
            old = old.replace(".out_proj.", ".to_out.0.")
        elif ".attn.out_proj." in old:
            old = old.replace(".attn.out_proj.", ".proj_attn.")
        for part in ("q", "k", "v"):
            old = old.replace(f".attn.to_{part}.", f".to_{part}.")
        old = old.replace("postconv", "conv")
        out[old] = value.clone()
    return out


def write_fake_bundle(
    root: Path, *, seed: int = 0, with_config: bool = True, monai_version: str | None = "1.4.0"
) -> tuple[Path, dict, dict]:
    """Write the fake bundle into ``root``; returns it and the networks' (new-name) state dicts.

    ``monai_version``: what its ``configs/metadata.json`` names (the released bundle's 1.4.0);
    None writes no metadata.json."""
    autoencoder, unet = build_networks(seed)
    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(to_old_names(autoencoder.state_dict()), root / "models" / "autoencoder.pt")
    torch.save(to_old_names(unet.state_dict()), root / "models" / "model.pt")
    if with_config:
        (root / "configs").mkdir(exist_ok=True)
        (root / "configs" / "inference.json").write_text(json.dumps(config(), indent=2))
        if monai_version is not None:
            metadata = {"version": "1.0.0", "monai_version": monai_version, "task": "Brain image synthesis"}
            (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return root, autoencoder.state_dict(), unet.state_dict()
