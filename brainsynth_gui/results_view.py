"""Study ▸ Results…: a study's figures per reader and pooled, the ROC plot, and the exports.

Shows what :func:`engine.study.results.study_results` computes (the same numbers as
``brainsynth-cli study report``): accuracy of the real-or-synthetic call with its exact
binomial p-value against chance and Clopper–Pearson 95 % interval, sensitivity and
specificity (positive = synthetic), ROC AUC of the five-point confidence, mean ratings by true
class, Cohen's or Fleiss' kappa and time per case. The ROC plot is the report's own Agg figure
(:func:`engine.study.report.roc_png`) shown as a pixmap, so the app and the PNG written next
to the Markdown report are the same picture.

The results reveal the truth of every case; they are for the study organiser, not for
readers mid-study.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.background import BackgroundWorker, create_worker
from brainsynth_gui.error_reporting import tell_user
from engine.errors import BrainSynthError
from engine.study.report import format_mean_sd, format_number, format_p_value, format_proportion

DETECTION_COLUMNS = (
    "reader",
    "answers",
    "accuracy (95% CI)",
    "p vs chance",
    "sensitivity",
    "specificity",
    "unsure",
    "ROC AUC",
    "median s per case (mean)",
)


def _seconds(s) -> str:
    return "n/a" if s.n == 0 else f"{s.median:.1f} ({s.mean:.1f})"


def load_results(db_path: Path, study: str) -> tuple:
    """(StudyResults, ROC PNG bytes) of a study; runs in a worker thread with its own connection."""
    from engine.study import StudyDatabase
    from engine.study.report import roc_png
    from engine.study.results import study_results

    with StudyDatabase(db_path) as db:
        results = study_results(db, study)
    return results, roc_png(results)


def _table(columns) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[list[str]]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            item = QTableWidgetItem(text)
            if c > 0:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)
    table.resizeRowsToContents()


class ResultsDialog(QDialog):
    """The results of one study, computed in the background when the dialog opens.

    Args:
        parent: the main window.
        db_path: the study database.
        study: the study's name.
        quiet: errors to stderr instead of dialogs (tests, headless runs).
    """

    def __init__(self, parent: QWidget | None, *, db_path: Path, study: str, quiet: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Results — {study}")
        self.db_path = Path(db_path)
        self.study = study
        self.quiet = quiet
        self.errors: list[str] = []
        self.results = None
        self.roc_bytes: bytes | None = None
        self._job: BackgroundWorker | None = None

        self.summary = QLabel("Computing the results…")
        self.summary.setWordWrap(True)
        self.detection = _table(DETECTION_COLUMNS)
        self.ratings = _table(("reader", "question", "real", "synthetic"))
        self.ratings.horizontalHeader().setStretchLastSection(False)
        self.agreement = QLabel()
        self.agreement.setWordWrap(True)
        self.roc = QLabel()
        self.roc.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.roc.setMinimumSize(300, 290)
        self._roc_pixmap: QPixmap | None = None

        self.report_button = QPushButton("Write report (Markdown + ROC PNG + CSV + JSON)…")
        self.report_button.clicked.connect(self.ask_report)
        self.csv_button = QPushButton("Export answers as CSV…")
        self.csv_button.clicked.connect(lambda: self.ask_export(".csv"))
        self.json_button = QPushButton("Export answers as JSON…")
        self.json_button.clicked.connect(lambda: self.ask_export(".json"))
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        for b in (self.report_button, self.csv_button, self.json_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(refresh)
        buttons.addWidget(close)

        tables = QVBoxLayout()
        tables.addWidget(_heading("Real or synthetic?"))
        tables.addWidget(self.detection, 2)
        tables.addWidget(_heading("Ratings by true class (mean ± SD, 1 worst … 5 best)"))
        tables.addWidget(self.ratings, 3)
        tables.addWidget(_heading("Agreement between readers"))
        tables.addWidget(self.agreement)
        body = QHBoxLayout()
        body.addLayout(tables, 2)
        body.addWidget(self.roc, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addLayout(body, 1)
        layout.addLayout(buttons)
        self.resize(1360, 720)
        self.refresh()

    # -- computing -----------------------------------------------------------------------------

    @property
    def loading(self) -> bool:
        return self._job is not None

    def refresh(self) -> None:
        """Recompute from the database (a running study gives partial results)."""
        if self._job is not None:
            return
        for b in (self.report_button, self.csv_button, self.json_button):
            b.setEnabled(False)
        db_path, study = self.db_path, self.study
        self._job = create_worker(
            load_results,
            db_path,
            study,
            connect={
                "returned": self._show,
                "errored": lambda message: self.report_error("Cannot compute the results", message),
                "finished": self._job_finished,
            },
        )

    def _job_finished(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.deleteLater()
        for b in (self.report_button, self.csv_button, self.json_button):
            b.setEnabled(True)

    def wait(self) -> None:
        if self._job is not None:
            self._job.wait()

    def _show(self, payload) -> None:
        results, png = payload
        self.results, self.roc_bytes = results, png
        readers = len(results.unanswered)
        text = (
            f"<b>{_escape(results.study)}</b>: {results.n_cases} cases ({results.n_real} real, "
            f"{results.n_synthetic} synthetic), {readers} reader{'s' if readers != 1 else ''}. "
            "Positive = synthetic; calls 1–2 real, 4–5 synthetic, 3 unsure (left out of accuracy)."
        )
        open_cases = {r: n for r, n in results.unanswered.items() if n}
        if open_cases:
            left = ", ".join(f"{_escape(r)} has {n} left" for r, n in open_cases.items())
            text += f"<br><b>Not finished:</b> {left}; these are the answers so far."
        self.summary.setText(text)
        entries = [*results.readers, *([results.pooled] if results.pooled else [])]
        _fill(
            self.detection,
            [
                [
                    e.reader,
                    str(e.n_answered),
                    format_proportion(e.detection.accuracy.proportion),
                    format_p_value(e.detection.accuracy.p_value),
                    format_proportion(e.detection.sensitivity),
                    format_proportion(e.detection.specificity),
                    str(e.detection.n_unsure),
                    format_number(e.detection.roc.auc),
                    _seconds(e.seconds),
                ]
                for e in entries
            ],
        )
        scales = [q for q in results.questions if q.kind == "scale" and q.key != "confidence"]
        _fill(
            self.ratings,
            [
                [
                    e.reader,
                    q.text,
                    format_mean_sd(e.ratings[q.key]["real"]),
                    format_mean_sd(e.ratings[q.key]["synthetic"]),
                ]
                for e in entries
                for q in scales
            ],
        )
        a = results.agreement
        if a is None:
            self.agreement.setText("Needs at least two readers with answers to the same cases.")
        elif a.method == "cohen":
            self.agreement.setText(
                f"Cohen's kappa of the real / unsure / synthetic call ({' vs '.join(a.readers)}, {a.n_cases} cases "
                f"both answered): <b>{format_number(a.kappa)}</b>; quadratically weighted kappa of the five-point "
                f"confidence: <b>{format_number(a.weighted_kappa)}</b>."
            )
        else:
            self.agreement.setText(
                f"Fleiss' kappa of the real / unsure / synthetic call ({len(a.readers)} readers, {a.n_cases} cases "
                f"all answered): <b>{format_number(a.kappa)}</b>."
            )
        pixmap = QPixmap()
        pixmap.loadFromData(png, "PNG")
        self._roc_pixmap = pixmap
        self._fit_roc()
        # Tall enough for every row (and a scroll bar on a narrow screen), no taller.
        height = self.detection.horizontalHeader().height() + sum(
            self.detection.rowHeight(r) for r in range(self.detection.rowCount())
        )
        self.detection.setFixedHeight(height + self.detection.horizontalScrollBar().sizeHint().height() + 6)

    def _fit_roc(self) -> None:
        if self._roc_pixmap is None:
            return
        size = self.roc.size()
        self.roc.setPixmap(
            self._roc_pixmap.scaled(
                size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        )

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_roc()

    # -- exports -------------------------------------------------------------------------------

    def ask_report(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write the report into")
        if folder:
            self.write_report(Path(folder))

    def write_report(self, out_dir: Path, *, overwrite: bool | None = None) -> list[Path]:
        """Write report.md, roc.png, answers.csv and answers.json (asks before replacing, unless told)."""
        from engine.study import StudyDatabase
        from engine.study.report import CSV_NAME, JSON_NAME, REPORT_NAME, ROC_NAME, write_report

        if overwrite is None:
            existing = [n for n in (REPORT_NAME, ROC_NAME, CSV_NAME, JSON_NAME) if (out_dir / n).exists()]
            overwrite = bool(existing) and self._confirm_replace(", ".join(existing), out_dir)
            if existing and not overwrite:
                return []
        try:
            with StudyDatabase(self.db_path) as db:
                files = write_report(db, self.study, out_dir, overwrite=overwrite)
        except BrainSynthError as exc:
            self.report_error("Cannot write the report", str(exc))
            return []
        return [files.markdown, files.roc_png, files.csv, files.json]

    def ask_export(self, suffix: str) -> None:
        kind = "CSV (*.csv)" if suffix == ".csv" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(self, "Export the answers", f"answers{suffix}", kind)
        if path:
            target = Path(path if path.lower().endswith(suffix) else path + suffix)
            self.export(target, overwrite=True)  # the save dialog has asked about replacing

    def export(self, path: Path, *, overwrite: bool = False) -> Path | None:
        """Write the answers (one row per answer, truth joined) as CSV or JSON, by suffix."""
        from engine.study import StudyDatabase
        from engine.study.report import export_answers

        try:
            with StudyDatabase(self.db_path) as db:
                return export_answers(db, self.study, path, overwrite=overwrite)
        except BrainSynthError as exc:
            self.report_error("Cannot export the answers", str(exc))
            return None

    def _confirm_replace(self, names: str, folder: Path) -> bool:
        if self.quiet:
            return False
        answer = QMessageBox.question(self, "Replace files?", f"{names} already in {folder}. Replace them?")
        return answer == QMessageBox.StandardButton.Yes

    def report_error(self, title: str, message: str) -> None:
        self.errors.append(message)
        self.summary.setText(f"<span style='color:#b00000'>{_escape(message)}</span>")
        tell_user(self, title, message, quiet=self.quiet)

    def done(self, result: int) -> None:
        self.wait()
        super().done(result)


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    label.setStyleSheet("font-weight: bold; margin-top: 4px;")
    return label


def _escape(text: str) -> str:
    from html import escape

    return escape(text)
