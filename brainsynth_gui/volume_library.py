"""The volumes a session holds: generated ones and real scans, without Qt.

Display intensities are in standard space (0-1000, background 0), the space of every file
BrainSynth writes, so a value read under the cursor is the value an exported file holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import VolumeError
from engine.generation import GeneratedVolume
from engine.intensity import IntensityMapping
from engine.specs import ModelSpec


def model_to_display(model: np.ndarray, mapping: IntensityMapping) -> np.ndarray:
    """Model space → standard units *without* clipping (float32).

    Unlike ``mapping.model_to_standard`` this keeps values outside [-1, 1], so a noisy x_t
    frame shows its noise honestly; the window decides what is black and white.
    """
    return (np.asarray(model, dtype=np.float32) + np.float32(1.0)) * np.float32(mapping.scale / 2.0)


@dataclass
class SyntheticEntry:
    """A generated volume in the session list.

    Attributes:
        number: 1-based position in the session (also used in export file names).
        volume: the engine's result (model space, trajectory).
        spec: the model spec it was sampled with.
    """

    number: int
    volume: GeneratedVolume
    spec: ModelSpec
    _standard: np.ndarray | None = field(default=None, repr=False)

    @property
    def provenance(self) -> dict:
        """How it was made, as its export sidecar records it."""
        return self.volume.provenance

    @property
    def label(self) -> str:
        p = self.provenance
        frames = len(self.volume.trajectory) if self.volume.trajectory is not None else 0
        return (
            f"#{self.number}  seed {p['seed']}  ·  {p['sampler']} {p['steps']} steps{_spacing(p)}"
            f"  ·  {p['weights']} weights"
            f"  ·  {frames} frames{describe_conditions(p)}"
        )

    @property
    def title(self) -> str:
        p = self.provenance
        return f"#{self.number}, seed {p['seed']} ({p['sampler']}, {p['steps']} steps)"

    def standard(self) -> np.ndarray:
        """The final volume in standard units, as exported: clipped to [0, scale], background exactly 0.

        The background rule is :func:`engine.masking.zero_background`, the one every export and
        every reader-study case passes, so what the viewer shows is what is exported.
        """
        if self._standard is None:
            from engine.masking import zero_background

            mapped = self.spec.intensity.model_to_standard(np.asarray(self.volume.array, dtype=np.float32))
            self._standard, _ = zero_background(np.asarray(mapped, dtype=np.float32), scale=self.spec.intensity.scale)
        return self._standard

    @property
    def has_start(self) -> bool:
        """Whether the timeline opens on the starting noise (frame 0) before the recorded steps."""
        trajectory = self.volume.trajectory
        return trajectory is not None and trajectory.start is not None

    def timeline(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(steps, timesteps) of the timeline's frames: step -1 (timestep T) for the starting noise, then the run's."""
        trajectory = self.volume.trajectory
        if trajectory is None:
            return (), ()
        if not self.has_start:
            return tuple(trajectory.steps), tuple(trajectory.timesteps)
        big_t = int(self.spec.schedule.num_train_timesteps)  # the starting noise sits at t = T
        return (-1, *trajectory.steps), (big_t, *trajectory.timesteps)

    def frame(self, kind: str, index: int) -> np.ndarray:
        """Timeline frame ``index`` of ``kind`` ("x_t" or "x0") in standard units (unclipped).

        With :attr:`has_start`, frame 0 is the starting noise for both kinds (nothing is
        predicted before the first step) and frame ``i`` is recorded step ``i - 1``.
        """
        trajectory = self.volume.trajectory
        if trajectory is None:
            raise ValueError("this volume has no recorded trajectory")
        if self.has_start:
            if index == 0:
                return model_to_display(trajectory.start.float().numpy(), self.spec.intensity)
            index -= 1
        frames = trajectory.x_t_frames if kind == "x_t" else trajectory.x0_frames
        return model_to_display(frames[index].float().numpy(), self.spec.intensity)

    def frame_or_final(self, kind: str, index: int) -> np.ndarray:
        """What the synthetic views show: the final volume at the last x_t frame, else the frame."""
        trajectory = self.volume.trajectory
        if trajectory is None or (kind == "x_t" and index >= len(self.timeline()[0]) - 1):
            return self.standard()
        return self.frame(kind, index)


