"""The error raised when an evaluation cannot be run as asked."""

from __future__ import annotations

from engine.errors import BrainSynthError


class EvaluationError(BrainSynthError):
    """Sets that cannot be compared (empty, one volume where pairs are needed, shapes that differ),
    unusable feature-network weights, or output that would overwrite an earlier report."""
