"""Tools ▸ Augmentation utility…: the experiment in the background, cancel, and the report viewer."""

from __future__ import annotations

import pytest

from brainsynth_gui.utility_dialog import UtilityDialog
from tests.helpers_qt import wait_until
from tests.helpers_utility import write_real, write_synthetic

SMALL = {"width": 4, "batch_size": 4, "bootstrap": 50, "device": "cpu"}


@pytest.fixture
def data(tmp_path):
    write_real(tmp_path / "real", patients=8, controls=8, seed=11)
    write_synthetic(tmp_path / "synthetic", patients=8, controls=8)
    return tmp_path


def _dialog(qtbot, data) -> UtilityDialog:
    dialog = UtilityDialog(None, quiet=True)
    qtbot.addWidget(dialog)  # closed and deleted at teardown, not at interpreter exit
    dialog.real_field.setText(str(data / "real"))
    dialog.synthetic_field.setText(str(data / "synthetic"))
    dialog.out_field.setText(str(data / "out"))
    dialog.skip_leakage.setChecked(True)
    dialog.repeats.setValue(1)
    return dialog


def test_runs_in_the_background_and_shows_the_figures_and_plots(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.epochs.setValue(3)
    assert dialog.run(overrides=SMALL)
    assert dialog.running
    wait_until(lambda: not dialog.running, timeout=120)
    assert not dialog.errors, dialog.errors
    arms = [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())]
    assert arms == ["real", "real+synthetic ×1", "synthetic"]
    assert dialog.table.item(0, 3).text() == _cell(dialog.summary["arms"]["real"]["auc"])
    assert not dialog.plots.pixmap().isNull()
    assert any(e.stage == "training" for e in dialog.events)
    dialog.close()

    viewer = UtilityDialog(None, quiet=True)  # a second dialog only views the folder
    qtbot.addWidget(viewer)
    assert viewer.open_report(data / "out")
    assert viewer.table.rowCount() == 3
    assert viewer.summary["arms"]["real"]["auc"] == dialog.summary["arms"]["real"]["auc"]
    viewer.close()


def _cell(entry: dict) -> str:
    return f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def test_cancel_stops_within_a_run_and_keeps_the_finished_ones(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.epochs.setValue(2000)  # far longer than the test waits
    assert dialog.run(overrides=SMALL)
    wait_until(lambda: any(e.stage == "training" for e in dialog.events), timeout=60)
    dialog.progress_dialog.canceled.emit()  # the user presses Cancel
    wait_until(lambda: not dialog.running, timeout=60)
    assert dialog.status.text().startswith("Cancelled")
    assert not dialog.errors
    assert dialog.summary is None
    assert not list((data / "out" / "runs").glob("*.json"))  # the run in progress left nothing
    dialog.close()


def test_a_bad_input_is_one_message_and_a_missing_report_too(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.positive_field.setText("als")
    assert dialog.run(overrides=SMALL)
    wait_until(lambda: not dialog.running, timeout=60)
    assert dialog.errors[-1].startswith("--positive 'als': no real scan has that 'group'")
    assert not dialog.open_report(data / "nowhere")
    assert "holds no utility.json" in dialog.errors[-1]
    dialog.real_field.clear()
    dialog.run_button.click()  # the button, as a user presses it
    assert dialog.errors[-1] == "choose the real scans and an output folder"
    assert not dialog.running
    dialog.close()


def test_the_tools_menu_opens_it(qapp, tmp_path):
    from brainsynth_gui.main_window import MainWindow
    from brainsynth_gui.recent_files import RecentFiles

    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        tools = next(a.menu() for a in window.menuBar().actions() if a.text() == "T&ools")
        assert "&Augmentation utility…" in [a.text() for a in tools.actions()]
        dialog = window.utility_dialog()
        assert isinstance(dialog, UtilityDialog)
        dialog.close()
    finally:
        window.close()
