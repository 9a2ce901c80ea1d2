"""Latent diffusion: the autoencoder's spec, the latent grid, and the two networks as one model.

A latent-diffusion model (Rombach et al. 2022; the MONAI brain LDM of Pinaya et al. 2022) runs
its samplers on a small latent ``z`` (e.g. 3 x 20 x 28 x 20) and decodes the final latent with
a KL autoencoder (MONAI's ``AutoencoderKL``) into the volume (160 x 224 x 160 at 1 mm). In
BrainSynth:

* :class:`LatentSpec` lives in :attr:`engine.specs.ModelSpec.latent`: the autoencoder's
  arguments (:class:`AutoencoderSpec`), the latent grid's shape and the scale factor. The
  spec's ``grid`` stays the grid of the *decoded* volume (its affine is what every export
  writes), so export, evaluation, studies and the app treat latent volumes like any other.
* :class:`LatentDiffusionModel` holds both networks as one ``torch.nn.Module`` (state-dict keys
  ``unet.*`` and ``autoencoder.*``), so a checkpoint holds both and the loader's checks (names,
  shapes, finite values) cover both. Its ``forward`` is the UNet's: samplers never know the
  difference. Decoding is the generation layer's job (:meth:`LatentDiffusionModel.decode`).

Scale factor (Rombach et al. 2022, section 4.3.2 and appendix D.1, as MONAI's LDM tutorial
computes it): the diffusion model runs on ``z * scale_factor`` where ``scale_factor = 1 /
std(z)`` over training latents, so the latents have about unit variance like the noise.
Decoding divides by it again. The MONAI brain bundle decodes its latents as they are (1.0).

Memory bound of decoding (:func:`decode_bytes`): the decoder's widest activations are at the
output resolution, where the first level's channels run through a residual block, so one
decode of a latent tile of ``t`` voxels per axis needs about ``4 bytes x 3 x channels[0] x
(t f)^3`` (f the autoencoder's downsampling factor) plus the output. Above a budget
(:data:`DECODE_BUDGET_BYTES`, 2 GiB) the latent is decoded in overlapping tiles with MONAI's
sliding-window inference (Gaussian blending), so memory stays within the budget whatever the
volume; by this estimate the 1 mm bundle's decoder needs about 4.1 GiB for the whole 160 x 224 x 160.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from engine.errors import BrainSynthError
from engine.field_checks import check_bool, check_float, check_int, check_keys, check_mapping, check_sequence

MAX_AE_LEVELS = 6
MAX_AE_CHANNELS = 4096
MAX_LATENT_CHANNELS = 64
#: Decoding above this estimate (bytes, float32) is done in tiles (:func:`decode_bytes`).
DECODE_BUDGET_BYTES = 2 * 2**30
#: Overlap of neighbouring decoding tiles (fraction of a tile), blended with Gaussian weights.
DECODE_OVERLAP = 0.25


@dataclass(frozen=True)
class AutoencoderSpec:
    """Arguments of MONAI's ``AutoencoderKL`` (3-D), and what its data values mean.

    Attributes:
        channels: channels of each level (each level after the first halves every axis).
        attention_levels: attention at each level.
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the latent.
        norm_num_groups: group-norm groups (must divide every level's channels).
        norm_eps: group-norm epsilon.
        with_encoder_nonlocal_attn: attention in the encoder's middle block.
        with_decoder_nonlocal_attn: attention in the decoder's middle block.
        data_range: the autoencoder's input/output values that correspond to model space -1 and
            +1 (BrainSynth's own autoencoders work in model space, (-1, 1); the MONAI brain
            bundle's on intensities in [0, 1], (0, 1)).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    latent_channels: int = 3
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        channels = tuple(check_sequence(self.channels, "autoencoder.channels", min_len=1, max_len=MAX_AE_LEVELS))
        object.__setattr__(self, "channels", channels)
        levels = len(channels)
        attention = tuple(
            check_sequence(self.attention_levels, "autoencoder.attention_levels", min_len=levels, max_len=levels)
        )
        object.__setattr__(self, "attention_levels", attention)
        for i, (c, a) in enumerate(zip(channels, attention, strict=True)):
            check_int(c, f"autoencoder.channels[{i}]", lo=1, hi=MAX_AE_CHANNELS)
            check_bool(a, f"autoencoder.attention_levels[{i}]")
        check_int(self.num_res_blocks, "autoencoder.num_res_blocks", lo=1, hi=16)
        check_int(self.latent_channels, "autoencoder.latent_channels", lo=1, hi=MAX_LATENT_CHANNELS)
        groups = check_int(self.norm_num_groups, "autoencoder.norm_num_groups", lo=1, hi=MAX_AE_CHANNELS)
        if any(c % groups for c in channels):
            raise BrainSynthError(
                f"autoencoder.norm_num_groups ({groups}) must divide every level's channels {channels}"
            )
        check_float(self.norm_eps, "autoencoder.norm_eps", lo=0.0, hi=1.0, lo_open=True)
        check_bool(self.with_encoder_nonlocal_attn, "autoencoder.with_encoder_nonlocal_attn")
        check_bool(self.with_decoder_nonlocal_attn, "autoencoder.with_decoder_nonlocal_attn")
        lo, hi = (
            check_float(v, f"autoencoder.data_range[{i}]", lo=-1e6, hi=1e6)
            for i, v in enumerate(check_sequence(self.data_range, "autoencoder.data_range", min_len=2, max_len=2))
        )
        if not lo < hi:
            raise BrainSynthError(f"autoencoder.data_range must rise ({lo:g} to {hi:g})")
        object.__setattr__(self, "data_range", (lo, hi))

    @property
    def downsampling_factor(self) -> int:
        """Decoded size / latent size along each axis (one halving between levels)."""
        return 2 ** (len(self.channels) - 1)

    def build(self) -> torch.nn.Module:
        """A freshly initialised MONAI ``AutoencoderKL`` for this spec (one channel in and out)."""
        from monai.networks.nets import AutoencoderKL

        return AutoencoderKL(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=tuple(self.channels),
            attention_levels=tuple(self.attention_levels),
            num_res_blocks=self.num_res_blocks,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps,
            with_encoder_nonlocal_attn=self.with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=self.with_decoder_nonlocal_attn,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> AutoencoderSpec:
        check_mapping(data, "autoencoder")
        check_keys(data, "autoencoder", allowed=[f.name for f in fields(cls)])
        return cls(**data)


@dataclass(frozen=True)
class LatentSpec:
    """The latent side of a latent-diffusion model.

    Attributes:
        autoencoder: the autoencoder's arguments.
        shape: the latent grid the samplers run on, voxels per axis (RAS+ like the decoded grid);
            times the autoencoder's downsampling factor it is the decoded grid.
        scale_factor: the diffusion model runs on ``latent * scale_factor`` (1 / the latents' std
            over the training data; see the module docstring).
    """

    autoencoder: AutoencoderSpec
    shape: tuple[int, int, int]
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        shape = check_sequence(self.shape, "latent.shape", min_len=3, max_len=3)
        object.__setattr__(
            self, "shape", tuple(check_int(n, f"latent.shape[{i}]", lo=1, hi=1024) for i, n in enumerate(shape))
        )
        check_float(self.scale_factor, "latent.scale_factor", lo=0.0, hi=1e6, lo_open=True)

    @property
    def channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def decoded_shape(self) -> tuple[int, int, int]:
        f = self.autoencoder.downsampling_factor
        return tuple(n * f for n in self.shape)

    def to_dict(self) -> dict:
        return {"autoencoder": self.autoencoder.to_dict(), "shape": list(self.shape), "scale_factor": self.scale_factor}

    @classmethod
    def from_dict(cls, data: dict) -> LatentSpec:
        check_mapping(data, "latent")
        check_keys(data, "latent", allowed=("autoencoder", "shape", "scale_factor"))
        return cls(
            autoencoder=AutoencoderSpec.from_dict(data["autoencoder"]),
            shape=data["shape"],
            scale_factor=data.get("scale_factor", 1.0),
        )


def decode_bytes(autoencoder: AutoencoderSpec, latent_shape) -> int:
    """Estimated peak memory of decoding a latent of ``latent_shape`` voxels (float32, bytes).

    The widest activations of MONAI's decoder: at each level a residual block holds its input,
    a normalised copy and a convolution output (3 tensors of that level's channels); the first
    level works at the output resolution. Plus the output itself. An estimate, not a bound
    from below: convolution backends add workspace.
    """
    f = autoencoder.downsampling_factor
    voxels = math.prod(int(n) * f for n in latent_shape)
    widest = max(3 * c * voxels / 8**i for i, c in enumerate(autoencoder.channels))
    return int(4 * (widest + voxels))


def decode_tile(autoencoder: AutoencoderSpec, latent_shape, *, budget_bytes: int = DECODE_BUDGET_BYTES) -> int | None:
    """Latent tile size (voxels per axis) whose decoding fits ``budget_bytes``; None when the
    whole latent fits. At least 4 (smaller tiles are mostly border)."""
    if decode_bytes(autoencoder, latent_shape) <= budget_bytes:
        return None
    tile = max(int(n) for n in latent_shape)
    while tile > 4 and decode_bytes(autoencoder, (tile, tile, tile)) > budget_bytes:
        tile -= 1
    return tile


class LatentDiffusionModel(torch.nn.Module):
    """The diffusion UNet and its autoencoder as one module.

    ``forward`` is the UNet's (it runs on scaled latents); :meth:`decode` turns scaled latents
    into model-space volumes and :meth:`encode` volumes into scaled latents. The autoencoder
    always stays in eval mode and is never trained through this module.
    """

    def __init__(self, unet: torch.nn.Module, autoencoder: torch.nn.Module, latent: LatentSpec) -> None:
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder
        self.latent = latent
        self.decode_budget_bytes = DECODE_BUDGET_BYTES

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.unet(x, timesteps=timesteps, **kwargs)

    def train(self, mode: bool = True) -> LatentDiffusionModel:
        super().train(mode)
        self.autoencoder.eval()
        return self

    def decode(self, z: torch.Tensor, *, tile: int | None = 0) -> torch.Tensor:
        """Scaled latents ``(B, C, *latent)`` -> model-space volumes ``(B, 1, *decoded)`` (float32).

        Args:
            z: what the samplers produced (``latent * scale_factor``).
            tile: latent tile size for sliding-window decoding; 0 chooses it from
                :attr:`decode_budget_bytes` (:func:`decode_tile`), None decodes the whole.
        """
        spec = self.latent
        if tile == 0:
            tile = decode_tile(spec.autoencoder, z.shape[2:], budget_bytes=self.decode_budget_bytes)
        z = z / spec.scale_factor
        with torch.inference_mode():
            if tile is None or all(tile >= n for n in z.shape[2:]):
                out = self.autoencoder.decode(z)
            else:
                from monai.inferers import sliding_window_inference

                out = sliding_window_inference(
                    z,
                    roi_size=(tile,) * 3,
                    sw_batch_size=1,
                    predictor=self.autoencoder.decode,
                    overlap=DECODE_OVERLAP,
                    mode="gaussian",
                    device=torch.device("cpu"),  # the blended whole lives in main memory
                    progress=False,
                )
        lo, hi = spec.autoencoder.data_range
        return ((out.float() - lo) * (2.0 / (hi - lo)) - 1.0).to(z.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space volumes ``(B, 1, *decoded)`` -> scaled latents (the posterior mean)."""
        lo, hi = self.latent.autoencoder.data_range
        data = (x + 1.0) * ((hi - lo) / 2.0) + lo
        with torch.inference_mode():
            z_mu, _ = self.autoencoder.encode(data)
        return z_mu * self.latent.scale_factor