class SyntheticLibrary:
    """Generated volumes in the order they finished."""

    def __init__(self) -> None:
        self.entries: list[SyntheticEntry] = []
        self._next = 1

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, volume: GeneratedVolume, spec: ModelSpec) -> SyntheticEntry:
        entry = SyntheticEntry(number=self._next, volume=volume, spec=spec)
        self._next += 1
        self.entries.append(entry)
        return entry

    def clear(self) -> None:
        self.entries.clear()


class RealScans:
    """Real scans opened for comparison; each is prepared onto the model grid when first shown.

    Preparing (resampling onto the grid, masking, intensity normalisation) is cached per scan
    and grid; a new checkpoint with another grid prepares again. :meth:`prepared` may run in a
    worker thread: it only adds to the cache.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._cache: dict[tuple[Path, tuple], object] = {}
        #: Scans not in MNI space the user chose to look at as they are, with the reason: view
        #: only, never on the model grid, so never compared, evaluated or put in a study.
        self.view_only: dict[Path, str] = {}

    @property
    def comparable(self) -> list[int]:
        """Indices of the scans that can be compared (all but the view-only ones), in list order."""
        return [i for i, p in enumerate(self.paths) if p not in self.view_only]

    def mark_view_only(self, path: Path, reason: str) -> None:
        """Keep ``path`` (already in the list) as a view-only scan, not in MNI space for ``reason``."""
        if path not in self.paths:
            self.paths.append(path)
        self.view_only[path] = reason

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, paths: Iterable[str | os.PathLike]) -> list[Path]:
        """Add files and folders (expanded to their scans); returns the new paths.

        Raises:
            VolumeError: nothing usable was found in the given folders.
        """
        from engine.volumes import find_volumes

        found = [p for p in find_volumes(paths) if p not in self.paths]
        self.paths.extend(found)
        return found

    def remove(self, index: int) -> None:
        """Forget scan ``index`` (and what was prepared from it)."""
        path = self.paths.pop(index)
        self.view_only.pop(path, None)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != path}

    @staticmethod
    def _key(path: Path, spec: ModelSpec) -> tuple:
        return (path, tuple(spec.grid.shape), tuple(spec.grid.spacing_mm), tuple(spec.grid.origin_mm))

    def cached(self, index: int, spec: ModelSpec):
        """The prepared scan if it is ready, else None (never blocks)."""
        if not 0 <= index < len(self.paths):
            return None
        return self._cache.get(self._key(self.paths[index], spec))

    def prepared(self, index: int, spec: ModelSpec):
        """The scan at ``index`` on ``spec``'s grid in standard units (a PreparedScan).

        Raises:
            VolumeError: the scan cannot be read or is not in MNI space.
        """
        from engine.preprocessing import prepare_scan
        from engine.volumes import load_volume

        if not 0 <= index < len(self.paths):
            raise VolumeError(f"there is no scan number {index + 1}")
        path = self.paths[index]
        key = self._key(path, spec)
        if key not in self._cache:
            self._cache[key] = prepare_scan(load_volume(path), spec)
        return self._cache[key]


def _spacing(provenance: dict) -> str:
    """`` (leading timesteps)`` for a volume sampled on a MONAI layout; nothing for BrainSynth's own
    trailing one (and for records from before the spacing was recorded, which all ran trailing)."""
    spacing = provenance.get("spacing", "trailing")
    return "" if spacing == "trailing" else f" ({spacing} timesteps)"


def describe_conditions(provenance: dict) -> str:
    """``"  ·  age 70, sex F, guidance 2"`` for a conditional volume, ``"  ·  any condition"`` for
    a conditional model's null, ``""`` for an unconditional model (its provenance has none)."""
    if "conditions" not in provenance:
        return ""
    condition = provenance["conditions"] or {}
    if not condition:
        return "  ·  any condition"
    shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in condition.items())
    guidance = provenance.get("guidance")
    return f"  ·  {shown}" + (f", guidance {guidance:g}" if guidance not in (None, 1.0) else "")
