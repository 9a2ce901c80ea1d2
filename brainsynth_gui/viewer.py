"""The orthogonal viewer: a synthetic row and a real-scan row of linked views.

Both rows share one :class:`~brainsynth_gui.state.ViewerState`, so cursor, slice, zoom,
pan, window/level and orientation are locked between the synthetic volume and the real scan
(both lie on the model grid). In "overlay" mode the real row is hidden and the real scan is
drawn over the synthetic volume with the display's opacity; in "synthetic only" mode the
real row is hidden.
"""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QLabel, QWidget

from brainsynth_gui.rendering import PLANE_ORDER
from brainsynth_gui.slice_view import SliceView
from brainsynth_gui.state import ViewerState

ROW_LABEL_STYLE = "color: #c8c8c8; font-weight: bold; padding: 2px 4px;"


class OrthoViewer(QWidget):
    """Three orthogonal views of the synthetic volume above three of the real scan.

    Args:
        state: the shared viewer state, with the main window's layers "synthetic" and "real".
    """

    def __init__(self, state: ViewerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setStyleSheet("background: #101010;")
        layout = QGridLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(3)
        self.synthetic = state.layer("synthetic")
        self.real = state.layer("real")
        self.synthetic_views = [SliceView(p, state, self.synthetic, overlay=self.real) for p in PLANE_ORDER]
        self.real_views = [SliceView(p, state, self.real) for p in PLANE_ORDER]
        self.synthetic_label = QLabel("Synthetic")
        self.real_label = QLabel("Real")
        for label in (self.synthetic_label, self.real_label):
            label.setStyleSheet(ROW_LABEL_STYLE)
        layout.addWidget(self.synthetic_label, 0, 0, 1, 3)
        for col, view in enumerate(self.synthetic_views):
            layout.addWidget(view, 1, col)
        layout.addWidget(self.real_label, 2, 0, 1, 3)
        for col, view in enumerate(self.real_views):
            layout.addWidget(view, 3, col)
        # Equal stretch, so the two rows have the same height again after overlay or
        # "synthetic only" hid the real row and side-by-side brought it back.
        layout.setRowStretch(1, 1)
        layout.setRowStretch(3, 1)
        state.display.subscribe(self._apply_compare_mode)
        self.synthetic.subscribe(self._update_labels)
        self.real.subscribe(self._update_labels)
        self._apply_compare_mode()
        self._update_labels()

    @property
    def views(self) -> list[SliceView]:
        """Every view, synthetic row first, in axial, coronal, sagittal order."""
        return [*self.synthetic_views, *self.real_views]

    def view(self, row: str, plane: str) -> SliceView:
        """The view of ``plane`` in ``row`` ("synthetic" or "real")."""
        views = self.synthetic_views if row == "synthetic" else self.real_views
        return views[PLANE_ORDER.index(plane)]

    def _apply_compare_mode(self) -> None:
        show_real = self.state.display.compare == "side-by-side"
        self.real_label.setVisible(show_real)
        for view in self.real_views:
            view.setVisible(show_real)

    def _update_labels(self) -> None:
        self.synthetic_label.setText(f"Synthetic — {self.synthetic.title or 'none yet'}")
        self.real_label.setText(f"Real — {self.real.title or 'none open'}")
