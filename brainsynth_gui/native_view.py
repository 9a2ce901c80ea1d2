"""A scan that is not in MNI space, looked at in its own space: view only.

Such a scan cannot lie on the model grid, so it cannot be compared with generated volumes,
evaluated or put in a reader study until it is preprocessed (registered to MNI152). It can
still be looked at: this window shows it on its own voxel grid (RAS+, as loaded; the voxel
size and origin of its affine, any rotation in the affine not applied), with the scanner's
intensities in a window from its own percentiles, and says plainly what it is and what it is
not. It has its own :class:`~brainsynth_gui.state.ViewerState` (one layer, "scan"), so its
cursor never moves the main window's MNI-linked views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from brainsynth_gui.rendering import PLANE_ORDER
from brainsynth_gui.slice_view import SliceView
from brainsynth_gui.state import ViewerState
from engine.geometry import GridGeometry

#: What a view-only scan is and what it needs; shown in the window and in the main window.
VIEW_ONLY_NOTE = (
    "not in MNI space: shown in its own space, view only. Preprocess it (registration to MNI152) "
    "before comparing it with generated volumes, evaluating it or adding it to a study."
)
#: The same in a few words, for the main window's real row and status bar.
VIEW_ONLY_SHORT = "not in MNI space, view only (in its own window)"
NOTE_STYLE = "background: #4a3b10; color: #ffe8a0; padding: 6px; border-radius: 3px;"


def native_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> GridGeometry:
    """The scan's own voxel grid: voxel size (mm) from the affine's columns, origin its translation.

    Args:
        affine: 4x4 voxel→mm affine of a RAS+ (closest canonical) volume.
        shape: voxels along each axis.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return GridGeometry(
        shape=tuple(int(n) for n in shape), spacing_mm=spacing, origin_mm=tuple(float(v) for v in affine[:3, 3])
    )


class NativeScanWindow(QWidget):
    """One scan in its own space: three linked views, a readout and the view-only note.

    Args:
        path: the scan file (for the title; the window never writes it).
        data: the scan's intensities, float32, RAS+.
        affine: its 4x4 voxel→mm affine (scanner coordinates).
        reason: why it is not in MNI space (the engine's message), shown under the note.
    """

    def __init__(self, path: Path, data: np.ndarray, affine: np.ndarray, *, reason: str = "") -> None:
        super().__init__()
        self.path = Path(path)
        self.setWindowTitle(f"{self.path.name} — own space, view only — BrainSynth")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.state = ViewerState.for_grid(native_grid(self.affine, data.shape), layer_names=("scan",))
        brain = data[data > 0]
        low, high = (0.0, float(np.percentile(brain, 99.5))) if brain.size else (0.0, 1.0)
        self.state.window_level.set_range(low, max(high, low + 1e-3))
        self.layer = self.state.layer("scan")
        self.layer.set(np.ascontiguousarray(data, dtype=np.float32), f"{self.path.name} (own space)")

        self.note = QLabel(
            f"<b>{self.path.name}</b> is {VIEW_ONLY_NOTE}" + (f"<br><small>{reason}</small>" if reason else "")
        )
        self.note.setWordWrap(True)
        self.note.setStyleSheet(NOTE_STYLE)
        self.views = [SliceView(p, self.state, self.layer) for p in PLANE_ORDER]
        grid = QGridLayout()
        grid.setSpacing(3)
        for col, view in enumerate(self.views):
            grid.addWidget(view, 0, col)
        self.readout = QLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addLayout(grid, 1)
        layout.addWidget(self.readout)
        self.state.cursor.subscribe(self._update_readout)
        self._update_readout()
        self.resize(960, 480)

    def _update_readout(self) -> None:
        i, j, k = self.state.cursor.voxel
        x, y, z = (self.affine @ np.array([i, j, k, 1.0]))[:3]
        value = self.layer.value_at((i, j, k))
        shown = f"   value {value:.4g}" if value is not None else ""
        # Scanner coordinates from the file's own affine, never called MNI: the scan is not there.
        self.readout.setText(f"voxel [{i}, {j}, {k}]   scanner ({x:+.1f}, {y:+.1f}, {z:+.1f}) mm{shown}")
