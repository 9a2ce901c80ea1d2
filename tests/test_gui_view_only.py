"""A scan that is not in MNI space, looked at as it is: view only, left out of every comparison."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.native_view import NativeScanWindow
from brainsynth_gui.recent_files import RecentFiles
from tests.helpers_qt import wait_until
from tests.helpers_volumes import phantom, write_nifti, write_phantom


def click_when_shown(button_text: str, seen: list[str]) -> None:
    """Click ``button_text`` in the next modal message box, as a user would (keeps its text in ``seen``)."""

    def attempt() -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append(box.text())
            next(b for b in box.buttons() if b.text().replace("&", "") == button_text).click()
            return
        QTimer.singleShot(20, attempt)

    QTimer.singleShot(0, attempt)


@pytest.fixture
def unregistered(tmp_path):
    """A brain 400 mm to the right of the MNI box: in no way in MNI space."""
    data, affine = phantom()
    far = affine.copy()
    far[:3, 3] += (400.0, 0.0, 0.0)
    return write_nifti(tmp_path / "raw_sub-07.nii.gz", data * 3.0, far)


def test_a_scan_not_in_mni_space_can_be_viewed_as_is_and_is_left_out_of_comparisons(
    qapp, tmp_path, tiny_checkpoint, unregistered
):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=False)
    window.resize(1024, 700)
    window.show()
    try:
        assert window.open_checkpoint(tiny_checkpoint, wait=True)
        registered = write_phantom(tmp_path / "sub-01_T1w.nii.gz")
        assert window.open_scans([registered])
        wait_until(lambda: not window.busy and window.real_layer.data is not None)
        on_screen = window.real_layer.data
        # The offer keeps its Preprocess button and gains "View as is".
        seen: list[str] = []
        click_when_shown("View as is", seen)
        assert window.open_scans([unregistered])
        wait_until(lambda: not window.busy and unregistered in window.native_windows)
        assert "not in MNI space" in seen[0]
        assert "Preprocess it now?" in seen[0]
        assert "view it as it is" in seen[0]
        # Kept in the list, marked; shown in its own window on its own grid, in scanner mm.
        assert window.scans.paths == [registered, unregistered]
        assert window.scan_list.item(1).text() == "raw_sub-07.nii.gz  ·  own space, view only"
        native = window.native_windows[unregistered]
        assert isinstance(native, NativeScanWindow)
        assert native.isVisible()
        assert "view only" in native.note.text()
        assert "Preprocess it" in native.note.text()
        assert native.layer.data.shape == phantom()[0].shape != on_screen.shape  # its own grid, not the model's
        np.testing.assert_allclose(native.state.cursor.grid.origin_mm, native.affine[:3, 3])
        assert "scanner (" in native.readout.text()
        assert "MNI" not in native.readout.text()
        assert native.state.window_level.high == pytest.approx(
            np.percentile(native.layer.data[native.layer.data > 0], 99.5)
        )
        # Not side by side: the real row is empty and says why.
        assert window.scan_list.currentRow() == 1
        assert window.real_layer.data is None
        assert "not in MNI space" in window.real_layer.title
        assert "view only" in window.viewer.real_label.text()
        window.scan_list.setCurrentRow(0)  # the registered scan compares again
        wait_until(lambda: not window.busy and window.real_layer.data is not None)
        window.scan_list.setCurrentRow(1)
        assert window.real_layer.data is None
        # Evaluate and Create study leave it out and say so.
        evaluation = window.evaluation_dialog()
        assert evaluation.left_out.text().startswith("Left out: raw_sub-07.nii.gz (it is not in MNI space")
        real, names = evaluation._real()
        assert names == ["sub-01_T1w.nii.gz"]
        assert len(real) == 1
        evaluation.close()
        study = window.create_study_dialog()
        assert study.session_scans == [registered]
        assert "raw_sub-07.nii.gz" in study.left_out.text()
        assert "preprocess" in study.left_out.text()
        study.close()
        # Removing it from the session closes its window.
        window.remove_selected_scans()
        assert unregistered not in window.scans.paths
        assert unregistered not in window.native_windows
        assert not native.isVisible()
        assert window._view_only_note() == ""
        assert not window.errors
    finally:
        window.close()


def test_cancel_on_the_offer_takes_the_scan_out(qapp, tmp_path, tiny_checkpoint, unregistered):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=False)
    try:
        assert window.open_checkpoint(tiny_checkpoint, wait=True)
        seen: list[str] = []
        click_when_shown("Cancel", seen)
        assert window.open_scans([unregistered])
        wait_until(lambda: not window.busy and seen and not window.scans.paths)
        assert not window.native_windows
        assert window.real_layer.data is None
    finally:
        window.close()


def test_a_view_only_scan_can_be_preprocessed_after_all(qapp, tmp_path, tiny_checkpoint, unregistered, monkeypatch):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=False)
    try:
        assert window.open_checkpoint(tiny_checkpoint, wait=True)
        click_when_shown("View as is", [])
        assert window.open_scans([unregistered])
        wait_until(lambda: not window.busy and unregistered in window.native_windows)
        started: list = []
        # Preprocessing itself is tested in test_preprocess.py (it needs antspyx and a minute).
        monkeypatch.setattr(window, "preprocess_scan", lambda path, **kw: started.append(path) or True)
        window._preprocess_view_only(unregistered)  # the list's context menu: "Preprocess this scan…"
        assert started == [unregistered]
        assert unregistered not in window.scans.paths  # the preprocessed scan will take its place
        assert not window.native_windows
    finally:
        window.close()
