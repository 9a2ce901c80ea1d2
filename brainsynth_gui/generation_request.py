"""The Generate panel's choices, turned into the engine's request, and the time-left estimate; no Qt."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.generation import GenerationRequest, seeds_from
from engine.sampler_registry import DEFAULT_SAMPLER, sampler_info

if TYPE_CHECKING:
    from engine.checkpoint import Checkpoint


@dataclass(frozen=True)
class GenerationChoices:
    """What the user set in the Generate panel (or on the command line).

    Attributes:
        device: "auto", "cpu", "cuda:N" or "mps".
        precision: "auto", "fp32" or "bf16" (:mod:`engine.precision`).
        sampler: a sampler name of :data:`engine.sampler_registry.SAMPLERS`.
        steps: denoising steps per volume.
        count: number of volumes.
        seed: first seed (volume k gets seed + k), ignored when ``random_seed``.
        random_seed: draw a fresh first seed.
        trajectory_frames: frames of the denoising kept per volume for the timeline (0 = none).
        batch_size: volumes denoised together (only speed and memory change, never the volumes).
        conditions: ``(covariate, value)`` pairs for every volume, for a conditional model;
            a covariate left out (or None) is "any" (its null); empty = the whole population.
        guidance: classifier-free guidance weight (1 = plain conditional, 0 = unconditional).
        allow_extrapolation: accept continuous covariates outside the model's training range
            (refused with the range otherwise; recorded in every volume's provenance).
    """

    device: str = "auto"
    precision: str = "auto"
    sampler: str = DEFAULT_SAMPLER
    steps: int = sampler_info(DEFAULT_SAMPLER).default_steps
    count: int = 1
    seed: int = 0
    random_seed: bool = False
    trajectory_frames: int = 20
    batch_size: int = 1
    conditions: tuple[tuple[str, object], ...] = ()
    guidance: float = 1.0
    allow_extrapolation: bool = False

    def resolve_seeds(self, rng: random.Random | None = None) -> list[int]:
        """One seed per volume; a random first seed is drawn below 2**31 so it is easy to type back."""
        first = (rng or random.SystemRandom()).randrange(2**31) if self.random_seed else self.seed
        return seeds_from(first, self.count)

    def to_request(self, checkpoint: Checkpoint, rng: random.Random | None = None) -> GenerationRequest:
        """The engine's request for ``checkpoint`` (EMA weights when it has them), seeds
        resolved; previews on every step for the live view. Conditions and guidance go to a
        conditional model only (an unconditional one takes none). A latent model decodes every
        preview and kept frame, so it gets at most :data:`LATENT_PREVIEWS` previews and
        :data:`LATENT_MAX_FRAMES` trajectory frames (a 1 mm decode takes minutes on a CPU).

        Raises:
            BrainSynthError: for settings the model or this machine cannot run.
        """
        latent = checkpoint.spec.latent is not None
        steps = self.steps
        return GenerationRequest.for_checkpoint(
            checkpoint,
            seeds=self.resolve_seeds(rng),
            sampler=self.sampler,
            steps=self.steps,
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            trajectory_frames=min(self.trajectory_frames, LATENT_MAX_FRAMES) if latent else self.trajectory_frames,
            preview_every=max(1, math.ceil(steps / LATENT_PREVIEWS)) if latent else 1,
            **self._conditional(checkpoint),
        )

    def _conditional(self, checkpoint: Checkpoint) -> dict:
        if checkpoint.spec.conditions is None:
            return {}
        given = {name: value for name, value in self.conditions if value is not None}
        return {
            "conditions": (given,) if given else (),
            "guidance": float(self.guidance) if given else None,
            "allow_extrapolation": bool(self.allow_extrapolation),
        }


#: Previews and trajectory frames of a latent model (each is decoded) in one run, at most.
LATENT_PREVIEWS = 5
LATENT_MAX_FRAMES = 8


class RemainingTime:
    """Estimates the time left from the progress fraction, ignoring the slow first step.

    The first model call includes warm-up (cuDNN autotuning, memory allocation), so the rate
    is measured from the first progress report on.

    Args:
        clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._t0: float | None = None
        self._f0 = 0.0

    def update(self, fraction: float) -> float | None:
        """Seconds left, or None until there are two reports to measure a rate from."""
        now = self._clock()
        if self._t0 is None:
            self._t0, self._f0 = now, fraction
            return None
        done = fraction - self._f0
        if done <= 0:
            return None
        return max(0.0, (now - self._t0) / done * (1.0 - fraction))


def format_seconds(seconds: float | None) -> str:
    """``"1 h 02 min"``, ``"3 min 05 s"``, ``"12 s"``, or ``"…"`` when unknown."""
    if seconds is None:
        return "…"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
