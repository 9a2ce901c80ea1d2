"""The utility experiment's member of the engine's exception family."""

from __future__ import annotations

from engine.errors import BrainSynthError


class UtilityError(BrainSynthError):
    """The augmentation-utility experiment cannot start: labels, splits, grids or provenance."""
