"""Export dialogs: NIfTI batch export with a progress dialog, and the animation options."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QProgressDialog,
    QSpinBox,
    QWidget,
)

from brainsynth_gui.animation import VIEW_CHOICES, AnimationOptions
from brainsynth_gui.rendering import PLANES
from brainsynth_gui.volume_library import SyntheticEntry
from engine.errors import CancelledError


def nifti_targets(entries: list[SyntheticEntry], out_dir: Path, *, prefix: str, overwrite: bool) -> list[Path]:
    """Check every export target before writing anything (raises ExportError on a clash)."""
    from engine.export import export_targets

    pairs = export_targets(
        out_dir, prefix=prefix, items=[(e.number, e.volume.seed) for e in entries], overwrite=overwrite
    )
    return [nii for nii, _ in pairs]


def export_nifti(
    parent: QWidget | None,
    entries: list[SyntheticEntry],
    *,
    out_dir: Path,
    prefix: str = "synthetic",
    overwrite: bool = False,
) -> list[Path]:
    """Write ``entries`` as NIfTI + JSON sidecars with a cancellable progress dialog.

    File names carry the session number and seed (``synthetic_0003_seed42.nii.gz``). All
    targets are checked first; cancelling removes the files this export already wrote, so the
    batch is complete or absent (:func:`engine.export.export_batch`).

    Raises:
        ExportError: a target exists (without ``overwrite``) or cannot be written.
        CancelledError: the user cancelled (nothing is left behind).
    """
    from engine.export import ExportVolume, export_batch

    dialog = QProgressDialog("Exporting NIfTI volumes…", "Cancel", 0, len(entries), parent)
    dialog.setWindowTitle("Export NIfTI")
    dialog.setWindowModality(Qt.WindowModality.WindowModal)
    dialog.setMinimumDuration(0)
    dialog.setValue(0)

    def progress(done: int, _total: int) -> None:
        dialog.setValue(done)
        QApplication.processEvents()
        if dialog.wasCanceled():
            raise CancelledError("export cancelled; no files were kept")

    try:
        return export_batch(
            [ExportVolume(number=e.number, array=e.volume.array, provenance=e.provenance) for e in entries],
            spec=entries[0].spec,
            out_dir=out_dir,
            prefix=prefix,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        dialog.close()


class AnimationDialog(QDialog):
    """Options for the denoising animation: view, slice, x_t or x_0, frame rate, hold.

    Args:
        voxel: the current cursor (default slice of each view).
        grid_shape: the model grid, to bound the slice field.
        kind: the timeline's current kind.
        fps: the timeline's current speed.
    """

    def __init__(
        self, parent: QWidget | None, *, voxel: tuple[int, int, int], grid_shape, kind: str, fps: float
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export denoising animation")
        self._voxel = list(voxel)
        self._grid_shape = tuple(grid_shape)
        self.view = QComboBox()
        for choice in VIEW_CHOICES:
            self.view.addItem("three views side by side" if choice == "all three" else f"{choice} view only", choice)
        self.slice = QSpinBox()
        self.slice.setToolTip(
            "Slice of a single view (counted from 0, as the view captions); all three views show the cursor"
        )
        self.kind = QComboBox()
        self.kind.addItem("predicted x_0", "x0")
        self.kind.addItem("x_t (noisy sample)", "x_t")
        self.kind.setCurrentIndex(0 if kind == "x0" else 1)
        self.fps = QDoubleSpinBox()
        self.fps.setRange(1, 60)
        self.fps.setDecimals(0)
        self.fps.setValue(fps)
        self.fps.setSuffix(" fps")
        self.hold = QDoubleSpinBox()
        self.hold.setRange(0, 10)
        self.hold.setValue(1.0)
        self.hold.setSuffix(" s")
        self.hold.setToolTip("How long the finished volume stays on screen at the end")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0.5, 8.0)
        self.scale.setSingleStep(0.5)
        self.scale.setDecimals(1)
        self.scale.setValue(2.0)
        self.scale.setSuffix(" pixels per mm")
        self.scale.setToolTip("Size of the animation: 1 pixel per mm is the MNI template's resolution")
        form = QFormLayout(self)
        form.addRow("Layout", self.view)
        form.addRow("Slice", self.slice)
        form.addRow("Show", self.kind)
        form.addRow("Frame rate", self.fps)
        form.addRow("Hold last frame", self.hold)
        form.addRow("Size", self.scale)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.view.currentTextChanged.connect(self._view_changed)
        self._view_changed(self.view.currentText())

    def _view_changed(self, view: str) -> None:
        view = self.view.currentData() or view
        single = view in PLANES
        self.slice.setEnabled(single)
        if single:
            axis = PLANES[view].normal
            self.slice.setRange(0, self._grid_shape[axis] - 1)
            self.slice.setValue(self._voxel[axis])

    def options(self) -> AnimationOptions:
        voxel = list(self._voxel)
        view = self.view.currentData()
        if view in PLANES:
            voxel[PLANES[view].normal] = self.slice.value()
        return AnimationOptions(
            view=view,
            voxel=tuple(voxel),
            kind=self.kind.currentData(),
            fps=self.fps.value(),
            hold_seconds=self.hold.value(),
            mm_per_pixel=1.0 / self.scale.value(),
        )
