"""The samplers BrainSynth offers, by name: one entry each, importable without torch.

Argument parsers, the training configuration and the GUI's controls read names, labels and
default step counts from here at start-up, before torch is imported. The step math of each
sampler is its stepper in :mod:`engine.samplers` (``STEPPERS``); adding a sampler means adding
one stepper there and one :class:`SamplerInfo` here (a test checks the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from engine.errors import SamplingError


@dataclass(frozen=True)
class SamplerInfo:
    """What the front ends show and offer for one sampler.

    Attributes:
        name: the name used on the command line, in checkpoints and in sidecars.
        label: a short human-readable name for menus.
        default_steps: steps to offer when the model names no count of its own.
        stochastic: whether it draws fresh noise at every step (ancestral).
        has_eta: whether it takes DDIM's noise scale ``eta``.
        reference: where its update rule comes from.
    """

    name: str
    label: str
    default_steps: int
    stochastic: bool
    has_eta: bool
    reference: str


SAMPLERS: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        SamplerInfo(
            name="ddpm",
            label="DDPM (ancestral)",
            default_steps=1000,
            stochastic=True,
            has_eta=False,
            reference="Ho et al. 2020; respaced as in Nichol & Dhariwal 2021",
        ),
        SamplerInfo(
            name="ddim",
            label="DDIM",
            default_steps=50,
            stochastic=False,
            has_eta=True,
            reference="Song et al. 2021, eq. 12 and 16",
        ),
        SamplerInfo(
            name="dpmpp-2m",
            label="DPM-Solver++ 2M",
            default_steps=25,
            stochastic=False,
            has_eta=False,
            reference="Lu et al. 2022 (arXiv 2211.01095), Algorithm 2",
        ),
    )
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# What the front ends offer for a model that names no default sampler of its own
# (ModelSpec.default_sampler): DPM-Solver++(2M) reaches DDIM-quality volumes in fewer steps
# (benchmarks/bench_sampling.py); DDPM as the reference study ran it needs every training step.
DEFAULT_SAMPLER = "dpmpp-2m"

#: Timestep layouts a run can take, N steps out of T training steps (see
#: :func:`engine.samplers.timestep_layout`), and a short description of each for the front ends.
SPACINGS: dict[str, str] = {
    # BrainSynth's own: t_i = round(T - i T/N) - 1, the first step at T-1 (Lin et al. 2023).
    "trailing": "trailing timesteps (BrainSynth's: the first at T-1)",
    # MONAI <= 1.5, MONAI GenerativeModels, diffusers' default: t_i = (N-1-i) (T//N) + offset,
    # the next step t - T//N; what the MONAI brain LDM bundle's DDIMScheduler does in the
    # MONAI 1.4.0 its metadata names (and what Pinaya et al. 2022 sampled with).
    "leading": "leading timesteps (MONAI <= 1.5 DDIMScheduler: (N-1-i)*(T//N) + offset)",
    # MONAI >= 1.6 DDIMScheduler: t_i = round(linspace(T-1-offset, 0, N)) + offset, but its step
    # still takes the next noise level at t - T//N (not t_{i+1}); reproduced as MONAI runs it.
    "linspace": "linspace timesteps (MONAI >= 1.6 DDIMScheduler, its step to t - T//N)",
}
DEFAULT_SPACING = "trailing"


def sampler_info(name: str) -> SamplerInfo:
    """The registry entry for ``name``.

    Raises:
        SamplingError: for a name that is not a sampler, listing those that are.
    """
    info = SAMPLERS.get(name) if isinstance(name, str) else None
    if info is None:
        raise SamplingError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    return info


class _Schedule(Protocol):
    num_train_timesteps: int


@dataclass(frozen=True)
class SamplerSettings:
    """Which sampler to run and how many model evaluations it may use.

    Kept here, torch-free, so that a command line or a model's default sampler
    (:attr:`engine.specs.ModelSpec.default_sampler`) is checked before torch is imported; the
    samplers themselves are in :mod:`engine.samplers`.

    Attributes:
        name: a name of :data:`SAMPLERS`: ``"ddpm"`` (ancestral, stochastic), ``"ddim"``
            (deterministic when ``eta`` is 0) or ``"dpmpp-2m"`` (DPM-Solver++(2M), deterministic).
        steps: number of denoising steps = model evaluations per volume, 1 .. T.
        eta: DDIM's noise scale (0 = deterministic DDIM, 1 = DDPM-like posterior noise);
            only for samplers that take one (:attr:`SamplerInfo.has_eta`).
        spacing: the timestep layout, a name of :data:`SPACINGS`: ``"trailing"`` (BrainSynth's
            own, every model trained here) or a layout of MONAI's ``DDIMScheduler`` for a model
            that was sampled with it (``"leading"``: MONAI <= 1.5; ``"linspace"``: MONAI >= 1.6,
            DDIM only), so that an imported model samples exactly as its authors' code does.
        steps_offset: MONAI's ``steps_offset``, added to every timestep (``"leading"`` and
            ``"linspace"`` only; 0 otherwise).

    Raises:
        SamplingError: for an unknown name, steps < 1, a negative eta or eta on a sampler
            that has none. The upper bound (steps <= T) is checked by :meth:`validate`,
            which knows the schedule.
    """

    name: str = "ddpm"
    steps: int = 1000
    eta: float = 0.0
    spacing: str = DEFAULT_SPACING
    steps_offset: int = 0

    def __post_init__(self) -> None:
        info = sampler_info(self.name)
        if not isinstance(self.spacing, str) or self.spacing not in SPACINGS:
            raise SamplingError(f"unknown timestep spacing {self.spacing!r}; choose one of: {', '.join(SPACINGS)}")
        if self.spacing == "linspace" and self.name != "ddim":
            raise SamplingError("the 'linspace' timestep spacing is MONAI's DDIMScheduler's; it applies to 'ddim' only")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise SamplingError(f"steps_offset must be a whole number from 0 (got {self.steps_offset!r})")
        if self.steps_offset and self.spacing == "trailing":
            raise SamplingError("steps_offset applies to the 'leading' and 'linspace' spacings only")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise SamplingError(f"the number of sampling steps must be a whole number, not {self.steps!r}")
        if self.steps < 1:
            raise SamplingError(f"the number of sampling steps must be at least 1 (got {self.steps})")
        if not math.isfinite(float(self.eta)) or self.eta < 0:
            raise SamplingError(f"eta must be 0 or positive (got {self.eta})")
        if self.eta != 0 and not info.has_eta:
            with_eta = ", ".join(repr(n) for n, i in SAMPLERS.items() if i.has_eta)
            raise SamplingError(f"eta applies to the {with_eta} sampler only; the {self.name!r} sampler has none")

    def validate(self, schedule: _Schedule) -> None:
        """Check the settings against the model's schedule.

        Raises:
            SamplingError: when more steps are asked for than the model was trained with.
        """
        if self.steps > schedule.num_train_timesteps:
            raise SamplingError(
                f"{self.steps} sampling steps asked for, but the model was trained with "
                f"{schedule.num_train_timesteps} diffusion steps; use at most {schedule.num_train_timesteps}"
            )
        big_t = schedule.num_train_timesteps
        unshifted = (self.steps - 1) * (big_t // self.steps)
        if self.spacing == "leading" and unshifted + self.steps_offset > big_t - 1:
            raise SamplingError(
                f"steps_offset {self.steps_offset} puts the first of {self.steps} leading timesteps at "
                f"{unshifted + self.steps_offset}, beyond the model's last ({big_t - 1}); "
                f"use an offset of at most {big_t - 1 - unshifted}"
            )
        if self.spacing == "linspace" and self.steps_offset >= big_t:
            raise SamplingError(f"steps_offset must be below {big_t} (got {self.steps_offset})")

    def to_dict(self) -> dict:
        """The settings as a checkpoint stores them: the spacing fields only where they are not
        the default, so that checkpoints of BrainSynth's own models read as they always did."""
        out: dict = {"name": self.name, "steps": self.steps, "eta": self.eta}
        if self.spacing != DEFAULT_SPACING or self.steps_offset:
            out.update(spacing=self.spacing, steps_offset=self.steps_offset)
        return out

    def describe_spacing(self) -> str:
        """The timestep layout in words (with the offset where there is one), for ``info`` and the app."""
        offset = f", steps_offset {self.steps_offset}" if self.steps_offset else ""
        return f"{SPACINGS[self.spacing]}{offset}"
