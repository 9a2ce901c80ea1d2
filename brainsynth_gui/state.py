"""The viewer's state in small Qt-free objects (the napari way; see docs/architecture.md, "Layers").

Widgets take these objects in their constructor, subscribe to their changes and write back
through them, never to each other. A window/level drag and the window/level fields therefore
cannot disagree: both only ever show what :class:`WindowLevelState` holds.

Every object here is plain Python (numpy at most) so it is unit-tested without Qt.
Observers are called synchronously, in subscription order, only when a value really changes.

Geometry follows docs/architecture.md: voxel indices are on the model grid, RAS+ (axis 0 left→right,
axis 1 posterior→anterior, axis 2 inferior→superior); millimetres are MNI152 world
coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.geometry import GridGeometry

Callback = Callable[[], None]


class Observable:
    """A minimal observer list: ``subscribe(callback)`` and ``_notify()`` after each change."""

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []

    def subscribe(self, callback: Callback) -> Callback:
        """Call ``callback()`` after every change; returns it so it can be unsubscribed."""
        self._callbacks.append(callback)
        return callback

    def unsubscribe(self, callback: Callback) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _notify(self) -> None:
        # Copy: a callback may subscribe or unsubscribe while we iterate.
        for callback in list(self._callbacks):
            callback()


class CursorState(Observable):
    """The linked crosshair: one voxel of the model grid, and its MNI position in mm.

    Args:
        grid: the model grid (shape, spacing, origin; RAS+).
    """

    def __init__(self, grid: GridGeometry) -> None:
        super().__init__()
        self._grid = grid
        self._voxel = self._centre(grid)

    @staticmethod
    def _centre(grid: GridGeometry) -> tuple[int, int, int]:
        return tuple(int(n) // 2 for n in grid.shape)  # type: ignore[return-value]

    @property
    def grid(self) -> GridGeometry:
        return self._grid

    @property
    def voxel(self) -> tuple[int, int, int]:
        """Voxel index (i, j, k) on the model grid, RAS+."""
        return self._voxel

    @property
    def mm(self) -> np.ndarray:
        """World position of the voxel centre (mm, MNI152 RAS)."""
        return self._grid.voxel_to_mm(self._voxel)

    def set_grid(self, grid: GridGeometry) -> None:
        """Switch to another grid (a new checkpoint), keeping the same mm position if possible."""
        if grid == self._grid:
            return
        mm = self.mm
        self._grid = grid
        self._voxel = self._clip(np.rint(grid.mm_to_voxel(mm)))
        self._notify()

    def _clip(self, ijk: Sequence[float]) -> tuple[int, int, int]:
        return tuple(int(min(max(int(v), 0), n - 1)) for v, n in zip(ijk, self._grid.shape, strict=True))  # type: ignore[return-value]

    def set_voxel(self, ijk: Sequence[float]) -> None:
        """Move to voxel ``ijk`` (rounded and clipped to the grid)."""
        new = self._clip(np.rint(np.asarray(ijk, dtype=float)))
        if new != self._voxel:
            self._voxel = new
            self._notify()

    def set_mm(self, xyz: Sequence[float]) -> None:
        """Move to the voxel nearest to world position ``xyz`` (mm)."""
        self.set_voxel(self._grid.mm_to_voxel(xyz))

    def set_axis(self, axis: int, index: float) -> None:
        """Set one voxel coordinate (a slice), leaving the other two."""
        ijk = list(self._voxel)
        ijk[axis] = index
        self.set_voxel(ijk)

    def step(self, axis: int, delta: int) -> None:
        """Move ``delta`` voxels along ``axis`` (slice stepping), stopping at the grid's edge."""
        self.set_axis(axis, self._voxel[axis] + delta)


