"""Review mode: one reader rates a blind study's cases one at a time, keyboard only if they like.

The window drives an :class:`engine.study.ReaderSession` and nothing else, so it can show
only what a session hands out: an anonymous case number and a display array. No file name,
path, header field or pool size reaches any widget; the title is the study, the reader and
"Case 7 · 12 of 40".

It reuses the app's view widgets over its own :class:`~brainsynth_gui.state.ViewerState`
(on the study's grid, with one layer, "case"): three linked
:class:`~brainsynth_gui.slice_view.SliceView` planes, or a
:class:`~brainsynth_gui.lightbox.LightboxView` of axial slices (L). The rating in progress is a
:class:`~brainsynth_gui.rating_state.RatingState`; the panel is built from the study's questions.
Which case is shown and what Next, Skip and Back do is a Qt-free
:class:`~brainsynth_gui.review_flow.ReviewFlow`; the window renders it and loads the cases it
asks for in the background.

Flow:

* Every answer is saved with :meth:`ReaderSession.answer` the moment Next is taken (the
  engine commits each one), so closing the window or a crash loses nothing answered, and
  opening the study again resumes at the first unanswered case (:meth:`ReaderSession.next_case`).
* Next (Enter) is blocked until every required question is answered.
* Skip for later (S) moves the case behind all others (the engine's queue); it comes back
  at the end.
* Time per case is the flow's :class:`~brainsynth_gui.review_flow.CaseClock`: from the moment
  the case is on screen (loading time is not counted) to the answer or skip, standing still
  while this window is hidden, minimised or closed, or the app is in the background.
* Closing the window mid-case asks first when the case has answers not yet saved (they are
  dropped: only Next saves).
* The main window opens review mode full screen and hides itself (its file names and lists
  could give cases away); it comes back when this window closes.
* Loading a case runs in the background with a busy indicator; while the reader rates, the
  next case is loaded ahead.
* Back (B) revisits earlier answers, only when the study allows changing them; the engine
  keeps every change with its time. Going back leaves the unanswered case's visit open-ended
  (the engine does not count such an abandoned visit), so its clock starts again on return.
"""

from __future__ import annotations

import contextlib
import sys

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.background import RunningWorkers, create_worker
from brainsynth_gui.error_reporting import ErrorReportingWindow
from brainsynth_gui.lightbox import LightboxView
from brainsynth_gui.rating_panel import RatingPanel
from brainsynth_gui.rating_state import RatingState
from brainsynth_gui.rendering import PLANE_ORDER
from brainsynth_gui.review_flow import ReviewFlow
from brainsynth_gui.slice_view import SliceView
from brainsynth_gui.state import ViewerState
from engine.geometry import GridGeometry
from engine.study import DisplayCase, ReaderSession, StudyDatabase
from engine.study.pack import PackFile, PackSession

HELP_TEXT = (
    "<b>Keys</b><br>"
    "<b>1–5</b> answer the outlined question and go to the next one<br>"
    "<b>↑ ↓</b> or <b>Tab</b> / <b>Shift+Tab</b>: previous / next question; <b>← →</b> change the answer<br>"
    "<b>Enter</b>: save and go to the next case (once every question marked * is answered)<br>"
    "<b>S</b>: skip for later (the case comes back at the end)<br>"
    "<b>L</b>: lightbox of axial slices on / off; <b>PgUp / PgDn</b>: axial slice<br>"
    "Mouse in the views: click moves the crosshair, wheel steps slices, right-drag sets window/level"
)
BACK_HELP = "<br><b>B</b>: back to an earlier case to change its answer"
LIGHTBOX_SLICES = 12


REVIEW_LAYER = "case"


def review_state(grid: GridGeometry) -> ViewerState:
    """A viewer state for review mode: one layer, named "case", on the study's grid.

    The main window's state calls its layers "synthetic" and "real"; those names reach view
    hints and readouts, so review mode has its own neutral one.
    """
    return ViewerState.for_grid(grid, layer_names=(REVIEW_LAYER,))


