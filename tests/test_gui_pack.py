"""The app opens a reader's study pack (File ▸ Open study pack…, or as its argument) and rates it as in
review mode: answers go into the pack at once, and merge back into the organiser's database."""

from __future__ import annotations

import pytest

from brainsynth_gui.app import build_parser
from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles
from brainsynth_gui.review_window import ReviewWindow
from engine.study import StudyDatabase
from engine.study.merge import merge_pack
from engine.study.pack import make_pack, open_pack
from tests.helpers_qt import wait_until
from tests.helpers_study import GOOD, make_pools


@pytest.fixture(scope="module")
def organiser(tmp_path_factory):
    real, synthetic = make_pools(tmp_path_factory.mktemp("pools"), n_real=2, n_synthetic=2)
    path = tmp_path_factory.mktemp("db") / "studies.sqlite"
    with StudyDatabase(path) as db:
        db.create_study(name="Pilot", real=[real], synthetic=[synthetic], readers=["Dr A"], seed=3)
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


def test_the_app_rates_a_pack_and_the_answers_merge_back(main_window, organiser, tmp_path):
    with StudyDatabase(organiser) as db:
        pack = make_pack(db, "Pilot", "Dr A", tmp_path / "dr-a.bsstudy").path
    review = main_window.open_pack(pack)
    assert isinstance(review, ReviewWindow), main_window.errors
    wait_until(lambda: review.current is not None)
    assert review.isFullScreen()
    assert not main_window.isVisible()
    assert "Pilot" in review.windowTitle()
    assert "Dr A" in review.windowTitle()
    assert review.layer.data is not None
    first = review.current
    for value in GOOD.values():
        review.choose(value)
    assert review.next()
    with open_pack(pack) as session:  # in the pack the moment Next was taken, while the app is open
        assert session.answer_of(first).values == GOOD
    wait_until(lambda: review.current is not None and review.current != first)
    review.close()
    assert main_window.isVisible()
    with StudyDatabase(organiser) as db:
        report = merge_pack(db, "Pilot", pack)
        assert report.new_answers == 1
        assert [r.case_number for r in db.answer_records("Pilot")] == [first]


def test_the_file_menu_opens_a_pack(main_window, organiser, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    with StudyDatabase(organiser) as db:
        pack = make_pack(db, "Pilot", "Dr A", tmp_path / "menu.bsstudy").path
    file_menu = main_window.menuBar().actions()[0].menu()
    [action] = [a for a in file_menu.actions() if a.text() == "Open study &pack…"]
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(pack), ""))
    action.trigger()
    [review] = main_window.review_windows
    wait_until(lambda: review.current is not None)
    assert review.session.path == pack


def test_a_bad_pack_is_one_error_and_the_app_keeps_running(main_window, tmp_path):
    bad = tmp_path / "bad.bsstudy"
    bad.write_bytes(b"\0" * 4096)
    assert main_window.open_pack(bad) is None
    assert main_window.errors
    assert main_window.isVisible()


def test_the_app_takes_a_pack_as_its_argument():
    assert str(build_parser().parse_args(["reader.bsstudy"]).pack_file) == "reader.bsstudy"
    assert str(build_parser().parse_args(["--pack", "r.bsstudy"]).pack) == "r.bsstudy"
