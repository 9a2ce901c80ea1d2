"""One orthogonal view (axial, coronal or sagittal): a thin pyqtgraph view over the shared state.

Mouse (as in ITK-SNAP and FSLeyes):

* left click or drag: move the crosshair (all views follow);
* wheel: step through slices; Ctrl+wheel: zoom (all views);
* right drag: window/level (right = wider window, up = brighter);
* middle drag (or Shift+left drag): pan (all views).

Keys while the view has focus (as in FSLeyes and ITK-SNAP): Left/Right and Up/Down move the
cursor one voxel within the slice, in the direction the arrow points on the screen; Page Up /
Page Down go one slice up or down (Shift: five). The wheel steps the slices of the view under
the mouse, whichever view has the keyboard.

Slice captions count from 0, like the voxel readout in the status bar and NIfTI voxel indices.

Scene coordinates are millimetres: x is ``sign * mm`` along the view's horizontal axis (see
:meth:`brainsynth_gui.rendering.Plane.horizontal_sign`), y is mm along its vertical axis, so
linked zoom and pan are exact between views and between the synthetic and the real row.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtWidgets import QLabel, QSizePolicy

from brainsynth_gui.rendering import PLANES, colormap_lut, colourise, oriented_slice, slice_rect_mm
from brainsynth_gui.state import ImageLayer, ViewerState

CROSSHAIR_COLOUR = (60, 220, 90, 170)
# A translucent dark backing keeps the text readable over bright tissue in any colour map.
LETTER_STYLE = "color: #ffc83c; font-weight: bold; font-size: 13px; background: rgba(0, 0, 0, 150); padding: 0 2px;"
INFO_STYLE = "color: #e6e6e6; font-size: 11px; background: rgba(0, 0, 0, 150); padding: 0 2px;"
WHEEL_ZOOM_STEP = 1.15
PAGE_STEP = 5


class _SliceViewBox(pg.ViewBox):
    """A ViewBox whose mouse gestures write to the shared state instead of moving the camera."""

    def __init__(self, view: SliceView) -> None:
        super().__init__(lockAspect=True, enableMenu=False, invertY=False, defaultPadding=0.0)
        self.setMouseEnabled(x=False, y=False)
        self._view = view
        self._wl_start: tuple[float, float] | None = None

    def mouseClickEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self._view.move_cursor_to(self.mapToView(ev.pos()))
        else:
            ev.ignore()

    def mouseDragEvent(self, ev, axis=None) -> None:
        button = ev.button()
        pan = button == Qt.MouseButton.MiddleButton or (
            button == Qt.MouseButton.LeftButton and ev.modifiers() & Qt.KeyboardModifier.ShiftModifier
        )
        ev.accept()
        if pan:
            delta = self.mapToView(ev.lastPos()) - self.mapToView(ev.pos())
            self._view.pan_scene(delta.x(), delta.y())
        elif button == Qt.MouseButton.LeftButton:
            self._view.move_cursor_to(self.mapToView(ev.pos()))
        elif button == Qt.MouseButton.RightButton:
            wl = self._view.state.window_level
            if ev.isStart() or self._wl_start is None:
                self._wl_start = (wl.window, wl.level)
            travel = ev.screenPos() - ev.buttonDownScreenPos()
            wl.drag(self._wl_start, travel.x(), travel.y())
            if ev.isFinish():
                self._wl_start = None

    def wheelEvent(self, ev, axis=None) -> None:
        ev.accept()
        delta = ev.delta()
        if not delta:
            return
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self._view.state.zoom.zoom_by(WHEEL_ZOOM_STEP ** (delta / 120))
        else:
            self._view.step_slice(1 if delta > 0 else -1)


class SliceView(pg.GraphicsView):
    """One plane of one layer, with crosshair, orientation letters and slice information.

    Args:
        plane: "axial", "coronal" or "sagittal".
        state: the shared viewer state (cursor, window/level, orientation, zoom, display).
        layer: the volume shown.
        overlay: a second volume drawn on top when the display's compare mode is "overlay".
        empty_text: what the view says while ``layer`` has no data (default: a hint to generate
            a volume or open a scan, by the layer's name).
    """

    def __init__(
        self,
        plane: str,
        state: ViewerState,
        layer: ImageLayer,
        overlay: ImageLayer | None = None,
        *,
        empty_text: str | None = None,
    ) -> None:
        super().__init__(background="k")
        self.empty_text = empty_text
        self.plane = PLANES[plane]
        self.state = state
        self.layer = layer
        self.overlay_layer = overlay
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        self.viewbox = _SliceViewBox(self)
        self.setCentralItem(self.viewbox)
        self.image = pg.ImageItem(axisOrder="col-major")
        self.overlay = pg.ImageItem(axisOrder="col-major")
        self.overlay.setZValue(1)
        pen = pg.mkPen(CROSSHAIR_COLOUR, width=1)
        self.v_line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.h_line = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for item in (self.image, self.overlay, self.v_line, self.h_line):
            self.viewbox.addItem(item, ignoreBounds=item in (self.v_line, self.h_line))
        self.v_line.setZValue(2)
        self.h_line.setZValue(2)

        self.letters = {edge: self._label(LETTER_STYLE) for edge in ("left", "right", "top", "bottom")}
        self.title = self._label(INFO_STYLE)
        self.slice_info = self._label(INFO_STYLE)
        self.empty_hint = self._label("color: #8a8a8a; font-size: 12px; background: transparent;")
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)

        state.cursor.subscribe(self.refresh)
        state.window_level.subscribe(self._refresh_levels)
        state.orientation.subscribe(self.refresh)
        state.zoom.subscribe(self._refresh_range)
        state.display.subscribe(self.refresh)
        layer.subscribe(self.refresh)
        if overlay is not None:
            overlay.subscribe(self.refresh)
        self.refresh()

    # -- layout ---------------------------------------------------------------------------

    def _label(self, style: str) -> QLabel:
        label = QLabel(self)
        label.setStyleSheet(style)
        label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        return label

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if not hasattr(self, "letters"):  # pyqtgraph resizes once inside its own __init__
            return
        self._place_labels()
        self._refresh_range()

    def _place_labels(self) -> None:
        w, h, m = self.width(), self.height(), 4
        for label in (*self.letters.values(), self.title, self.slice_info):
            label.adjustSize()
        self.letters["left"].move(m, (h - self.letters["left"].height()) // 2)
        self.letters["right"].move(w - self.letters["right"].width() - m, (h - self.letters["right"].height()) // 2)
        self.letters["top"].move((w - self.letters["top"].width()) // 2, m)
        self.letters["bottom"].move((w - self.letters["bottom"].width()) // 2, h - self.letters["bottom"].height() - m)
        self.title.move(m, m + self.letters["top"].height() + 2)
        # Bottom right, as in ITK-SNAP; in a view too narrow for it to clear the centred bottom
        # letter it goes one line up, so a letter and the caption never overlap.
        bottom = self.letters["bottom"]
        x = w - self.slice_info.width() - m
        y = h - self.slice_info.height() - m
        if x < bottom.x() + bottom.width() + m:
            y = bottom.y() - self.slice_info.height() - 2
        self.slice_info.move(x, y)
        self.empty_hint.setGeometry(10, h // 2 - 30, w - 20, 60)

    # -- state → display ------------------------------------------------------------------

    @property
    def radiological(self) -> bool:
        return self.state.orientation.radiological

    def _to_scene(self, mm: np.ndarray) -> tuple[float, float]:
        sign = self.plane.horizontal_sign(self.radiological)
        return sign * float(mm[self.plane.horizontal]), float(mm[self.plane.vertical])

    def _rect(self) -> QRectF:
        grid = self.state.cursor.grid
        rect = slice_rect_mm(self.plane, grid.shape, grid.spacing_mm, grid.origin_mm, radiological=self.radiological)
        return QRectF(*rect)

    def refresh(self) -> None:
        """Redraw the slice, overlay, crosshair and labels from the state."""
        cursor = self.state.cursor
        index = cursor.voxel[self.plane.normal]
        rect = self._rect()
        lut = colormap_lut(self.state.display.colormap)
        levels = (self.state.window_level.low, self.state.window_level.high)
        data = self.layer.data
        if data is not None and data.shape == tuple(cursor.grid.shape):
            section = oriented_slice(data, self.plane, index, radiological=self.radiological)
            self.image.setImage(section, autoLevels=False, levels=levels, lut=lut)
            self.image.setRect(rect)
            self.image.setVisible(True)
            self.empty_hint.hide()
        else:
            self.image.setVisible(False)
            hint = self.empty_text
            if hint is None and data is None and self.layer.title:
                hint = self.layer.title  # an empty layer with a title says why it is empty
            if hint is None and self.layer.name == "synthetic":
                hint = "No synthetic volume yet: generate one"
            self.empty_hint.setText(hint if hint is not None else "No real scan: open one")
            self.empty_hint.show()
        overlay_data = self.overlay_layer.data if self.overlay_layer is not None else None
        show_overlay = (
            overlay_data is not None
            and self.state.display.compare == "overlay"
            and overlay_data.shape == tuple(cursor.grid.shape)
        )
        if show_overlay:
            section = oriented_slice(overlay_data, self.plane, index, radiological=self.radiological)
            layer = self.overlay_layer
            rgba = np.empty((*section.shape, 4), dtype=np.uint8)
            rgba[..., :3] = colourise(
                section, low=levels[0], high=levels[1], colormap=layer.colormap or self.state.display.colormap
            )
            # Below the layer's threshold the overlay is transparent (FSLeyes' "clipping range").
            rgba[..., 3] = 255 if layer.threshold is None else np.where(section >= layer.threshold, 255, 0)
            self.overlay.setImage(rgba, autoLevels=False, levels=(0, 255))
            self.overlay.setRect(rect)
            self.overlay.setOpacity(self.state.display.overlay_opacity)
        self.overlay.setVisible(show_overlay)

        x, y = self._to_scene(cursor.mm)
        self.v_line.setPos(x)
        self.h_line.setPos(y)
        for edge, letter in self.plane.edge_letters(self.radiological).items():
            self.letters[edge].setText(letter)
        mm = cursor.mm[self.plane.normal]
        n = cursor.grid.shape[self.plane.normal]
        axis = "xyz"[self.plane.normal]
        self.slice_info.setText(f"{self.plane.name.capitalize()} {index} of 0–{n - 1} · {axis} {mm:+.1f} mm")
        # The row header names the volume; a view only says what is drawn over it.
        overlay_title = ""
        if show_overlay and self.overlay_layer is not None:
            overlay_title = f"+ {self.overlay_layer.title} {self.state.display.overlay_opacity:.0%}"
        self.title.setText(overlay_title)
        self.title.setVisible(bool(overlay_title))
        self._place_labels()
        self._refresh_range()

    def _refresh_levels(self) -> None:
        levels = (self.state.window_level.low, self.state.window_level.high)
        if self.image.image is not None:
            self.image.setLevels(levels)
        if self.overlay.isVisible():
            self.refresh()  # the overlay is coloured here (RGBA), so it is redrawn

    def _refresh_range(self) -> None:
        # Every view fits the grid's longest side, so views of equal size share one mm-per-pixel
        # scale (linked zoom as in ITK-SNAP) and a structure has the same size in all of them.
        zoom = self.state.zoom
        grid = self.state.cursor.grid
        half = max(n * s for n, s in zip(grid.shape, grid.spacing_mm, strict=True)) / (2 * zoom.factor)
        cx, cy = self._to_scene(zoom.centre_mm)
        self.viewbox.setRange(xRange=(cx - half, cx + half), yRange=(cy - half, cy + half), padding=0.02)

    # -- display → state ------------------------------------------------------------------

    def scene_to_mm(self, point: QPointF) -> np.ndarray:
        """The world position (mm) of a point in this view, on the current slice."""
        mm = self.state.cursor.mm.copy()
        mm[self.plane.horizontal] = point.x() * self.plane.horizontal_sign(self.radiological)
        mm[self.plane.vertical] = point.y()
        return mm

    def move_cursor_to(self, point: QPointF) -> None:
        """Put the crosshair at a point of this view (scene mm); the slice stays."""
        self.state.cursor.set_mm(self.scene_to_mm(point))

    def voxel_to_scene(self, voxel) -> QPointF:
        """Where voxel ``voxel`` lies in this view's scene (for tests and tools)."""
        x, y = self._to_scene(self.state.cursor.grid.voxel_to_mm(voxel))
        return QPointF(x, y)

    def step_slice(self, delta: int) -> None:
        self.state.cursor.step(self.plane.normal, delta)

    def pan_scene(self, dx: float, dy: float) -> None:
        delta = np.zeros(3)
        delta[self.plane.horizontal] = dx * self.plane.horizontal_sign(self.radiological)
        delta[self.plane.vertical] = dy
        self.state.zoom.pan_by(delta)

    def move_in_plane(self, right: int, up: int) -> None:
        """Move the cursor by whole voxels as the screen shows them: ``right`` to the right, ``up`` upwards."""
        cursor = self.state.cursor
        if right:
            cursor.step(self.plane.horizontal, right * self.plane.horizontal_sign(self.radiological))
        if up:
            cursor.step(self.plane.vertical, up)

    def keyPressEvent(self, ev) -> None:
        key = ev.key()
        fast = PAGE_STEP if ev.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1
        moves = {Qt.Key.Key_Left: (-1, 0), Qt.Key.Key_Right: (1, 0), Qt.Key.Key_Up: (0, 1), Qt.Key.Key_Down: (0, -1)}
        if key in moves:
            right, up = moves[key]
            self.move_in_plane(right * fast, up * fast)
            ev.accept()
        elif key in (Qt.Key.Key_PageUp, Qt.Key.Key_PageDown):
            self.step_slice(fast if key == Qt.Key.Key_PageUp else -fast)
            ev.accept()
        else:
            super().keyPressEvent(ev)
