"""The create-study dialog runs the leakage check in the background and shows what gives the kinds away."""

from __future__ import annotations

from brainsynth_gui.study_dialogs import CreateStudyDialog
from tests.helpers_qt import wait_until
from tests.helpers_study import make_pools


def test_create_dialog_checks_blinding_in_the_background(qapp, tmp_path):
    real, synthetic = make_pools(tmp_path / "pools", n_real=8, n_synthetic=8)
    dialog = CreateStudyDialog(None, db_path=tmp_path / "studies.sqlite")
    dialog.real.add([real])
    dialog.synthetic.add([synthetic])
    dialog.check_blinding()
    assert not dialog.blinding_button.isEnabled()  # running, off the interface thread
    wait_until(lambda: dialog.blinding_button.isEnabled())
    assert dialog.errors == []
    assert dialog.blinding is not None
    assert dialog.blinding.leaks
    assert "WARNING" in dialog.blinding_label.text()
    assert "fix:" in dialog.blinding_label.text()
    assert not (tmp_path / "studies.sqlite").exists()  # a check creates nothing
    dialog.reject()


def test_create_dialog_blinding_check_of_an_empty_pool_is_one_message(qapp, tmp_path):
    dialog = CreateStudyDialog(None, db_path=tmp_path / "studies.sqlite")
    dialog.check_blinding()
    wait_until(lambda: dialog.blinding_button.isEnabled())
    assert dialog.errors == ["the real pool is empty; add real scans (files or a folder)"]
    assert "real pool is empty" in dialog.blinding_label.text()
    dialog.reject()
