"""Errors of the raw-scan pipeline, in the :class:`engine.errors.BrainSynthError` family."""

from __future__ import annotations

from engine.errors import BrainSynthError, VolumeError

INSTALL_HINT = "pip install 'brainsynth[preprocess]' (antspyx and deepbet)"


class PreprocessError(VolumeError):
    """A raw scan cannot be preprocessed: the message says why and what to do."""


class MissingDependencyError(BrainSynthError):
    """An optional library the pipeline needs is not installed."""


def missing(library: str, purpose: str) -> MissingDependencyError:
    """The one-line error for a missing optional library, with the install hint."""
    return MissingDependencyError(f"{purpose} needs {library}, which is not installed: {INSTALL_HINT}")
