"""Review mode a reader can be left alone with (pytest-qt, offscreen): full screen with the main window hidden,
keyboard focus, the case clock that stands still while the window is hidden or the app is in the background,
the warning before dropping unsaved answers, and the organiser passphrase before results."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QMessageBox

from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles
from brainsynth_gui.review_flow import CaseClock
from brainsynth_gui.review_window import ReviewWindow
from brainsynth_gui.study_dialogs import OrganiserPassphraseDialog
from engine.study import StudyDatabase
from tests.helpers_qt import wait_until
from tests.helpers_study import GOOD, make_pools


class FakeTime:
    """A hand-moved clock for :class:`CaseClock` (the thing under test is the clock's arithmetic)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    real, synthetic = make_pools(tmp_path_factory.mktemp("pools"), n_real=2, n_synthetic=2)
    path = tmp_path_factory.mktemp("db") / "studies.sqlite"
    with StudyDatabase(path) as db:
        for reader in ("Dr A", "Dr B", "Dr C", "Dr D"):
            if reader == "Dr A":
                db.create_study(name="Pilot", real=[real], synthetic=[synthetic], readers=[reader], seed=3)
            else:
                db.add_reader("Pilot", reader)
    return path


@pytest.fixture
def main_window(qapp, tmp_path):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    window.resize(1024, 700)
    window.show()
    yield window
    for review in window.review_windows:
        review.quiet = True
        review.close()
    window.close()


def test_case_clock_counts_only_visible_time():
    now = FakeTime()
    clock = CaseClock(now)
    clock.restart()
    now.now += 5
    clock.pause()
    now.now += 100  # hidden: not counted
    assert clock.seconds == pytest.approx(5)
    clock.resume()
    now.now += 2
    assert clock.seconds == pytest.approx(7)
    clock.pause()
    clock.restart()  # a new case while hidden starts paused at 0
    now.now += 50
    assert clock.seconds == 0
    clock.resume()
    now.now += 1
    assert clock.seconds == pytest.approx(1)


def test_review_is_full_screen_hides_the_main_window_and_brings_it_back(main_window, db_path):
    review = main_window.open_review(db_path, "Pilot", "Dr A")
    assert review is not None, main_window.errors
    wait_until(lambda: review.current is not None)
    assert review.isFullScreen()
    assert review.isVisible()
    assert not main_window.isVisible(), "file names and the real-scan row must be out of sight"
    review.activateWindow()
    QApplication.processEvents()
    focus = QApplication.focusWidget()
    assert focus is not None, "the keyboard belongs to the review window"
    assert review.isAncestorOf(focus), "the keyboard belongs to the review window"
    QTest.keyClick(focus, Qt.Key.Key_4)  # a digit answers the first question at once
    assert review.rating.values.get("confidence") == 4
    review.rating.reset()  # nothing unsaved: closes without asking
    review.close()
    assert not review.isVisible()
    assert main_window.isVisible()


def test_the_clock_stands_still_while_hidden_or_in_the_background(main_window, db_path):
    now = FakeTime()
    review = main_window.open_review(db_path, "Pilot", "Dr B")
    review.flow.clock = CaseClock(now)
    wait_until(lambda: review.current is not None)
    review.flow.clock.restart()
    now.now += 3
    review.hide()  # e.g. the window hidden by the window manager
    assert review.flow.clock.paused
    now.now += 600
    review.showFullScreen()
    assert not review.flow.clock.paused
    now.now += 2
    QApplication.instance().applicationStateChanged.emit(Qt.ApplicationState.ApplicationInactive)
    assert review.flow.clock.paused, "another application in front: the clock stops"
    now.now += 1000
    QApplication.instance().applicationStateChanged.emit(Qt.ApplicationState.ApplicationActive)
    assert not review.flow.clock.paused
    now.now += 1
    number = review.current
    for value in GOOD.values():
        review.choose(value)
    assert review.next()
    answer = review.session.answer_of(number)
    assert answer.seconds == pytest.approx(6, abs=0.01), "3 s + 2 s + 1 s on screen; hidden time not counted"


def test_closing_mid_case_warns_that_unsaved_answers_are_dropped(main_window, db_path, monkeypatch):
    review = main_window.open_review(db_path, "Pilot", "Dr C")
    wait_until(lambda: review.current is not None)
    review.quiet = False
    asked = []

    def answer(choice):
        def question(parent, title, text, *args, **kwargs):
            asked.append(text)
            return choice

        return question

    review.choose(2)
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Cancel))
    review.close()
    assert review.isVisible(), "Cancel keeps the reader in review mode"
    assert not main_window.isVisible(), "Cancel keeps the reader in review mode"
    assert f"answers to case {review.current} are not saved" in asked[-1]
    assert "dropped" in asked[-1]
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Close))
    number = review.current
    review.close()
    assert not review.isVisible()
    assert main_window.isVisible()
    with StudyDatabase(db_path) as db:
        assert db.session("Pilot", "Dr C").answer_of(number) is None


