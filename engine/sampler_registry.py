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

    Raises:
        SamplingError: for an unknown name, steps < 1, a negative eta or eta on a sampler
            that has none. The upper bound (steps <= T) is checked by :meth:`validate`,
            which knows the schedule.
    """

    name: str = "ddpm"
    steps: int = 1000
    eta: float = 0.0

    def __post_init__(self) -> None:
        info = sampler_info(self.name)
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
