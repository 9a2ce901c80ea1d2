"""Model specs: the network, the noise schedule and the grid, and the named presets.

A :class:`ModelSpec` is everything needed to rebuild a model from weights; it is stored as
JSON in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from engine.conditions import ConditionSpec, Covariate, covariate_embedding
from engine.errors import BrainSynthError
from engine.field_checks import (
    check_bool,
    check_float,
    check_int,
    check_keys,
    check_mapping,
    check_sequence,
    check_str,
)
from engine.geometry import GridGeometry
from engine.intensity import IntensityMapping
from engine.latent import AutoencoderSpec, LatentDiffusionModel, LatentSpec
from engine.sampler_registry import SamplerSettings

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
"""What a network may be trained to output (MONAI's ``DDPMPredictionType`` values)."""
SCHEDULES: tuple[str, ...] = ("scaled_linear_beta", "linear_beta")
"""The noise schedules :meth:`ScheduleSpec.betas` computes (MONAI's names)."""

# Bounds of what a spec may say. They are far beyond any model BrainSynth trains (the reference
# study: T = 1000, 3 levels of at most 256 channels, 2 residual blocks) and exist so that a
# damaged or hostile checkpoint is refused before it allocates anything: T = 1e10 would make
# 80 GB of betas, a million residual blocks a million modules.
MAX_TIMESTEPS = 100_000
MAX_LEVELS = 6
MAX_CHANNELS = 4096
MAX_RES_BLOCKS = 16
MAX_IO_CHANNELS = 16


@dataclass(frozen=True)
class ScheduleSpec:
    """The forward noise schedule (MONAI naming).

    Attributes:
        num_train_timesteps: T, the number of training diffusion steps.
        schedule: MONAI schedule name ("scaled_linear_beta", "linear_beta").
        beta_start: beta_1.
        beta_end: beta_T.
        clip_sample: clamp the predicted x_0 to [-1, 1] while sampling (MONAI's default).
        prediction_type: what the network outputs (MONAI's names): "epsilon" (the noise, as
            in the reference study), "v_prediction" (``v = sqrt(abar) eps - sqrt(1-abar) x_0``,
            Salimans & Ho 2022) or "sample" (x_0 itself).

    Why v-prediction for the small demo model: an epsilon loss hardly weighs the noisiest
    timesteps, where a tiny error in epsilon is a large error in x_0 (x_0 error = epsilon
    error x sqrt((1-abar)/abar), 48x at t = T-1), so the global layout of the brain is learnt
    last; the v loss weighs x_0 errors there directly (v error = x_0 error / sqrt(1-abar)).
    """

    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0005
    beta_end: float = 0.0195
    clip_sample: bool = True
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise BrainSynthError(
                f"unknown prediction type {self.prediction_type!r}; use one of: {', '.join(PREDICTION_TYPES)}"
            )
        check_int(self.num_train_timesteps, "schedule.num_train_timesteps", lo=1, hi=MAX_TIMESTEPS)
        if self.schedule not in SCHEDULES:
            raise BrainSynthError(
                f"unknown noise schedule {self.schedule!r}; use 'scaled_linear_beta' or 'linear_beta'"
            )
        start = check_float(self.beta_start, "schedule.beta_start", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        end = check_float(self.beta_end, "schedule.beta_end", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        if end < start:
            raise BrainSynthError(
                f"schedule.beta_end ({end:g}) is smaller than beta_start ({start:g}); noise must grow with t"
            )
        check_bool(self.clip_sample, "schedule.clip_sample")

    def training_target(
        self, x0: torch.Tensor, eps: torch.Tensor, sqrt_abar: torch.Tensor, sqrt_one_minus_abar: torch.Tensor
    ) -> torch.Tensor:
        """What the network should output for ``x_t = sqrt_abar x0 + sqrt_one_minus_abar eps``.

        ``sqrt_abar`` and ``sqrt_one_minus_abar`` broadcast against ``x0`` (one per volume).
        The v target is MONAI's ``DDPMScheduler.get_velocity``.
        """
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return sqrt_abar * eps - sqrt_one_minus_abar * x0
        return x0

    def split_prediction(
        self, output: torch.Tensor, x_t: torch.Tensor, abar_t: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, epsilon) predicted at timestep t from the network's output, as MONAI's schedulers do.

        Neither is clipped here: samplers clip x_0 (``clip_sample``) but, like MONAI's
        ``DDIMScheduler.step``, keep the unclipped epsilon for the direction term.
        """
        a, s = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * output) / a, output
        if self.prediction_type == "v_prediction":
            return a * x_t - s * output, a * output + s * x_t
        return output, (x_t - a * output) / s

    def betas(self) -> torch.Tensor:
        """beta_t for t = 0..T-1 as float64, computed exactly as MONAI does (float32) first.

        Computing in float32 like MONAI and only then widening keeps us bit-compatible with
        checkpoints trained with MONAI's schedulers.
        """
        n = self.num_train_timesteps
        if self.schedule == "scaled_linear_beta":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        elif self.schedule == "linear_beta":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        else:
            raise BrainSynthError(
                f"unknown noise schedule {self.schedule!r}; use 'scaled_linear_beta' or 'linear_beta'"
            )
        return betas.double()

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar_t = prod_{s<=t} (1 - beta_s), float64."""
        return torch.cumprod(1.0 - self.betas(), dim=0)

    def noise_coefficients(self, timesteps: torch.Tensor, *, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` for each timestep, shaped to scale a batch.

        The tables are computed once per schedule and device, from the float64
        :meth:`alphas_cumprod` rounded to float32 (as training has always used them).

        Args:
            timesteps: integer timesteps ``(B,)`` in 0..T-1; the result is on their device.
            ndim: dimensions of the batch they scale (5 for ``(B, C, D, H, W)``).

        Returns:
            Two float32 tensors of shape ``(B, 1, ..., 1)`` with ``ndim`` dimensions.
        """
        # The frozen dataclass keeps its cache outside the fields (not compared, not serialised).
        cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = self.__dict__.setdefault("_tables", {})
        tables = cache.get(timesteps.device)
        if tables is None:
            abar = self.alphas_cumprod()
            tables = (abar.sqrt().float().to(timesteps.device), (1.0 - abar).sqrt().float().to(timesteps.device))
            cache[timesteps.device] = tables
        shape = (timesteps.shape[0],) + (1,) * (ndim - 1)
        return tables[0][timesteps].view(shape), tables[1][timesteps].view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process q(x_t | x_0): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

        What MONAI's ``DDPMScheduler.add_noise`` computes (Ho et al. 2020, eq. 4), with the
        coefficients of :meth:`noise_coefficients`.

        Args:
            x0: clean volumes ``(B, C, D, H, W)``, model space.
            noise: standard normal noise eps of the same shape.
            timesteps: integer timesteps ``(B,)`` in 0..T-1, on the volumes' device.

        Returns:
            x_t, the same shape as ``x0``.
        """
        sqrt_abar, sqrt_one_minus_abar = self.noise_coefficients(timesteps, ndim=x0.ndim)
        return sqrt_abar * x0 + sqrt_one_minus_abar * noise

    def monai_kwargs(self) -> dict:
        """Keyword arguments for MONAI's DDPMScheduler / DDIMScheduler."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "clip_sample": self.clip_sample,
            "prediction_type": self.prediction_type,
        }


@dataclass(frozen=True)
class UNetSpec:
    """Arguments of MONAI's ``DiffusionModelUNet`` (3-D, one channel in and out)."""

    channels: tuple[int, ...] = (128, 128, 256)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 2
    num_head_channels: int = 256
    norm_num_groups: int = 32
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    # MONAI's further arguments, at MONAI's defaults (which every BrainSynth pixel model uses);
    # the MONAI brain LDM bundle sets them (resblock_updown, per-level head channels,
    # cross-attention with upcast attention). Written to a checkpoint only when not the default,
    # so older checkpoints and older readers see the same spec as before.
    norm_eps: float = 1e-6
    resblock_updown: bool = False
    with_conditioning: bool = False
    cross_attention_dim: int | None = None
    transformer_num_layers: int = 1
    upcast_attention: bool = False

    def __post_init__(self) -> None:
        # Lists (from JSON) become tuples, so that specs stay hashable and compare equal.
        object.__setattr__(
            self, "channels", tuple(check_sequence(self.channels, "unet.channels", min_len=1, max_len=MAX_LEVELS))
        )
        levels = len(self.channels)
        object.__setattr__(
            self,
            "attention_levels",
            tuple(check_sequence(self.attention_levels, "unet.attention_levels", min_len=levels, max_len=levels)),
        )
        for i, (c, a) in enumerate(zip(self.channels, self.attention_levels, strict=True)):
            check_int(c, f"unet.channels[{i}]", lo=1, hi=MAX_CHANNELS)
            check_bool(a, f"unet.attention_levels[{i}]")
        check_int(self.num_res_blocks, "unet.num_res_blocks", lo=1, hi=MAX_RES_BLOCKS)
        if isinstance(self.num_head_channels, list | tuple):
            # One per level (MONAI allows it; 0 at a level without attention, as the bundle has).
            per_level = tuple(
                check_sequence(self.num_head_channels, "unet.num_head_channels", min_len=levels, max_len=levels)
            )
            object.__setattr__(self, "num_head_channels", per_level)
            heads_at = [
                check_int(h, f"unet.num_head_channels[{i}]", lo=0, hi=MAX_CHANNELS) for i, h in enumerate(per_level)
            ]
        else:
            heads_at = [check_int(self.num_head_channels, "unet.num_head_channels", lo=1, hi=MAX_CHANNELS)] * levels
        check_float(self.norm_eps, "unet.norm_eps", lo=0.0, hi=1.0, lo_open=True)
        check_bool(self.resblock_updown, "unet.resblock_updown")
        check_bool(self.with_conditioning, "unet.with_conditioning")
        check_bool(self.upcast_attention, "unet.upcast_attention")
        check_int(self.transformer_num_layers, "unet.transformer_num_layers", lo=1, hi=MAX_RES_BLOCKS)
        if self.with_conditioning != (self.cross_attention_dim is not None):
            raise BrainSynthError("unet.with_conditioning and unet.cross_attention_dim go together (cross-attention)")
        if self.cross_attention_dim is not None:
            check_int(self.cross_attention_dim, "unet.cross_attention_dim", lo=1, hi=MAX_CHANNELS)
        groups = check_int(self.norm_num_groups, "unet.norm_num_groups", lo=1, hi=MAX_CHANNELS)
        if self.spatial_dims != 3 or isinstance(self.spatial_dims, bool):
            raise BrainSynthError(f"unet.spatial_dims must be 3 (BrainSynth models are 3-D), not {self.spatial_dims!r}")
        check_int(self.in_channels, "unet.in_channels", lo=1, hi=MAX_IO_CHANNELS)
        check_int(self.out_channels, "unet.out_channels", lo=1, hi=MAX_IO_CHANNELS)
        # MONAI's own conditions, checked here so that they are one clear line, not its ValueError.
        if any(c % groups for c in self.channels):
            raise BrainSynthError(
                f"unet.norm_num_groups ({groups}) must divide every level's channels {tuple(self.channels)}"
            )
        # The middle block at the deepest level always has attention.
        for i, (c, a, heads) in enumerate(zip(self.channels, self.attention_levels, heads_at, strict=True)):
            if (a or i == levels - 1) and (heads < 1 or c % heads):
                raise BrainSynthError(
                    f"unet.num_head_channels ({heads}) must divide the channels ({c}) of every attention level "
                    "and of the deepest level"
                )

    def to_dict(self) -> dict:
        """The spec as JSON: MONAI's further arguments only where they differ from the default."""
        defaults = UNetSpec()
        extra = ("norm_eps", "resblock_updown", "with_conditioning", "cross_attention_dim")
        extra += ("transformer_num_layers", "upcast_attention")
        data = _plain(asdict(self))
        return {k: v for k, v in data.items() if k not in extra or v != getattr(defaults, k)}

    def build(self, *, use_flash_attention: bool = False, conditions: ConditionSpec | None = None) -> torch.nn.Module:
        """A freshly initialised MONAI ``DiffusionModelUNet`` for this spec.

        With ``conditions``, MONAI's class embedding (``num_class_embeds``) is replaced by the
        covariate embedding (:func:`engine.conditions.covariate_embedding`): MONAI's forward adds
        it to the time embedding and takes the encoded conditions as ``class_labels``. With
        conditions of the ``"context"`` mechanism (the MONAI brain LDM bundle's), the network is
        MONAI's own with a forward that passes them as cross-attention context and as constant
        input channels (:func:`engine.conditions.context_unet_class`).
        """
        from monai.networks.nets import DiffusionModelUNet

        context = conditions is not None and conditions.mechanism == "context"
        if context:
            from engine.conditions import context_unet_class

            network_class = context_unet_class()
        else:
            network_class = DiffusionModelUNet
        model = network_class(
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            channels=tuple(self.channels),
            attention_levels=tuple(self.attention_levels),
            num_res_blocks=self.num_res_blocks,
            num_head_channels=self.num_head_channels,
            norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps,
            resblock_updown=self.resblock_updown,
            with_conditioning=self.with_conditioning,
            cross_attention_dim=self.cross_attention_dim,
            transformer_num_layers=self.transformer_num_layers,
            upcast_attention=self.upcast_attention,
            use_flash_attention=use_flash_attention,
            num_class_embeds=None if conditions is None or context else len(conditions.covariates),
        )
        if conditions is not None and not context:
            model.class_embedding = covariate_embedding(conditions, 4 * self.channels[0])
        return model

    @property
    def downsampling_factor(self) -> int:
        """Grid sizes must be divisible by this (one halving between levels)."""
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and interpret its output.

    ``conditions`` names the covariates of a conditional model (None: unconditional, the
    network is exactly MONAI's plain ``DiffusionModelUNet``).

    ``default_sampler`` is the sampler the model was measured to sample best with at a
    practical cost (the front ends start from it); None means the engine's default
    (:data:`engine.samplers.DEFAULT_SAMPLER`). Which sampler suits a model depends on how
    well it was trained, so it travels with the weights.
    """

    name: str
    unet: UNetSpec
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    grid: GridGeometry = field(default_factory=lambda: GridGeometry.over_mni_box((84, 128, 84)))
    intensity: IntensityMapping = field(default_factory=IntensityMapping)
    default_sampler: SamplerSettings | None = None
    conditions: ConditionSpec | None = None
    latent: LatentSpec | None = None

    def __post_init__(self) -> None:
        check_str(self.name, "name")
        if self.default_sampler is not None:
            self.default_sampler.validate(self.schedule)
        factor = self.unet.downsampling_factor
        where = "latent grid" if self.latent is not None else "grid"
        if any(n % factor for n in self.denoiser_shape):
            raise BrainSynthError(
                f"{where} {format_shape(self.denoiser_shape)} does not fit a UNet with {len(self.unet.channels)} "
                f"levels: every size must be divisible by {factor}"
            )
        if self.latent is not None:
            self._check_latent()
        if self.conditions is not None and self.conditions.mechanism == "context":
            n = len(self.conditions.covariates)
            if self.unet.cross_attention_dim != n or self.unet.in_channels != self.sample_shape[0] + n:
                raise BrainSynthError(
                    f"conditions passed as context need a UNet with cross_attention_dim {n} and "
                    f"{self.sample_shape[0]} + {n} input channels (it has {self.unet.cross_attention_dim} and "
                    f"{self.unet.in_channels})"
                )

    def _check_latent(self) -> None:
        latent = self.latent
        if tuple(latent.decoded_shape) != tuple(self.grid.shape):
            raise BrainSynthError(
                f"latent grid {format_shape(latent.shape)} decodes to {format_shape(latent.decoded_shape)}, "
                f"not the model grid {format_shape(self.grid.shape)}"
            )
        if self.unet.out_channels != latent.channels:
            raise BrainSynthError(
                f"the UNet puts out {self.unet.out_channels} channels, the latent has {latent.channels}"
            )

    @property
    def denoiser_shape(self) -> tuple[int, int, int]:
        """The grid the UNet (and every sampler) runs on: the latent grid or the model grid."""
        return tuple(self.latent.shape) if self.latent is not None else tuple(self.grid.shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, D, H, W)`` of what the samplers denoise: the latent, or the volume itself."""
        if self.latent is not None:
            return (self.latent.channels, *self.latent.shape)
        return (self.unet.in_channels, *self.grid.shape)

    def build_model(self, *, use_flash_attention: bool = False) -> torch.nn.Module:
        """The network: MONAI's UNet, or for a latent model both networks as one
        :class:`engine.latent.LatentDiffusionModel` (state-dict keys ``unet.*``, ``autoencoder.*``)."""
        unet = self.unet.build(use_flash_attention=use_flash_attention, conditions=self.conditions)
        if self.latent is None:
            return unet
        return LatentDiffusionModel(unet, self.latent.autoencoder.build(), self.latent)

    def to_dict(self) -> dict:
        conditions = {} if self.conditions is None else {"conditions": self.conditions.to_dict()}
        latent = {} if self.latent is None else {"latent": self.latent.to_dict()}
        return {
            "name": self.name,
            "unet": self.unet.to_dict(),
            "schedule": asdict(self.schedule),
            "grid": self.grid.to_dict(),
            "intensity": self.intensity.to_dict(),
            "default_sampler": None if self.default_sampler is None else self.default_sampler.to_dict(),
            **conditions,
            **latent,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """The spec a :meth:`to_dict` record describes, every field checked.

        Raises:
            BrainSynthError: a field of the wrong type or out of bounds, or unknown fields.
            KeyError: a required field is missing.
        """
        check_mapping(data, "the model spec")
        check_keys(
            data,
            "the model spec",
            allowed=("name", "unet", "schedule", "grid", "intensity", "default_sampler", "conditions", "latent"),
        )
        unet = check_mapping(data["unet"], "unet")
        check_keys(unet, "unet", allowed=[f.name for f in fields(UNetSpec)])
        schedule = check_mapping(data.get("schedule", {}), "schedule")
        check_keys(schedule, "schedule", allowed=[f.name for f in fields(ScheduleSpec)])
        sampler = data.get("default_sampler")
        latent = data.get("latent")
        return cls(
            name=data.get("name", "custom"),
            latent=LatentSpec.from_dict(check_mapping(latent, "latent")) if latent is not None else None,
            unet=UNetSpec(**{**unet, "channels": unet["channels"], "attention_levels": unet["attention_levels"]}),
            schedule=ScheduleSpec(**schedule),
            grid=GridGeometry.from_dict(check_mapping(data["grid"], "grid")),
            intensity=IntensityMapping.from_dict(check_mapping(data.get("intensity", {}), "intensity")),
            default_sampler=_sampler_from_dict(check_mapping(sampler, "default_sampler")) if sampler else None,
            conditions=ConditionSpec.from_dict(check_mapping(data["conditions"], "conditions"))
            if data.get("conditions")
            else None,
        )

    def build_random_model(self, *, seed: int = 0) -> torch.nn.Module:
        """A randomly initialised network that predicts non-zero noise, for tests and benchmarks.

        MONAI zero-initialises the last convolution (and a few others), so a fresh
        ``DiffusionModelUNet`` outputs exactly 0 and any comparison run on it is trivially
        true; those layers are re-drawn here.
        """
        return reinitialise_zero_layers(self.build_model(), seed=seed)

    def with_grid(self, shape: tuple[int, int, int]) -> ModelSpec:
        """The same network and schedule on another grid over the MNI box."""
        return replace(self, grid=GridGeometry.over_mni_box(shape))


def reinitialise_zero_layers(model: torch.nn.Module, *, seed: int = 0) -> torch.nn.Module:
    """Re-draw every all-zero Conv3d/Linear weight with its default initialisation (in place)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Linear) and not module.weight.any():
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _sampler_from_dict(data: dict) -> SamplerSettings:
    # Name and steps are required (KeyError): SamplerSettings' own defaults (DDPM, 1000 steps)
    # must not stand in for a damaged entry. Unknown keys are refused by the constructor.
    return SamplerSettings(**{"name": data["name"], "steps": data["steps"], **data})


def _plain(value):
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def format_shape(shape) -> str:
    return " x ".join(str(int(n)) for n in shape)


PRESETS: dict[str, ModelSpec] = {
    # Exactly the reference study (Basile et al. 2024, section 3.2): about 47.5 M parameters.
    "paper": ModelSpec(
        name="paper",
        unet=UNetSpec(
            channels=(128, 128, 256),
            attention_levels=(False, False, True),
            num_res_blocks=2,
            num_head_channels=256,
            norm_num_groups=32,
        ),
        grid=GridGeometry.over_mni_box((84, 128, 84)),
    ),
    # Small enough to generate a volume on 2 CPU cores in well under 30 s: a 4.5 mm isotropic
    # grid (181/40 ≈ 217/48 ≈ 4.52 mm) and a three-level UNet of (16, 32, 64) channels.
    # v-prediction: with CPU-sized training budgets an epsilon model still misplaces the brain
    # at the noisiest steps (see ScheduleSpec); the schedule itself is the study's.
    "demo": ModelSpec(
        name="demo",
        unet=UNetSpec(
            channels=(16, 32, 64),
            attention_levels=(False, False, True),
            num_res_blocks=1,
            num_head_channels=32,
            norm_num_groups=8,
        ),
        schedule=ScheduleSpec(prediction_type="v_prediction"),
        grid=GridGeometry.over_mni_box((40, 48, 40)),
        # Ancestral DDPM on 100 respaced steps: the injected noise corrects this small model's
        # errors, where the deterministic DPM-Solver++ 25 matches held-out scans less well
        # (benchmarks/demo_model_quality.py; resources/MODEL_CARD.md). 14.2 s a volume on 2 cores.
        default_sampler=SamplerSettings("ddpm", 100),
    ),
    # For tests and smoke runs only: seconds per volume, no anatomy to speak of.
    "tiny": ModelSpec(
        name="tiny",
        unet=UNetSpec(
            channels=(8, 16, 16),
            attention_levels=(False, False, True),
            num_res_blocks=1,
            num_head_channels=16,
            norm_num_groups=8,
        ),
        grid=GridGeometry.over_mni_box((16, 24, 16)),
    ),
}


#: The MONAI brain LDM bundle's covariates (its configs/inference.json: "gender", "age",
#: "ventricular_vol", "brain_vol"), each in [0, 1] as the bundle scales them; its documentation
#: gives no real ranges, so none are claimed. Defaults are the values its inference config uses.
BUNDLE_COVARIATES: tuple[tuple[str, str, float], ...] = (
    ("sex", "gender", 0.0),
    ("age", "age", 0.1),
    ("ventricular_vol", "ventricular_vol", 0.2),
    ("brain_vol", "brain_vol", 0.4),
)
BUNDLE_UNIT = "(0-1, the bundle's scaling)"


def bundle_conditions(defaults: dict[str, float] | None = None) -> ConditionSpec:
    """The bundle's conditions: passed as cross-attention context and as concatenated channels."""
    defaults = defaults or {}
    return ConditionSpec(
        covariates=tuple(
            Covariate(
                name=name,
                kind="continuous",
                minimum=0.0,
                maximum=1.0,
                dropout=0.0,
                default=float(defaults.get(name, default)),
                unit=BUNDLE_UNIT,
            )
            for name, _, default in BUNDLE_COVARIATES
        ),
        dropout=0.0,
        mechanism="context",
    )


def _ldm_presets() -> dict[str, ModelSpec]:
    # The MONAI brain LDM bundle (Pinaya et al. 2022; model zoo
    # brain_image_synthesis_latent_diffusion_model, configs/inference.json), exactly: a
    # 160 x 224 x 160 1 mm grid from a 3 x 20 x 28 x 20 latent, DDIM 50 steps.
    bundle_autoencoder = AutoencoderSpec(
        channels=(64, 128, 128, 128),
        attention_levels=(False, False, False, False),
        num_res_blocks=2,
        latent_channels=3,
        norm_num_groups=32,
        norm_eps=1e-6,
        data_range=(0.0, 1.0),
    )
    ldm_1mm = ModelSpec(
        name="ldm-1mm",
        unet=UNetSpec(
            channels=(256, 512, 768),
            attention_levels=(False, True, True),
            num_res_blocks=2,
            num_head_channels=(0, 512, 768),
            norm_num_groups=32,
            in_channels=7,
            out_channels=3,
            resblock_updown=True,
            with_conditioning=True,
            cross_attention_dim=4,
            transformer_num_layers=1,
            upcast_attention=True,
        ),
        schedule=ScheduleSpec(
            num_train_timesteps=1000,
            schedule="scaled_linear_beta",
            beta_start=0.0015,
            beta_end=0.0205,
            clip_sample=False,
        ),
        grid=GridGeometry.centred_on_mni_box((160, 224, 160)),
        default_sampler=SamplerSettings("ddim", 50),
        conditions=bundle_conditions(),
        latent=LatentSpec(autoencoder=bundle_autoencoder, shape=(20, 28, 20), scale_factor=1.0),
    )
    # Trainable on a few CPU cores: a ~2 mm grid (88 x 104 x 88 over the MNI box: 2.06 x 2.09 x
    # 2.06 mm, 7.7x the pixel demo's voxels) from a 3 x 22 x 26 x 22 latent. Latents are not
    # bounded, so x0 is not clipped.
    ldm_demo = ModelSpec(
        name="ldm-demo",
        unet=UNetSpec(
            channels=(32, 64),
            attention_levels=(False, True),
            num_res_blocks=1,
            num_head_channels=32,
            norm_num_groups=8,
            in_channels=3,
            out_channels=3,
        ),
        schedule=ScheduleSpec(prediction_type="v_prediction", clip_sample=False),
        grid=GridGeometry.over_mni_box((88, 104, 88)),
        default_sampler=SamplerSettings("ddim", 50),
        latent=LatentSpec(
            autoencoder=AutoencoderSpec(
                channels=(16, 32, 32), attention_levels=(False, False, False), num_res_blocks=1, norm_num_groups=8
            ),
            shape=(22, 26, 22),
        ),
    )
    # For tests only: a 16 x 24 x 16 grid from a 3 x 8 x 12 x 8 latent.
    ldm_tiny = ModelSpec(
        name="ldm-tiny",
        unet=UNetSpec(
            channels=(8, 16),
            attention_levels=(False, True),
            num_res_blocks=1,
            num_head_channels=16,
            norm_num_groups=8,
            in_channels=3,
            out_channels=3,
        ),
        schedule=ScheduleSpec(clip_sample=False),
        grid=GridGeometry.over_mni_box((16, 24, 16)),
        latent=LatentSpec(
            autoencoder=AutoencoderSpec(channels=(8, 8), attention_levels=(False, False), norm_num_groups=8),
            shape=(8, 12, 8),
        ),
    )
    return {spec.name: spec for spec in (ldm_1mm, ldm_demo, ldm_tiny)}


PRESETS.update(_ldm_presets())


def get_preset(name: str) -> ModelSpec:
    """The named preset, or a clear error listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise BrainSynthError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
