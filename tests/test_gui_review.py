"""Review mode, the results view, study creation and evaluation in the app (pytest-qt, offscreen).

One module-scoped pool of tiny cases (2 real phantoms, 2 synthetic exports of the tiny preset)
in a temporary study database; the review is driven by key presses only.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QApplication, QComboBox, QLabel, QLineEdit, QTableWidget, QWidget

from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.rating_state import RatingState
from brainsynth_gui.recent_files import RecentFiles
from engine.study import DEFAULT_QUESTIONS, StudyDatabase
from tests.helpers_qt import wait_until as _wait_until
from tests.helpers_study import GOOD, make_pools

READERS = ["Dr A", "Dr B"]


def wait_until(predicate, timeout: float = 30.0) -> None:
    _wait_until(predicate, timeout)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    real, synthetic = make_pools(root, n_real=2, n_synthetic=2)
    return real, synthetic


@pytest.fixture(scope="module")
def db_path(pools, tmp_path_factory):
    real, synthetic = pools
    path = tmp_path_factory.mktemp("db") / "studies.sqlite"
    with StudyDatabase(path) as db:
        db.create_study(name="Pilot", real=[real], synthetic=[synthetic], readers=READERS, seed=3)
        db.create_study(
            name="Changes", real=[real], synthetic=[synthetic], readers=["Dr C"], seed=4, allow_changes=True
        )
    return path


@pytest.fixture(scope="module")
def main_window(qapp, tmp_path_factory):
    window = MainWindow(recent=RecentFiles(tmp_path_factory.mktemp("recent") / "recent.json"), quiet=True)
    window.resize(1000, 700)
    window.show()
    yield window
    window.close()


def secret_strings(pools) -> list[str]:
    """Anything that would identify a case: file names, stems, folders, header text."""
    out = ["DOE^JOHN", "subject-0042", "MPRAGE", "sidecar", ".nii"]
    for folder in pools:
        out.append(str(folder))
        for path in folder.iterdir():
            out += [path.name, path.name.split(".")[0]]
    return out


def visible_texts(window: QWidget) -> list[str]:
    texts = [window.windowTitle(), window.statusBar().currentMessage()]
    for widget in window.findChildren(QWidget):
        texts.append(widget.toolTip())
        if isinstance(widget, QLabel | QAbstractButton):
            texts.append(widget.text())
        elif isinstance(widget, QLineEdit):
            texts += [widget.text(), widget.placeholderText()]
        elif isinstance(widget, QComboBox):
            texts += [widget.itemText(i) for i in range(widget.count())]
        texts.append(widget.windowTitle())
    return [t for t in texts if t]


def assert_blind(window, pools) -> None:
    texts = "\n".join(visible_texts(window))
    for secret in secret_strings(pools):
        assert secret not in texts, f"{secret!r} is visible in review mode"
    assert "synthetic" not in window.windowTitle().lower()
    assert "real" not in window.windowTitle().lower()


def key(window, k, text: str = "") -> None:
    """A key press delivered as a user's would be: to the focused widget, shortcuts first."""
    from PySide6.QtTest import QTest

    target = QApplication.focusWidget() or window
    QTest.keyClick(target, k)
    QApplication.processEvents()


def open_review(main_window, db_path, study: str, reader: str):
    review = main_window.open_review(db_path, study, reader)
    assert review is not None, main_window.errors
    review.activateWindow()
    wait_until(lambda: review.current is not None or review.finished)
    return review


def test_rating_state_is_qt_free_and_blocks_until_required():
    rating = RatingState(DEFAULT_QUESTIONS)
    seen = []
    rating.subscribe(lambda: seen.append(rating.focus))
    assert rating.missing == ["confidence", "realism", "plausibility", "consistency"]
    assert rating.choose(4)
    assert rating.focus == 1
    assert not rating.choose(9)  # not on the scale: ignored, focus stays
    for value in (3, 4, 5):
        rating.choose(value)
    assert rating.complete
    assert rating.focused.key == "notes"
    assert not rating.choose(2)  # digits do not answer a text question
    rating.set_value("notes", "  ")
    assert "notes" not in rating.values
    rating.set_focus(0)
    rating.step_value(1)
    assert rating.values["confidence"] == 5
    rating.reset({"confidence": 2, "bogus": 1})
    assert rating.values == {"confidence": 2}
    assert rating.focus == 0
    assert seen


