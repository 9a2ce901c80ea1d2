"""The error raised when a reader study cannot be set up, opened, rated or reported as asked."""

from __future__ import annotations

from engine.errors import BrainSynthError


class StudyError(BrainSynthError):
    """Empty or overlapping case pools, unknown studies or readers, invalid or refused answers,
    missing or changed case files, and study databases that are damaged or too new."""