class WindowLevelState(Observable):
    """Display window (width) and level (centre), in standard intensity units (0-1000).

    ``low = level - window / 2`` shows black and ``high = level + window / 2`` white.

    Args:
        window: initial width (> 0).
        level: initial centre.
    """

    MIN_WINDOW = 1.0

    def __init__(self, window: float = 1000.0, level: float = 500.0) -> None:
        super().__init__()
        self._window = max(float(window), self.MIN_WINDOW)
        self._level = float(level)

    @property
    def window(self) -> float:
        return self._window

    @property
    def level(self) -> float:
        return self._level

    @property
    def low(self) -> float:
        return self._level - self._window / 2

    @property
    def high(self) -> float:
        return self._level + self._window / 2

    def set(self, *, window: float | None = None, level: float | None = None) -> None:
        """Change the window and/or level; the window never goes below :attr:`MIN_WINDOW`."""
        new_window = self._window if window is None else max(float(window), self.MIN_WINDOW)
        new_level = self._level if level is None else float(level)
        if not (math.isfinite(new_window) and math.isfinite(new_level)):
            return
        if (new_window, new_level) != (self._window, self._level):
            self._window, self._level = new_window, new_level
            self._notify()

    def set_range(self, low: float, high: float) -> None:
        """Show ``low`` as black and ``high`` as white."""
        self.set(window=high - low, level=(low + high) / 2)

    def drag(self, start: tuple[float, float], dx_px: float, dy_px: float, *, scale: float = 2.0) -> None:
        """Apply a right-button drag that began at window/level ``start``.

        Dragging right widens the window (less contrast); dragging up lowers the level
        (brighter), as in ITK-SNAP and most PACS viewers.

        Args:
            start: (window, level) when the drag began.
            dx_px: horizontal mouse travel in screen pixels (right positive).
            dy_px: vertical mouse travel in screen pixels (down positive).
            scale: intensity units per pixel.
        """
        window0, level0 = start
        self.set(window=window0 + dx_px * scale, level=level0 + dy_px * scale)


class OrientationState(Observable):
    """Radiological (patient's right on screen left, the default) or neurological convention."""

    def __init__(self, radiological: bool = True) -> None:
        super().__init__()
        self._radiological = bool(radiological)

    @property
    def radiological(self) -> bool:
        return self._radiological

    @property
    def name(self) -> str:
        return "radiological" if self._radiological else "neurological"

    def set_radiological(self, value: bool) -> None:
        if bool(value) != self._radiological:
            self._radiological = bool(value)
            self._notify()


class ZoomState(Observable):
    """Zoom factor and pan centre shared by every view, so they stay linked.

    Args:
        grid: the model grid; the pan centre starts at its middle.
    """

    MIN_FACTOR = 0.5
    MAX_FACTOR = 16.0

    def __init__(self, grid: GridGeometry) -> None:
        super().__init__()
        self._grid = grid
        self._factor = 1.0
        self._centre = self._grid_centre(grid)

    @staticmethod
    def _grid_centre(grid: GridGeometry) -> np.ndarray:
        return grid.voxel_to_mm((np.asarray(grid.shape, dtype=float) - 1) / 2)

    @property
    def factor(self) -> float:
        """1 fits the whole grid in each view; 2 shows half of it, twice as large."""
        return self._factor

    @property
    def centre_mm(self) -> np.ndarray:
        """World position (mm) at the middle of each view."""
        return self._centre.copy()

    def set_grid(self, grid: GridGeometry) -> None:
        self._grid = grid
        self.reset()

    def reset(self) -> None:
        """Fit the whole grid, centred."""
        self._factor = 1.0
        self._centre = self._grid_centre(self._grid)
        self._notify()

    def zoom_by(self, ratio: float) -> None:
        """Multiply the zoom factor by ``ratio`` (clamped to MIN_FACTOR..MAX_FACTOR)."""
        factor = min(max(self._factor * float(ratio), self.MIN_FACTOR), self.MAX_FACTOR)
        if factor != self._factor:
            self._factor = factor
            self._notify()

    def pan_by(self, delta_mm: Sequence[float]) -> None:
        """Move the centre by ``delta_mm`` (x, y, z) millimetres."""
        delta = np.asarray(delta_mm, dtype=float)
        if np.any(delta != 0):
            self._centre = self._centre + delta
            self._notify()


