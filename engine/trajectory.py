"""A bounded record of the denoising trajectory: a few frames of x_t and predicted x_0.

A full trajectory is too big to keep: 1000 steps of an 84 x 128 x 84 volume in float32 are
1000 * 903,168 voxels * 4 bytes = 3.6 GB for x_t alone. The recorder keeps ``num_frames``
evenly spaced steps (always the first and the last), moves them to the CPU at once so GPU
memory stays flat, stores them in float16 (or another dtype) and optionally averages blocks
of ``downsample^3`` voxels. Memory per sample, in bytes::

    2 (x_t and x_0) * frames * ceil(D/k) * ceil(H/k) * ceil(W/k) * bytes_per_value

i.e. about ``2 * F * voxels * 2 / k^3`` in float16; 50 frames at 84 x 128 x 84 are
2 * 50 * 903,168 * 2 = 181 MB per sample (23 MB with k = 2). :func:`estimated_bytes` gives
the exact figure before generating.

Frames are in model space ([-1, 1], background -1) on the model grid (RAS+), or on a grid
``downsample`` times coarser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import SamplingError
from engine.samplers import SamplingStep


def frame_indices(num_frames: int, total_steps: int) -> tuple[int, ...]:
    """Which step indices to keep: evenly spaced over ``0 .. total_steps-1``.

    Always includes the first and the last step when ``num_frames >= 2``; with one frame only
    the last (the final sample) is kept; with ``num_frames >= total_steps`` every step.

    Args:
        num_frames: frames wanted (0 = none).
        total_steps: steps in the run.

    Returns:
        Sorted, distinct step indices.
    """
    if num_frames < 0 or total_steps < 1:
        raise SamplingError(f"cannot keep {num_frames} frames of {total_steps} steps")
    if num_frames == 0:
        return ()
    if num_frames == 1:
        return (total_steps - 1,)
    if num_frames >= total_steps:
        return tuple(range(total_steps))
    # Spacing >= 1, so rounding (half up) never merges two frames.
    span = total_steps - 1
    return tuple(sorted({(2 * i * span + (num_frames - 1)) // (2 * (num_frames - 1)) for i in range(num_frames)}))


def downsampled_shape(shape: Sequence[int], downsample: int) -> tuple[int, ...]:
    """Grid shape after averaging blocks of ``downsample`` voxels per axis (partial blocks kept)."""
    return tuple(-(-int(n) // downsample) for n in shape)


def estimated_bytes(
    num_frames: int,
    grid_shape: Sequence[int],
    *,
    downsample: int = 1,
    dtype: torch.dtype = torch.float16,
) -> int:
    """Memory a trajectory of one sample takes, in bytes (x_t and predicted x_0 frames).

    Args:
        num_frames: frames kept (as returned by :func:`frame_indices`, so at most the steps).
        grid_shape: the model grid, e.g. (84, 128, 84).
        downsample: integer block size of the average pooling (1 = full resolution).
        dtype: storage dtype.

    Returns:
        ``2 * num_frames * prod(ceil(grid_shape / downsample)) * itemsize``.
    """
    voxels = int(np.prod(downsampled_shape(grid_shape, downsample)))
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_frames * voxels * itemsize


@dataclass
class Trajectory:
    """Kept frames of one sample's denoising run.

    Attributes:
        steps: 0-based step indices of the frames.
        timesteps: the model timestep of each frame (the one evaluated at that step).
        downsample: block size the frames were averaged over (1 = model grid).
        x_t_frames: x_t after each kept step, tensor ``(F, D', H', W')`` on the CPU in the
            storage dtype (``(F, C, D', H', W')`` for a multi-channel model).
        x0_frames: predicted x_0 at each kept step, same layout.
        start: the starting noise x_T the run began from, one frame ``(D', H', W')`` in the same
            storage (None when not recorded), so a timeline can open on pure noise.
    """

    steps: tuple[int, ...]
    timesteps: tuple[int, ...]
    downsample: int
    x_t_frames: torch.Tensor = field(repr=False)
    x0_frames: torch.Tensor = field(repr=False)
    start: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.steps)

    def x_t_array(self) -> np.ndarray:
        """x_t frames as float32 numpy ``(F, D', H', W')``, model space."""
        return self.x_t_frames.float().numpy()

    def x0_array(self) -> np.ndarray:
        """Predicted-x_0 frames as float32 numpy ``(F, D', H', W')``, model space."""
        return self.x0_frames.float().numpy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the frames."""
        start = self.start.numel() * self.start.element_size() if self.start is not None else 0
        return (
            self.x_t_frames.numel() * self.x_t_frames.element_size()
            + self.x0_frames.numel() * self.x0_frames.element_size()
            + start
        )


class TrajectoryRecorder:
    """Collects a bounded number of frames from :func:`engine.samplers.denoise` for a batch.

    Usage::

        recorder = TrajectoryRecorder(20, settings.steps)
        for step in denoise(..., want_frames=recorder.want_frame):
            recorder.add(step)
        trajectories = recorder.trajectories()  # one per sample in the batch

    See the module docstring for the memory bound (:func:`estimated_bytes`).

    Args:
        num_frames: frames to keep per sample (0 keeps none).
        total_steps: steps of the run.
        downsample: integer block size for average pooling before storing (1 = none).
        dtype: storage dtype on the CPU (float16 halves memory; its ~3 significant digits are
            plenty for display in [-1, 1]).
        decode: for a latent model, maps kept latents ``(B, C, *latent)`` to model-space volumes
            ``(B, 1, *grid)`` before they are stored (so frames are on the decoded grid: x_t frames
            are the decoded noisy latents, x_0 frames the decoded predictions); None keeps frames
            as they are. Each kept frame costs two decodes (and the start one).
    """

    def __init__(
        self,
        num_frames: int,
        total_steps: int,
        *,
        downsample: int = 1,
        dtype: torch.dtype = torch.float16,
        decode=None,
    ):
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
            raise SamplingError(f"trajectory downsampling must be a whole number of at least 1 (got {downsample!r})")
        self.frame_indices = frame_indices(num_frames, total_steps)
        self._wanted = frozenset(self.frame_indices)
        self.total_steps = total_steps
        self.downsample = downsample
        self.dtype = dtype
        self._steps: list[int] = []
        self._timesteps: list[int] = []
        self._x_t: list[torch.Tensor] = []  # each (B, C, D', H', W')
        self._x0: list[torch.Tensor] = []
        self._start: torch.Tensor | None = None
        self._decode = decode

    def record_start(self, noise: torch.Tensor) -> None:
        """Keep the starting noise x_T ``(B, C, D, H, W)`` (when any frame is kept at all)."""
        if self.frame_indices:
            self._start = self._compact(noise)

    def want_frame(self, index: int) -> bool:
        """Predicate for ``denoise(want_frames=...)``: is step ``index`` kept?"""
        return index in self._wanted

    def add(self, step: SamplingStep) -> None:
        """Store the step's frames if it is a kept step (others are ignored).

        Raises:
            SamplingError: when a kept step arrives without its frames (the sampler was not
                given :meth:`want_frame`).
        """
        if step.index not in self._wanted:
            return
        if step.x_t is None or step.x0_pred is None:
            raise SamplingError(f"step {step.index} should carry frames; pass want_frames=recorder.want_frame")
        self._steps.append(step.index)
        self._timesteps.append(step.timestep)
        self._x_t.append(self._compact(step.x_t))
        self._x0.append(self._compact(step.x0_pred))

    def _compact(self, x: torch.Tensor) -> torch.Tensor:
        # Pool on the device (cheaper to move k^3 times less), in float32 for an exact mean,
        # then move to the CPU and narrow.
        x = x.detach()
        if self._decode is not None:
            x = self._decode(x)
        if self.downsample > 1:
            k = self.downsample
            # ceil_mode keeps the partial blocks at the far edges; with no padding PyTorch
            # divides those by the voxels actually inside, so each value is a true mean.
            x = F.avg_pool3d(x.float(), kernel_size=k, stride=k, ceil_mode=True)
        return x.to(device="cpu", dtype=self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held so far (whole batch)."""
        start = [self._start] if self._start is not None else []
        return sum(t.numel() * t.element_size() for t in self._x_t + self._x0 + start)

    def trajectories(self) -> list[Trajectory]:
        """One :class:`Trajectory` per sample of the batch (empty list when nothing was kept)."""
        if not self._x_t:
            return []
        x_t = torch.stack(self._x_t, dim=1)  # (B, F, C, D', H', W')
        x0 = torch.stack(self._x0, dim=1)
        out = []
        for k in range(x_t.shape[0]):
            xs, x0s = x_t[k], x0[k]
            start = self._start[k] if self._start is not None else None
            if xs.shape[1] == 1:  # single-channel T1: drop the channel axis
                xs, x0s = xs[:, 0], x0s[:, 0]
                start = start[0] if start is not None else None
            out.append(
                Trajectory(
                    steps=tuple(self._steps),
                    timesteps=tuple(self._timesteps),
                    downsample=self.downsample,
                    x_t_frames=xs.clone(),
                    x0_frames=x0s.clone(),
                    start=start.clone() if start is not None else None,
                )
            )
        return out
