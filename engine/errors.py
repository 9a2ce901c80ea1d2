"""One exception family for failures a user can act on.

Front ends catch :class:`BrainSynthError` and show its message as is (one line on
stderr for the CLI, a dialog for the GUI). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BrainSynthError(Exception):
    """A failure caused by the user's input or environment, with an actionable message."""


class VolumeError(BrainSynthError):
    """A scan cannot be read or is not a usable 3-D T1 volume."""


class NotInMNISpaceError(VolumeError):
    """A scan is not registered to MNI space: it must be preprocessed before it can be compared."""


class CheckpointError(BrainSynthError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model spec."""


class ExportError(BrainSynthError):
    """An export would overwrite data or cannot be written."""


class TargetExistsError(ExportError):
    """A file to be written exists already (and replacing it was not asked for)."""


class SamplingError(BrainSynthError):
    """Sampling was asked for with impossible settings (steps, device, sampler)."""


class DeviceError(SamplingError):
    """The compute device asked for is unknown or not on this machine ("cuda" without a GPU).

    A :class:`SamplingError` too, because sampling is where most device choices are made;
    other callers (evaluation, training) catch this type to re-word it for their command.
    """


class CancelledError(BrainSynthError):
    """The user cancelled a long-running operation."""


class WriteError(ExportError):
    """A file cannot be written: the disk is full, the folder is read-only or not ours.

    An :class:`ExportError` too, so that callers that handle export failures handle these.
    """