def test_review_by_keyboard_skip_resume_and_finish(main_window, db_path, pools):
    review = open_review(main_window, db_path, "Pilot", "Dr A")
    session = review.session
    order = session.order()
    first = review.current
    assert first == order[0]
    assert review.windowTitle() == f"Pilot — Dr A — Case {first} · 1 of 4"
    assert review.layer.data is not None
    assert review.layer.data.shape == (16, 24, 16)
    assert list(review.state.layers) == ["case"]  # one layer in review mode
    assert_blind(review, pools)

    # Next is blocked until every required question is answered.
    key(review, Qt.Key.Key_Return)
    assert review.current == first
    assert session.answer_of(first) is None
    assert not review.next_button.isEnabled()
    for k in (Qt.Key.Key_4, Qt.Key.Key_3, Qt.Key.Key_4):
        key(review, k)
    assert not review.next_button.isEnabled()
    assert "Consistency" in review.missing_label.text()
    key(review, Qt.Key.Key_Up)  # arrows move between questions: back to plausibility
    assert review.rating.focused.key == "plausibility"
    key(review, Qt.Key.Key_Right)  # and change its answer
    assert review.rating.values["plausibility"] == 5
    key(review, Qt.Key.Key_Down)
    key(review, Qt.Key.Key_5)
    assert review.next_button.isEnabled()
    notes = review.panel.rows[-1].field
    assert QApplication.focusWidget() is notes  # the last number key moved on to the notes
    from PySide6.QtTest import QTest

    QTest.keyClicks(notes, "s 5 smooth")  # S and digits type into the notes, they do not skip or rate
    assert review.current == first
    key(review, Qt.Key.Key_Return)
    saved = session.answer_of(first)
    assert saved is not None
    assert saved.values == {
        "confidence": 4,
        "realism": 3,
        "plausibility": 5,
        "consistency": 5,
        "notes": "s 5 smooth",
    }
    assert saved.seconds is not None
    assert saved.seconds >= 0

    wait_until(lambda: review.current == order[1])
    assert review.windowTitle().endswith(f"Case {order[1]} · 2 of 4")
    assert review.rating.values == {}
    key(review, Qt.Key.Key_L)  # the lightbox shows the same case
    assert review.view_stack.currentWidget() is review.lightbox
    assert 6 <= len(review.lightbox.slices) <= 12
    assert_blind(review, pools)
    key(review, Qt.Key.Key_L)
    key(review, Qt.Key.Key_S)  # skip for later
    wait_until(lambda: review.current == order[2])
    assert [e.case_number for e in session.queue()][-1] == order[1]
    for k in (Qt.Key.Key_1, Qt.Key.Key_2, Qt.Key.Key_3, Qt.Key.Key_4, Qt.Key.Key_Return):
        key(review, k)
    assert session.answer_of(order[2]).values == {"confidence": 1, "realism": 2, "plausibility": 3, "consistency": 4}
    wait_until(lambda: review.current == order[3])
    assert not review.back_button.isVisible()
    assert not review.back()
    review.close()
    main_window.review_windows.remove(review)

    # Reopening resumes at the first unanswered case; the skipped one comes back last.
    review = open_review(main_window, db_path, "Pilot", "Dr A")
    assert review.current == order[3]
    assert review.windowTitle().endswith(f"Case {order[3]} · 3 of 4")
    for k in (Qt.Key.Key_5, Qt.Key.Key_5, Qt.Key.Key_5, Qt.Key.Key_5, Qt.Key.Key_Enter):
        key(review, k)
    wait_until(lambda: review.current == order[1])
    for k in (Qt.Key.Key_2, Qt.Key.Key_2, Qt.Key.Key_2, Qt.Key.Key_2, Qt.Key.Key_Return):
        key(review, k)
    wait_until(lambda: review.finished)
    assert "Study finished" in review.finished_label.text()
    assert "all 4 cases" in review.finished_label.text()
    assert review.session.progress().done
    assert_blind(review, pools)
    review.close()


