"""Display controls: window/level fields, colour map, orientation, comparison mode, zoom.

Every control is a thin view over the shared state: it writes through the state and updates
itself from the state's notifications, so a right-drag in a view and these fields always
agree.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

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
        real = state.layer("real") if "real" in state.layers else None
        self.real_layer = real
        self.overlay_colormap = QComboBox()
        self.overlay_colormap.addItems(COLORMAPS)
        self.overlay_colormap.setToolTip("Colour map of the real scan drawn over the synthetic volume")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0, 1000)
        self.threshold.setDecimals(0)
        self.threshold.setSingleStep(10)
        self.threshold.setKeyboardTracking(False)
        self.threshold.setToolTip("Overlay: the real scan is transparent below this value (0 draws everything)")
        if real is not None:
            self.overlay_colormap.currentTextChanged.connect(real.set_colormap)
            self.threshold.valueChanged.connect(lambda v: real.set_threshold(v if v > 0 else None))
            real.subscribe(self.refresh)
        self.reset_zoom = QPushButton("Fit")
        self.reset_zoom.setToolTip("Reset zoom and pan (Ctrl+0)")
        self.reset_zoom.clicked.connect(state.zoom.reset)

        # Two rows, so the panel fits a 1024-pixel-wide window: the overlay's own controls
        # (as FSLeyes' and ITK-SNAP's layer properties) show only in overlay mode.
        main_row = QHBoxLayout()
        main_row.setContentsMargins(6, 2, 6, 0)
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
            self.reset_zoom,
        ):
            main_row.addWidget(widget)
        main_row.addStretch(1)
        self.overlay_row = QWidget()
        overlay_row = QHBoxLayout(self.overlay_row)
        overlay_row.setContentsMargins(6, 0, 6, 2)
        for widget in (
            QLabel("Real scan over the synthetic volume:"),
            QLabel("Opacity"),
            self.opacity,
            QLabel("Colours"),
            self.overlay_colormap,
            QLabel("Threshold"),
            self.threshold,
        ):
            overlay_row.addWidget(widget)
        overlay_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(main_row)
        layout.addWidget(self.overlay_row)

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
        if self.real_layer is not None:
            real = self.real_layer
            pairs = (
                *pairs,
                (self.overlay_colormap, lambda: self.overlay_colormap.setCurrentText(real.colormap or "gray")),
                (self.threshold, lambda: self.threshold.setValue(real.threshold or 0)),
            )
        for widget, update in pairs:
            widget.blockSignals(True)
            update()
            widget.blockSignals(False)
        overlay = s.display.compare == "overlay"
        for widget in (self.opacity, self.overlay_colormap, self.threshold):
            widget.setEnabled(overlay)
        self.overlay_row.setVisible(overlay)
