"""A lightbox: a grid of axial slices of one volume, over the shared viewer state.

Like the orthogonal views it only reads the state (window/level, orientation, colour map, the
cursor) and writes back through it: clicking a tile moves the cursor to that slice, so the
orthogonal views open where the reader last looked. Slices are spread evenly over the axial
extent of the brain (voxels above 0, the background of the standard space), so no tile is
empty air.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSizePolicy

from brainsynth_gui.rendering import PLANES, colormap_lut, oriented_slice
from brainsynth_gui.slice_view import LETTER_STYLE
from brainsynth_gui.state import ImageLayer, ViewerState

AXIAL = PLANES["axial"]
HIGHLIGHT = (255, 200, 60, 200)
GAP_VALUE = -1.0e6


def lightbox_slices(data: np.ndarray, count: int) -> list[int]:
    """``count`` axial slice indices spread evenly over the slices that contain brain (any voxel > 0).

    Falls back to the whole axis for an empty volume; fewer indices when the axis is shorter.
    """
    n = data.shape[AXIAL.normal]
    filled = np.flatnonzero(np.asarray(data > 0).any(axis=(0, 1)))
    lo, hi = (int(filled[0]), int(filled[-1])) if filled.size else (0, n - 1)
    # Trim a sliver at each end: the first and last brain slices hold a few voxels only.
    margin = (hi - lo) // (2 * count) if hi - lo >= 2 * count else 0
    picks = np.linspace(lo + margin, hi - margin, count).round().astype(int)
    return sorted({int(k) for k in picks})


def mosaic(data: np.ndarray, slices: list[int], *, columns: int, radiological: bool, fill: float) -> np.ndarray:
    """Axial slices tiled row by row from the top left, in pyqtgraph's column-major order.

    Returns:
        ``(columns * nx + gaps, rows * ny + gaps)`` array (screen x, screen y up), one voxel of
        ``fill`` between tiles.
    """
    nx, ny = data.shape[AXIAL.horizontal], data.shape[AXIAL.vertical]
    rows = -(-len(slices) // columns)
    out = np.full((columns * (nx + 1) - 1, rows * (ny + 1) - 1), fill, dtype=np.float32)
    for t, k in enumerate(slices):
        r, c = divmod(t, columns)
        x0 = c * (nx + 1)
        y0 = (rows - 1 - r) * (ny + 1)
        out[x0 : x0 + nx, y0 : y0 + ny] = oriented_slice(data, AXIAL, k, radiological=radiological)
    return out


class _LightboxViewBox(pg.ViewBox):
    def __init__(self, view: LightboxView) -> None:
        super().__init__(lockAspect=True, enableMenu=False, invertY=False, defaultPadding=0.01)
        self.setMouseEnabled(x=False, y=False)
        self._view = view

    def mouseClickEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            point = self.mapToView(ev.pos())
            self._view.click_at(point.x(), point.y())
        else:
            ev.ignore()

    def mouseDragEvent(self, ev, axis=None) -> None:
        ev.ignore()

    def wheelEvent(self, ev, axis=None) -> None:
        ev.ignore()


class LightboxView(pg.GraphicsView):
    """A grid of ``count`` axial slices of ``layer`` (``columns`` per row).

    Args:
        state: the shared viewer state (window/level, orientation, colour map, cursor).
        layer: the volume shown.
        count: number of slices.
        columns: tiles per row.
    """

    def __init__(self, state: ViewerState, layer: ImageLayer, *, count: int = 12, columns: int = 4) -> None:
        super().__init__(background="k")
        self.state = state
        self.layer = layer
        self.count = count
        self.columns = columns
        self.slices: list[int] = []
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.viewbox = _LightboxViewBox(self)
        self.setCentralItem(self.viewbox)
        self.image = pg.ImageItem(axisOrder="col-major")
        self.viewbox.addItem(self.image)
        self.frame = pg.QtWidgets.QGraphicsRectItem()
        self.frame.setPen(pg.mkPen(HIGHLIGHT, width=2, cosmetic=True))
        self.frame.setZValue(2)
        self.viewbox.addItem(self.frame, ignoreBounds=True)
        self.labels: list[pg.TextItem] = []
        self.orientation_hint = QLabel(self)
        self.orientation_hint.setStyleSheet(LETTER_STYLE)
        self.orientation_hint.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        for observable in (state.orientation, state.display, layer):
            observable.subscribe(self.refresh)
        state.window_level.subscribe(self._refresh_levels)
        state.cursor.subscribe(self._refresh_frame)
        self.refresh()

    def _tile_mm(self) -> tuple[float, float]:
        grid = self.state.cursor.grid
        return grid.spacing_mm[AXIAL.horizontal], grid.spacing_mm[AXIAL.vertical]

    def _tile_origin(self, t: int) -> tuple[float, float]:
        """Scene position (mm from the mosaic's bottom left) of tile ``t``'s bottom-left corner."""
        data = self.layer.data
        nx, ny = data.shape[AXIAL.horizontal], data.shape[AXIAL.vertical]
        sx, sy = self._tile_mm()
        rows = -(-len(self.slices) // self.columns)
        r, c = divmod(t, self.columns)
        return c * (nx + 1) * sx, (rows - 1 - r) * (ny + 1) * sy

    def refresh(self) -> None:
        data = self.layer.data
        for label in self.labels:
            self.viewbox.removeItem(label)
        self.labels = []
        if data is None or data.ndim != 3:
            self.slices = []
            self.image.setVisible(False)
            self.frame.setVisible(False)
            return
        letters = AXIAL.edge_letters(self.state.orientation.radiological)
        self.orientation_hint.setText(f"{letters['left']} ◀  axial, {letters['top']} up  ▶ {letters['right']}")
        self.orientation_hint.adjustSize()
        self.orientation_hint.move(4, 4)
        self.slices = lightbox_slices(data, self.count)
        wl = self.state.window_level
        # Gaps far below any window: always the colour map's darkest colour.
        radiological = self.state.orientation.radiological
        tiles = mosaic(data, self.slices, columns=self.columns, radiological=radiological, fill=GAP_VALUE)
        sx, sy = self._tile_mm()
        self.image.setImage(
            tiles, autoLevels=False, levels=(wl.low, wl.high), lut=colormap_lut(self.state.display.colormap)
        )
        self.image.setRect(0.0, 0.0, tiles.shape[0] * sx, tiles.shape[1] * sy)
        self.image.setVisible(True)
        grid = self.state.cursor.grid
        ny = data.shape[AXIAL.vertical]
        for t, k in enumerate(self.slices):
            x, y = self._tile_origin(t)
            z = float(grid.voxel_to_mm((0, 0, k))[2])
            label = pg.TextItem(f"z {z:+.0f}", color=(230, 230, 230), anchor=(0, 0))
            label.setPos(x + sx, y + ny * sy)
            self.viewbox.addItem(label, ignoreBounds=True)
            self.labels.append(label)
        self.viewbox.autoRange(padding=0.01)
        self._refresh_frame()

    def _refresh_levels(self) -> None:
        if self.image.image is not None:
            self.image.setLevels((self.state.window_level.low, self.state.window_level.high))

    def _refresh_frame(self) -> None:
        k = self.state.cursor.voxel[AXIAL.normal]
        data = self.layer.data
        if data is None or k not in self.slices:
            self.frame.setVisible(False)
            return
        sx, sy = self._tile_mm()
        x, y = self._tile_origin(self.slices.index(k))
        self.frame.setRect(x, y, data.shape[AXIAL.horizontal] * sx, data.shape[AXIAL.vertical] * sy)
        self.frame.setVisible(True)

    def tile_at(self, x: float, y: float) -> int | None:
        """The axial slice index of the tile under scene point (x, y) mm, or None between tiles."""
        data = self.layer.data
        if data is None:
            return None
        sx, sy = self._tile_mm()
        nx, ny = data.shape[AXIAL.horizontal], data.shape[AXIAL.vertical]
        for t, k in enumerate(self.slices):
            x0, y0 = self._tile_origin(t)
            if x0 <= x < x0 + nx * sx and y0 <= y < y0 + ny * sy:
                return k
        return None

    def click_at(self, x: float, y: float) -> None:
        """Move the cursor to the slice of the tile clicked."""
        k = self.tile_at(x, y)
        if k is not None:
            self.state.cursor.set_axis(AXIAL.normal, k)
