"""Frames of the denoising animation, rendered like the views (Qt-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainsynth_gui.rendering import PLANE_ORDER, compose_views
from brainsynth_gui.volume_library import SyntheticEntry

VIEW_CHOICES: tuple[str, ...] = (*PLANE_ORDER, "all three")


@dataclass(frozen=True)
class AnimationOptions:
    """What the user chose in the animation export dialog.

    Attributes:
        view: "axial", "coronal", "sagittal" or "all three" (side by side).
        voxel: the cursor; a single view shows the slice through it, along its normal.
        kind: "x_t" (the noisy sample) or "x0" (predicted clean volume).
        fps: frames per second.
        hold_seconds: how long the last frame (the finished volume) stays before looping.
        mm_per_pixel: output resolution.
    """

    view: str = "all three"
    voxel: tuple[int, int, int] = (0, 0, 0)
    kind: str = "x0"
    fps: float = 8.0
    hold_seconds: float = 1.0
    mm_per_pixel: float = 1.0

    @property
    def planes(self) -> tuple[str, ...]:
        return PLANE_ORDER if self.view == "all three" else (self.view,)


def frame_caption(entry: SyntheticEntry, index: int, kind: str) -> str:
    """``"seed 42 · step 12/50 (t = 779) · predicted x0"`` for timeline frame ``index``.

    The first frame (with a recorded start) is ``"seed 42 · starting noise (t = 1000)"``.
    """
    steps, timesteps = entry.timeline()
    step, t = steps[index], timesteps[index]
    if step < 0:
        return f"seed {entry.volume.seed} · starting noise (t = {t})"
    what = "predicted x0" if kind == "x0" else "x_t"
    return f"seed {entry.volume.seed} · step {step + 1}/{entry.volume.settings.steps} (t = {t}) · {what}"


def animation_frames(
    entry: SyntheticEntry,
    options: AnimationOptions,
    *,
    radiological: bool,
    low: float,
    high: float,
    colormap: str,
) -> list[np.ndarray]:
    """RGB frames (``(H, W, 3)`` uint8) of ``entry``'s recorded denoising, with step captions.

    Raises:
        ValueError: the volume has no recorded trajectory.
    """
    trajectory = entry.volume.trajectory
    if trajectory is None or len(trajectory) == 0:
        raise ValueError("this volume has no recorded denoising; generate with trajectory frames above 0")
    frames: list[np.ndarray] = []
    for index in range(len(entry.timeline()[0])):
        frames.append(
            compose_views(
                entry.frame(options.kind, index),
                options.planes,
                voxel=options.voxel,
                spacing_mm=entry.spec.grid.spacing_mm,
                radiological=radiological,
                low=low,
                high=high,
                colormap=colormap,
                caption=frame_caption(entry, index, options.kind),
                mm_per_pixel=options.mm_per_pixel,
            )
        )
    return frames
