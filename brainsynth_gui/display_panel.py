"""Display controls: window/level fields, colour map, orientation, comparison mode, zoom.

Every control is a thin view over the shared state: it writes through the state and updates
itself from the state's notifications, so a right-drag in a view and these fields always
agree.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QSlider, QWidget

from brainsynth_gui.rendering import COLORMAPS
from brainsynth_gui.state import COMPARE_MODES, ViewerState


class DisplayPanel(QWidget):
    """A row of controls over ``state.window_level``, ``state.display``, ``state.orientation``, ``state.zoom``."""

    def __init__(self, state: ViewerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.window = self._spin("Window width (right-drag horizontally in a view)", 1, 5000)
        self.level = self._spin("Window level, the centre (right-drag vertically in a view)", -2000, 3000)
        self.window.valueChanged.connect(lambda v: state.window_level.set(window=v))
        self.level.valueChanged.connect(lambda v: state.window_level.set(level=v))
        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.setToolTip("Colour map")
        self.colormap.currentTextChanged.connect(state.display.set_colormap)
        self.radiological = QCheckBox("Radiological")
        self.radiological.setToolTip(
            "Radiological: the patient's right on the screen's left (as radiologists read). "
            "Off: neurological, right on the right. (R)"
        )
        self.radiological.toggled.connect(state.orientation.set_radiological)
        self.compare = QComboBox()
        self.compare.addItems(COMPARE_MODES)
        self.compare.setToolTip("Real scan beside the synthetic volume, over it, or hidden")
        self.compare.currentTextChanged.connect(state.display.set_compare)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setMaximumWidth(120)
        self.opacity.setToolTip("Opacity of the real scan drawn over the synthetic volume")
        self.opacity.valueChanged.connect(lambda v: state.display.set_overlay_opacity(v / 100))
        self.reset_zoom = QPushButton("Fit")
        self.reset_zoom.setToolTip("Reset zoom and pan (Ctrl+0)")
        self.reset_zoom.clicked.connect(state.zoom.reset)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        for widget in (
            QLabel("Window"),
            self.window,
            QLabel("Level"),
            self.level,
            QLabel("Colours"),
            self.colormap,
            self.radiological,
            QLabel("Real scan"),
            self.compare,
            QLabel("Opacity"),
            self.opacity,
            self.reset_zoom,
        ):
            layout.addWidget(widget)
        layout.addStretch(1)

        for observable in (state.window_level, state.display, state.orientation):
            observable.subscribe(self.refresh)
        self.refresh()

    @staticmethod
    def _spin(tooltip: str, low: float, high: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(low, high)
        spin.setDecimals(0)
        spin.setSingleStep(10)
        spin.setKeyboardTracking(False)
        spin.setToolTip(tooltip)
        return spin

    def refresh(self) -> None:
        s = self.state
        pairs = (
            (self.window, lambda: self.window.setValue(s.window_level.window)),
            (self.level, lambda: self.level.setValue(s.window_level.level)),
            (self.colormap, lambda: self.colormap.setCurrentText(s.display.colormap)),
            (self.radiological, lambda: self.radiological.setChecked(s.orientation.radiological)),
            (self.compare, lambda: self.compare.setCurrentText(s.display.compare)),
            (self.opacity, lambda: self.opacity.setValue(round(s.display.overlay_opacity * 100))),
        )
        for widget, update in pairs:
            widget.blockSignals(True)
            update()
            widget.blockSignals(False)
        self.opacity.setEnabled(s.display.compare == "overlay")