def test_results_need_the_organiser_passphrase(qapp, db_path):
    setting = OrganiserPassphraseDialog(None, db_path=db_path, study="Pilot")
    assert setting.setting, "a study without a passphrase gets one set first"
    setting.first.setText("organiser-1")
    setting.second.setText("organiser-2")
    setting._accept()
    assert setting.result() != OrganiserPassphraseDialog.DialogCode.Accepted
    assert "differ" in setting.message.text()
    setting.second.setText("organiser-1")
    setting._accept()
    assert setting.result() == OrganiserPassphraseDialog.DialogCode.Accepted

    asking = OrganiserPassphraseDialog(None, db_path=db_path, study="Pilot")
    assert not asking.setting
    asking.show()
    asking.first.setFocus()
    asking.first.setText("reader guess")
    QTest.keyClick(asking.first, Qt.Key.Key_Return)
    assert asking.result() != OrganiserPassphraseDialog.DialogCode.Accepted
    assert "organiser passphrase</span>" in asking.message.text()
    assert "that is not this study" in asking.message.text()
    asking.first.setText("organiser-1")
    QTest.keyClick(asking.first, Qt.Key.Key_Return)
    assert asking.result() == OrganiserPassphraseDialog.DialogCode.Accepted
    with StudyDatabase(db_path) as db:
        assert db.check_organiser_passphrase("Pilot", "organiser-1")


def test_main_window_results_are_behind_the_passphrase(main_window, db_path, monkeypatch):
    shown = []
    monkeypatch.setattr(OrganiserPassphraseDialog, "exec", lambda self: OrganiserPassphraseDialog.DialogCode.Rejected)
    monkeypatch.setattr(main_window, "open_results", lambda *args: shown.append(args))
    assert not main_window.unlock_results(db_path, "Pilot")
    monkeypatch.setattr(OrganiserPassphraseDialog, "exec", lambda self: OrganiserPassphraseDialog.DialogCode.Accepted)
    assert main_window.unlock_results(db_path, "Pilot")


def test_review_window_is_a_review_window(main_window, db_path):
    review = main_window.open_review(db_path, "Pilot", "Dr D")
    assert isinstance(review, ReviewWindow)
    wait_until(lambda: review.current is not None)
    review.close()


def test_create_study_asks_before_synthetic_files_in_the_real_pool_and_unbalanced_pools(qapp, tmp_path, monkeypatch):
    import shutil

    from brainsynth_gui.study_dialogs import CreateStudyDialog

    real, synthetic = make_pools(tmp_path / "pools", n_real=2, n_synthetic=2)
    export = sorted(synthetic.glob("*.nii.gz"))[0]
    for path in (export, export.with_name(export.name.replace(".nii.gz", ".json"))):
        shutil.copy(path, real / path.name)  # a synthetic export in the real folder
    dialog = CreateStudyDialog(None, db_path=tmp_path / "new.sqlite", session_scans=[], session_volumes=[], spec=None)
    dialog.name.setText("Mixed")
    dialog.readers.setText("Dr A")
    dialog.real.add([real])
    dialog.synthetic.add([p for p in sorted(synthetic.glob("*.nii.gz")) if p != export])
    asked = []

    def answer(choice):
        def question(parent, title, text, *args, **kwargs):
            asked.append((title, text))
            return choice

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    dialog.create()
    assert dialog._job is None
    assert asked[-1][0] == "Synthetic files in the real pool"
    assert export.name in asked[-1][1]
    assert "Move the synthetic files" in dialog.errors[-1]
    asked.clear()
    dialog.errors.clear()
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    dialog.create()
    # confirmed, then warned: 3 real against 1 synthetic
    assert [t for t, _ in asked] == ["Synthetic files in the real pool", "Unbalanced pools"]
    assert "3 real and 1 synthetic" in asked[-1][1]
    wait_until(lambda: dialog.created is not None or dialog.errors)
    dialog.wait()
    assert dialog.created is not None, dialog.errors
    assert dialog.created.n_cases == 4, dialog.errors


def test_a_plain_monai_checkpoint_asks_which_preset(qapp, tmp_path, tiny_weights, monkeypatch):
    import torch
    from PySide6.QtWidgets import QInputDialog

    path = tmp_path / "monai_unet.pt"
    torch.save(tiny_weights, path)
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=False)
    warnings = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a, **k: warnings.append(text))
    offered = []

    def choose(parent, title, label, items, current, editable):
        offered.extend(items)
        return next(i for i in items if i.startswith("tiny ")), True

    monkeypatch.setattr(QInputDialog, "getItem", choose)
    try:
        assert window.open_checkpoint(path, wait=True), warnings
        assert window.checkpoint.spec.name == "tiny"
        assert any(i.startswith("paper") for i in offered)
        monkeypatch.setattr(QInputDialog, "getItem", lambda *a, **k: ("", False))
        assert not window.open_checkpoint(path, wait=True)  # cancelled: the model stays
        assert window.checkpoint.spec.name == "tiny"
        assert not warnings
    finally:
        window.close()
