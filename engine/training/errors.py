"""The training-specific member of the engine's exception family."""

from __future__ import annotations

from engine.errors import BrainSynthError


class TrainingError(BrainSynthError):
    """Training cannot start or must stop: bad config, unusable data, diverged loss."""