def test_changing_an_answer_when_the_study_allows_it(main_window, db_path):
    review = open_review(main_window, db_path, "Changes", "Dr C")
    first = review.current
    for k in (Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_Return):
        key(review, k)
    wait_until(lambda: review.current not in (None, first))
    second = review.current
    assert review.back_button.isVisible()
    assert review.back_button.isEnabled()
    key(review, Qt.Key.Key_B)
    wait_until(lambda: review.current == first)
    assert review.rating.values == {"confidence": 4, "realism": 4, "plausibility": 4, "consistency": 4}
    assert "changing your answer" in review.windowTitle()
    key(review, Qt.Key.Key_2)  # confidence 4 → 2
    key(review, Qt.Key.Key_Return)
    wait_until(lambda: review.current == second)
    answer = review.session.answer_of(first)
    assert answer.values["confidence"] == 2
    assert answer.revision == 2
    assert [h.action for h in review.session.history(first)] == ["answer", "change"]
    review.close()


def test_results_view_shows_pooled_figures_and_exports(main_window, db_path, tmp_path):
    from engine.study.results import study_results

    with StudyDatabase(db_path) as db:
        session = db.session("Pilot", "Dr B")
        for number in session.order():
            session.answer(number, GOOD, seconds=2.0)
        expected = study_results(db, "Pilot")
    dialog = main_window.open_results(db_path, "Pilot")
    wait_until(lambda: dialog.results is not None or dialog.errors)
    assert not dialog.errors
    table: QTableWidget = dialog.detection
    rows = {table.item(r, 0).text(): r for r in range(table.rowCount())}
    assert set(rows) == {r.reader for r in expected.readers} | {"pooled"}
    pooled = expected.pooled.detection.accuracy.proportion
    accuracy = table.item(rows["pooled"], 2).text()
    assert accuracy.startswith(f"{pooled.estimate:.0%} ({pooled.successes}/{pooled.n};")
    assert table.item(rows["pooled"], 1).text() == str(expected.pooled.n_answered)
    if len(expected.readers) == 2:
        assert "Cohen's kappa" in dialog.agreement.text()
    assert dialog.ratings.rowCount() == 3 * (len(expected.readers) + 1)  # 3 rating questions per row of readers
    assert not dialog.roc.pixmap().isNull()
    written = dialog.write_report(tmp_path / "report")
    assert [p.name for p in written] == ["report.md", "roc.png", "answers.csv", "answers.json"]
    assert dialog.write_report(tmp_path / "report", overwrite=None) == []  # quiet: never replaces silently
    csv = dialog.export(tmp_path / "answers.csv")
    assert csv is not None
    assert csv.read_text().count("\n") == 1 + expected.pooled.n_answered
    dialog.close()


def test_create_study_from_the_app_with_session_volumes(qapp, db_path, pools, tmp_path, tiny_spec):
    from brainsynth_gui.study_dialogs import CreateStudyDialog
    from engine.export import ExportVolume
    from engine.generation import GenerationRequest
    from engine.sampler_registry import SamplerSettings

    real, _ = pools
    rng = np.random.default_rng(1)
    request = GenerationRequest(
        spec=tiny_spec, seeds=[11, 12], settings=SamplerSettings("ddim", 3), device="cpu", checkpoint_sha256="c" * 64
    )
    volumes = [
        ExportVolume(
            number=n,
            array=rng.uniform(-1, 1, tiny_spec.grid.shape).astype(np.float32),
            provenance=request.provenance(10 + n),
        )
        for n in (1, 2)
    ]
    dialog = CreateStudyDialog(
        None,
        db_path=tmp_path / "new.sqlite",
        session_scans=sorted(real.iterdir()),
        session_volumes=volumes,
        spec=tiny_spec,
    )
    dialog.name.setText("From the app")
    dialog.readers.setText("Dr A, Dr B")
    dialog.create()  # no synthetic volumes chosen yet
    assert "synthetic" in dialog.errors[-1]
    assert dialog._job is None
    dialog.real.add(dialog.session_scans)
    dialog.use_session.setChecked(True)
    dialog.export_dir.setText(str(tmp_path / "exported"))
    dialog.create()
    wait_until(lambda: dialog.created is not None or len(dialog.errors) > 1)
    dialog.wait()
    assert dialog.created is not None, dialog.errors
    assert dialog.created.n_cases == 4
    assert dialog.created.readers == ("Dr A", "Dr B")
    assert sorted(p.name for p in (tmp_path / "exported").glob("*.nii.gz")) == [
        "synthetic_0001_seed11.nii.gz",
        "synthetic_0002_seed12.nii.gz",
    ]
    import json

    sidecar = json.loads((tmp_path / "exported" / "synthetic_0001_seed11.json").read_text())
    assert sidecar["checkpoint_sha256"] == "c" * 64  # the hash the request carries, not a second read