class ReviewWindow(ErrorReportingWindow):
    """Review mode for one reader of one study.

    Args:
        db: the study database, or a study pack's file (the window closes it on close when ``owns_db``).
        session: the reader's session.
        owns_db: close ``db`` when the window closes.
        quiet: report errors on stderr instead of in dialogs (tests, headless runs).

    Signals:
        case_shown(int): a case is on screen and its clock runs.
        study_finished(): every case is answered; the finished screen is up.
        closed(): the window has closed (the main window shows itself again).
    """

    case_shown = Signal(int)
    study_finished = Signal()
    closed = Signal()

    def __init__(
        self,
        db: StudyDatabase | PackFile,
        session: ReaderSession,
        *,
        owns_db: bool = False,
        quiet: bool = False,
    ) -> None:
        super().__init__(quiet=quiet)
        self.db = db
        self.session = session
        self.owns_db = owns_db
        self._jobs = RunningWorkers()  # case loads

        grid = session.study.display.grid
        self.state = review_state(grid)
        self.layer = self.state.layer(REVIEW_LAYER)
        self.rating = RatingState(session.questions)
        self.flow = ReviewFlow(
            session,
            self.rating,
            load=self._load,
            shown=self._display,
            finished=self._show_finished,
            error=self.report_error,
        )

        # Views: three orthogonal planes or the lightbox.
        self.views = [SliceView(p, self.state, self.layer, empty_text="Loading case…") for p in PLANE_ORDER]
        for view in self.views:
            view.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # the keyboard belongs to the rating panel
        ortho = QWidget()
        ortho.setStyleSheet("background: #101010;")
        grid_layout = QGridLayout(ortho)
        grid_layout.setContentsMargins(2, 2, 2, 2)
        grid_layout.setSpacing(3)
        grid_layout.addWidget(self.views[0], 0, 0, 2, 1)  # axial large on the left
        grid_layout.addWidget(self.views[1], 0, 1)
        grid_layout.addWidget(self.views[2], 1, 1)
        grid_layout.setColumnStretch(0, 3)
        grid_layout.setColumnStretch(1, 2)
        self.lightbox = LightboxView(self.state, self.layer, count=LIGHTBOX_SLICES, columns=4)
        self.view_stack = QStackedWidget()
        self.view_stack.addWidget(ortho)
        self.view_stack.addWidget(self.lightbox)

        # Header: case title, busy indicator, lightbox switch.
        self.case_label = QLabel()
        self.case_label.setStyleSheet("font-size: 16px; font-weight: bold; padding: 2px 6px;")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate
        self.busy.setMaximumWidth(160)
        self.busy.setMaximumHeight(14)
        self.busy.setTextVisible(False)
        self.busy.setToolTip("Loading the case")
        self.lightbox_box = QCheckBox("Lightbox (L)")
        self.lightbox_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.lightbox_box.setToolTip(f"Show {LIGHTBOX_SLICES} axial slices at once instead of the orthogonal views")
        self.lightbox_box.toggled.connect(lambda on: self.view_stack.setCurrentIndex(1 if on else 0))
        header = QHBoxLayout()
        header.addWidget(self.case_label)
        header.addWidget(self.busy)
        header.addStretch(1)
        header.addWidget(self.lightbox_box)

        # Side: rating panel, what is missing, buttons, key help.
        self.panel = RatingPanel(self.rating)
        self.missing_label = QLabel()
        self.missing_label.setWordWrap(True)
        self.missing_label.setStyleSheet("color: #b05a00;")
        self.back_button = QPushButton("◀ Back (B)")
        self.skip_button = QPushButton("Skip for later (S)")
        self.next_button = QPushButton("Next ▶ (Enter)")
        self.next_button.setDefault(True)
        for button in (self.back_button, self.skip_button, self.next_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.back_button.clicked.connect(self.back)
        self.skip_button.clicked.connect(self.skip)
        self.next_button.clicked.connect(self.next)
        self.back_button.setVisible(session.allow_changes)
        self.back_button.setToolTip("Change an earlier answer (this study allows changes; every change is kept)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.skip_button)
        buttons.addStretch(1)
        buttons.addWidget(self.next_button)
        self.help_label = QLabel(HELP_TEXT + (BACK_HELP if session.allow_changes else ""))
        self.help_label.setWordWrap(True)
        self.help_label.setStyleSheet("color: #606060; font-size: 11px;")
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.panel)
        side_layout.addWidget(self.missing_label)
        side_layout.addLayout(buttons)
        side_layout.addStretch(1)
        side_layout.addWidget(self.help_label)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(side)
        scroll.setMinimumWidth(430)

        case_page = QWidget()
        case_layout = QVBoxLayout(case_page)
        case_layout.setContentsMargins(0, 0, 0, 0)
        case_layout.addLayout(header)
        splitter = QSplitter()
        splitter.addWidget(self.view_stack)
        splitter.addWidget(scroll)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        case_layout.addWidget(splitter, 1)

        # The finished screen.
        self.finished_label = QLabel()
        self.finished_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.finished_label.setWordWrap(True)
        self.finished_label.setStyleSheet("font-size: 15px;")
        close_button = QPushButton("Close")
        close_button.clicked.connect(self.close)
        self.finished_back = QPushButton("◀ Back to change an answer (B)")
        self.finished_back.clicked.connect(self.back)
        self.finished_back.setVisible(session.allow_changes)
        finished_page = QWidget()
        finished_layout = QVBoxLayout(finished_page)
        finished_layout.addStretch(1)
        finished_layout.addWidget(self.finished_label)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.finished_back)
        row.addWidget(close_button)
        row.addStretch(1)
        finished_layout.addLayout(row)
        finished_layout.addStretch(2)

        self.pages = QStackedWidget()
        self.pages.addWidget(case_page)
        self.pages.addWidget(finished_page)
        self.setCentralWidget(self.pages)

        self._shortcuts()
        self.flow.subscribe(self._render)
        self.rating.subscribe(self._update_controls)
        self.resize(1280, 820)
        self._update_title()
        self._update_controls()
        self._app_active = True
        app = QGuiApplication.instance()
        if app is not None:
            app.applicationStateChanged.connect(self._application_state_changed)

    # -- the case clock: runs only while the reader can see the case ----------------------------

    def _visible_to_reader(self) -> bool:
        return self.isVisible() and not self.isMinimized() and self._app_active

    def _update_clock(self) -> None:
        if self._visible_to_reader():
            self.flow.resume()
        else:
            self.flow.pause()

    def _application_state_changed(self, state: Qt.ApplicationState) -> None:
        # Another application in front (or the screen locked): the reader is not looking.
        self._app_active = state == Qt.ApplicationState.ApplicationActive
        self._update_clock()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._update_clock()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        self.flow.pause()

    def changeEvent(self, event) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.WindowStateChange:
            self._update_clock()

    def take_focus(self) -> None:
        """Raise the window and give the keyboard to the rating panel."""
        self.raise_()
        self.activateWindow()
        self.panel.setFocus(Qt.FocusReason.ActiveWindowFocusReason)
        self.panel.focus_current()

    # -- keys ----------------------------------------------------------------------------------

    def _shortcut(self, key, slot) -> QShortcut:
        shortcut = QShortcut(QKeySequence(key), self)
        shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        shortcut.activated.connect(slot)
        return shortcut

    def _shortcuts(self) -> None:
        # Text fields take printable keys first (Qt's shortcut override), so digits and S type
        # into the notes there; everywhere else they rate and skip.
        for digit in range(10):
            self._shortcut(str(digit), lambda d=digit: self.choose(d))
        self._shortcut(Qt.Key.Key_Return, self.next)
        self._shortcut(Qt.Key.Key_Enter, self.next)
        self._shortcut("S", self.skip)
        self._shortcut("B", self.back)
        self._shortcut("L", lambda: self.lightbox_box.setChecked(not self.lightbox_box.isChecked()))
        self._shortcut(Qt.Key.Key_PageUp, lambda: self.state.cursor.step(2, 1))
        self._shortcut(Qt.Key.Key_PageDown, lambda: self.state.cursor.step(2, -1))

    def choose(self, value: int) -> None:
        """A number key: answer the focused question (when a case is on screen)."""
        if self.flow.current is not None:
            self.rating.choose(value)

    # -- the flow (kept in :class:`ReviewFlow`; the window renders it) -------------------------

    @property
    def total(self) -> int:
        return self.flow.total

    @property
    def current(self) -> int | None:
        """The case on screen (its clock runs)."""
        return self.flow.current

    @property
    def loading(self) -> int | None:
        """The case being loaded for the screen."""
        return self.flow.loading

    @property
    def revisiting(self) -> int | None:
        return self.flow.revisiting

    @property
    def answered_order(self) -> list[int]:
        return self.flow.answered_order

    @property
    def finished(self) -> bool:
        return self.flow.finished

    def start(self) -> None:
        """Show the first unanswered case (resuming a study started earlier), or the finished screen."""
        self.flow.start()

    def show_case(self, number: int) -> None:
        """Put case ``number`` on screen, loading it in the background if it is not loaded yet."""
        self.flow.show(number)

    def next(self) -> bool:
        """Save the answer (Enter) and go on; refused while a required question is unanswered.

        Returns:
            True when the answer was saved (or was unchanged) and the next case is on its way.
        """
        if self.flow.current is not None and not self.rating.complete:
            self.statusBar().showMessage(f"Still to answer: {self.rating.missing_text()}", 5000)
        return self.flow.next()

    def skip(self) -> bool:
        """Skip the case on screen for later (S); it comes back after all the others."""
        number = self.flow.case_number
        if not self.flow.skip():
            return False
        self.statusBar().showMessage(f"Case {number} skipped; it comes back at the end", 5000)
        return True

    def back(self) -> bool:
        """Go to the case answered before this one to change its answer (only if the study allows it)."""
        if not self.flow.allow_changes:
            self.statusBar().showMessage("This study does not allow changing answers", 5000)
        return self.flow.back()

    def position_text(self) -> str:
        """``"Case 7 · 12 of 40"`` (12: the count this case will make), or the finished/changing state."""
        return self.flow.position_text()

    # -- loading -------------------------------------------------------------------------------

    def _load(self, number: int) -> None:
        """The flow asks for case ``number``: load it off the interface thread, hand it back."""
        flow = self.flow
        job = create_worker(
            self.session.load_case,
            number,
            start=False,
            connect={"returned": flow.loaded, "errored": lambda message: flow.load_failed(number, message)},
        )
        self._jobs.start(job)

    # -- display -------------------------------------------------------------------------------

    def _render(self) -> None:
        """Redraw from the flow: page, busy indicator, empty views, title and buttons."""
        flow = self.flow
        self.pages.setCurrentIndex(1 if flow.finished else 0)
        self.busy.setVisible(flow.loading is not None and flow.failed is None)
        if flow.current is None and self.layer.data is not None:
            self.layer.set(None)
        text = (
            f"Case {flow.failed} cannot be shown. Skip it (S) and tell the study organiser."
            if flow.failed is not None
            else "Loading case…"
        )
        for view in self.views:
            if view.empty_text != text:
                view.empty_text = text
                view.refresh()
        self._update_title()
        self._update_controls()

    def _display(self, case: DisplayCase) -> None:
        """The flow put ``case`` on screen: every case starts from the same view."""
        self.state.cursor.set_voxel([(n - 1) / 2 for n in self.state.cursor.grid.shape])
        self.state.zoom.reset()
        self.state.window_level.set_range(*case.window)
        self.layer.set(case.data)
        self.panel.focus_current()
        self.case_shown.emit(case.number)

    def _show_finished(self) -> None:
        self.finished_label.setText(
            f"<h2>Study finished</h2><p>You have answered all {self.total} cases of "
            f"<b>{_escape(self.session.study.name)}</b>. Thank you, {_escape(self.session.reader)}.</p>"
            "<p>Every answer is saved. You can close this window.</p>"
            + (
                f"<p>Send the study pack <b>{_escape(self.session.path.name)}</b> back to the study organiser.</p>"
                if isinstance(self.session, PackSession)
                else ""
            )
        )
        self.study_finished.emit()

    def _update_title(self) -> None:
        position = self.position_text()
        self.case_label.setText(position)
        parts = [self.session.study.name, self.session.reader, position]
        self.setWindowTitle(" — ".join(p for p in parts if p))

    def _update_controls(self) -> None:
        flow = self.flow
        on_screen = flow.current is not None
        self.panel.setEnabled(on_screen)
        self.next_button.setEnabled(flow.can_next)
        self.skip_button.setEnabled(flow.can_skip)
        self.back_button.setEnabled(flow.can_back)
        missing = self.rating.missing_text() if on_screen else ""
        self.missing_label.setText(f"Still to answer: {missing}" if missing else "")

    def wait_for_loads(self) -> None:
        """Block until background loads have finished (closing, tests)."""
        self._jobs.wait()

    def confirm_close(self) -> bool:
        """Ask before closing a case whose answers are not saved yet; True to close."""
        if not self.flow.has_unsaved_answers:
            return True
        if self.quiet:  # headless: no one to ask
            print(f"review mode closed: unsaved answers to case {self.flow.current} dropped", file=sys.stderr)
            return True
        answer = QMessageBox.question(
            self,
            "Leave review mode?",
            f"Your answers to case {self.flow.current} are not saved yet (only Next saves them) and will be "
            "dropped. Every case answered before is saved.\n\nClose review mode anyway?",
            QMessageBox.StandardButton.Close | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Close

    def closeEvent(self, event) -> None:
        if not self.confirm_close():
            event.ignore()
            return
        self.flow.pause()
        self.wait_for_loads()
        if self.owns_db:
            self.db.close()
        app = QGuiApplication.instance()
        if app is not None:
            with contextlib.suppress(RuntimeError, TypeError):  # never connected, or already gone
                app.applicationStateChanged.disconnect(self._application_state_changed)
        super().closeEvent(event)
        self.closed.emit()


def _escape(text: str) -> str:
    from html import escape

    return escape(text)