class TrajectoryState(Observable):
    """The denoising timeline: recorded frames, the one shown, x_t or predicted x_0, playback.

    Frame ``i`` is the state after sampling step ``steps[i]`` (0-based), evaluated at model
    timestep ``timesteps[i]``. With no frames recorded the timeline is empty and the final
    volume is shown.
    """

    KINDS = ("x_t", "x0")
    MIN_FPS = 1.0
    MAX_FPS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.steps: tuple[int, ...] = ()
        self.timesteps: tuple[int, ...] = ()
        self.total_steps = 0
        self._index = 0
        self._kind = "x_t"
        self._playing = False
        self._fps = 8.0

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def index(self) -> int:
        return self._index

    @property
    def kind(self) -> str:
        """``"x_t"`` (the noisy sample) or ``"x0"`` (the network's prediction of the clean volume)."""
        return self._kind

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def at_end(self) -> bool:
        """Whether the last frame (the finished sample, for x_t) is shown."""
        return not self.steps or self._index == len(self.steps) - 1

    def set_frames(self, steps: Sequence[int], timesteps: Sequence[int], *, total_steps: int) -> None:
        """Load a new volume's frames; shows the last one (the finished sample) and stops playback."""
        self.steps = tuple(int(s) for s in steps)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.total_steps = int(total_steps)
        self._index = max(len(self.steps) - 1, 0)
        self._playing = False
        self._notify()

    def clear(self) -> None:
        self.set_frames((), (), total_steps=0)

    def set_index(self, index: int) -> None:
        """Show frame ``index`` (clamped to the recorded frames)."""
        new = min(max(int(index), 0), max(len(self.steps) - 1, 0))
        if new != self._index:
            self._index = new
            self._notify()

    def step_by(self, delta: int) -> None:
        self.set_index(self._index + delta)

    def advance(self) -> None:
        """The next frame for playback, wrapping from the last back to the first."""
        if len(self.steps) > 1:
            self.set_index((self._index + 1) % len(self.steps))

    def set_kind(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, not {kind!r}")
        if kind != self._kind:
            self._kind = kind
            self._notify()

    def set_playing(self, playing: bool) -> None:
        """Start or stop playback; needs at least two frames."""
        playing = bool(playing) and len(self.steps) > 1
        if playing != self._playing:
            self._playing = playing
            self._notify()

    def toggle_playing(self) -> None:
        self.set_playing(not self._playing)

    def set_fps(self, fps: float) -> None:
        fps = min(max(float(fps), self.MIN_FPS), self.MAX_FPS)
        if fps != self._fps:
            self._fps = fps
            self._notify()

    def label(self) -> str:
        """E.g. ``"frame 4 of 11 · step 12/50 (t = 779), predicted x0"``; empty without frames.

        Step -1 is the starting noise x_T (``"frame 1 of 11 · starting noise (t = 1000)"``); the
        last x_t frame is the final sample.
        """
        if not self.steps:
            return ""
        frame = f"frame {self._index + 1} of {len(self.steps)}"
        step, t = self.steps[self._index], self.timesteps[self._index]
        if step < 0:
            return f"{frame} · starting noise (t = {t})"
        what = "predicted x0" if self._kind == "x0" else "x_t"
        if self.at_end and self._kind == "x_t":
            what = "final sample"
        return f"{frame} · step {step + 1}/{self.total_steps} (t = {t}), {what}"


COMPARE_MODES = ("side-by-side", "overlay", "synthetic only")


class DisplayState(Observable):
    """Colour map and how the real scan is compared with the synthetic volume."""

    def __init__(self, colormap: str = "gray") -> None:
        super().__init__()
        self._colormap = colormap
        self._compare = COMPARE_MODES[0]
        self._opacity = 0.5

    @property
    def colormap(self) -> str:
        return self._colormap

    @property
    def compare(self) -> str:
        """One of :data:`COMPARE_MODES`."""
        return self._compare

    @property
    def overlay_opacity(self) -> float:
        """Opacity of the real scan drawn over the synthetic volume, 0..1."""
        return self._opacity

    def set_colormap(self, name: str) -> None:
        if name != self._colormap:
            self._colormap = name
            self._notify()

    def set_compare(self, mode: str) -> None:
        if mode not in COMPARE_MODES:
            raise ValueError(f"compare mode must be one of {COMPARE_MODES}, not {mode!r}")
        if mode != self._compare:
            self._compare = mode
            self._notify()

    def set_overlay_opacity(self, value: float) -> None:
        value = min(max(float(value), 0.0), 1.0)
        if value != self._opacity:
            self._opacity = value
            self._notify()


class ImageLayer(Observable):
    """One displayed volume: an array on the model grid (standard units) and a title.

    In the main window the "synthetic" layer shows the selected volume, a trajectory frame or
    the live preview, and the "real" layer the selected real scan; review mode has one layer,
    "case". ``data`` is None when there is nothing.
    """

    def __init__(self, name: str, *, colormap: str | None = None) -> None:
        super().__init__()
        self.name = name
        self._data: np.ndarray | None = None
        self._title = ""
        self._colormap = colormap
        self._threshold: float | None = None

    @property
    def colormap(self) -> str | None:
        """This layer's own colour map when drawn as an overlay; None for the display's."""
        return self._colormap

    @property
    def threshold(self) -> float | None:
        """As an overlay, voxels below this value (standard units) are transparent; None draws all."""
        return self._threshold

    def set_colormap(self, name: str | None) -> None:
        if name != self._colormap:
            self._colormap = name
            self._notify()

    def set_threshold(self, value: float | None) -> None:
        value = None if value is None else float(value)
        if value != self._threshold:
            self._threshold = value
            self._notify()

    @property
    def data(self) -> np.ndarray | None:
        return self._data

    @property
    def title(self) -> str:
        return self._title

    def set(self, data: np.ndarray | None, title: str = "") -> None:
        """Show ``data`` (float32, RAS+, model grid) under ``title``; always notifies."""
        self._data = data
        self._title = title
        self._notify()

    def value_at(self, voxel: Sequence[int]) -> float | None:
        """Intensity at a voxel, or None when empty or off the array."""
        if self._data is None:
            return None
        idx = tuple(int(v) for v in voxel)
        if any(not 0 <= v < n for v, n in zip(idx, self._data.shape, strict=True)):
            return None
        return float(self._data[idx])


#: The main window's layers: the generated volume (with the real scan as its overlay) and the real scan.
MAIN_LAYERS = ("synthetic", "real")


@dataclass
class ViewerState:
    """Everything the views share, created together for one grid.

    Attributes:
        layers: the displayed volumes by name, in display order (any number; names reach view
            hints and the cursor readout).
    """

    cursor: CursorState
    window_level: WindowLevelState
    orientation: OrientationState
    zoom: ZoomState
    trajectory: TrajectoryState
    display: DisplayState
    layers: dict[str, ImageLayer]

    @classmethod
    def for_grid(cls, grid: GridGeometry, *, layer_names: Sequence[str] = MAIN_LAYERS) -> ViewerState:
        """Fresh state on ``grid`` with one empty layer per name (at least one, no repeats)."""
        names = tuple(layer_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"layer names must be one or more distinct names, not {names!r}")
        return cls(
            cursor=CursorState(grid),
            window_level=WindowLevelState(),
            orientation=OrientationState(),
            zoom=ZoomState(grid),
            trajectory=TrajectoryState(),
            display=DisplayState(),
            # The real scan, drawn over the synthetic volume, gets a colour map of its own (FSLeyes
            # and ITK-SNAP give overlays one), so the two are not grey on grey.
            layers={name: ImageLayer(name, colormap="hot" if name == "real" else None) for name in names},
        )

    def layer(self, name: str) -> ImageLayer:
        """The layer called ``name``."""
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no layer {name!r}; this state has {', '.join(self.layers)}") from None

    def set_grid(self, grid: GridGeometry) -> None:
        self.cursor.set_grid(grid)
        self.zoom.set_grid(grid)

    def visible_layers(self) -> list[ImageLayer]:
        """The layers on screen: all but the real scan when the compare mode is "synthetic only"."""
        hidden = {"real"} if self.display.compare == "synthetic only" else set()
        return [layer for name, layer in self.layers.items() if name not in hidden]

    def readout(self) -> str:
        """Cursor readout: voxel index (0-based, as the slice captions), MNI mm and the value of each visible layer.

        A layer hidden from the screen (the real scan in "synthetic only") is left out: its
        value would tell what is hidden.
        """
        i, j, k = self.cursor.voxel
        x, y, z = self.cursor.mm
        parts = [f"voxel [{i}, {j}, {k}]", f"MNI ({x:+.1f}, {y:+.1f}, {z:+.1f}) mm"]
        for layer in self.visible_layers():
            value = layer.value_at(self.cursor.voxel)
            if value is not None:
                parts.append(f"{layer.name} {value:.0f}")
        return "   ".join(parts)