def test_evaluate_generated_volumes_from_the_app(qapp, tmp_path, tiny_checkpoint, tiny_spec, pools):
    from engine.generation import GeneratedVolume
    from engine.preprocessing import prepare_scan
    from engine.samplers import SamplerSettings
    from engine.volumes import Volume
    from tests.helpers_volumes import phantom

    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        assert window.open_checkpoint(tiny_checkpoint, wait=True)
        real, _ = pools
        assert window.open_scans([real])
        base = prepare_scan(Volume(*phantom()), tiny_spec).to_model()
        rng = np.random.default_rng(0)
        settings = SamplerSettings("ddim", 3)
        window.library.add(
            GeneratedVolume(0, 5, settings, np.clip(base + rng.normal(0, 0.1, base.shape), -1, 1)), tiny_spec
        )
        dialog = window.evaluation_dialog()
        dialog.pairs.setValue(3)
        assert dialog.run()
        wait_until(lambda: not dialog.running)
        assert dialog.result is None
        assert "synthetic set has 1 volume" in dialog.errors[-1]

        window.library.add(
            GeneratedVolume(1, 6, settings, np.clip(base + rng.normal(0, 0.1, base.shape), -1, 1).astype(np.float32)),
            tiny_spec,
        )
        dialog = window.evaluation_dialog()
        dialog.pairs.setValue(3)
        assert dialog.run()
        wait_until(lambda: not dialog.running, timeout=60)
        assert not dialog.errors, dialog.errors
        figures = {
            dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())
        }
        assert figures["MMD (unbiased, linear kernel)"].startswith(f"{dialog.result.mmd.value:.4g}")
        assert "within real" in " ".join(figures)
        assert "Brain volume, synthetic" in figures
        assert figures["Memorisation (near copies of training scans)"].startswith("not checked")
        written = dialog.write_report(tmp_path / "evaluation")
        assert {p.name for p in written} >= {"report.md", "evaluation.json"}
        dialog.close()
    finally:
        window.close()


def test_cancelling_an_evaluation_says_cancelled_and_reports_no_error(qapp, tmp_path, tiny_spec):
    import threading

    from brainsynth_gui.evaluation_dialog import EvaluationDialog

    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def real():
        started.set()
        release.wait(20)
        calls.append("real")
        return [np.zeros(tiny_spec.grid.shape, np.float32)] * 2, ["a", "b"]

    def synthetic():
        calls.append("synthetic")
        return [np.zeros(tiny_spec.grid.shape, np.float32)] * 2, ["c", "d"]

    dialog = EvaluationDialog(None, real=real, synthetic=synthetic, counts=(2, 2), spec=tiny_spec, quiet=True)
    dialog.train_field.setText(str(tmp_path))  # its loading stage is where the cancel is seen
    assert dialog.run()
    assert started.wait(20)
    dialog.progress_dialog.canceled.emit()  # the user presses Cancel while the real scans load
    release.set()
    wait_until(lambda: not dialog.running)
    assert calls == ["real", "synthetic"]  # stopped at the next progress report, before the training scans
    assert dialog.status.text() == "Cancelled."
    assert not dialog.errors
    assert dialog.result is None
    dialog.close()
