"""Tools ▸ Augmentation utility…: run ``brainsynth-cli utility``'s experiment, or view its report.

The dialog has two halves. *Run*: real scans (the scans open in the session, or a folder with
its ``participants.tsv``, or a manifest), synthetic volumes (the volumes generated in the
session, or a folder of exported volumes with sidecars), the label and its positive class,
repeats and epochs, an output folder; the experiment
(:func:`engine.utility.experiment.iter_experiment`) runs in a
:class:`~brainsynth_gui.background.BackgroundWorker`, one progress step per run, and Cancel
stops it within a few training steps (finished runs are kept: running again continues).
*View*: any output folder's ``utility.json`` figures as a table and its PNG plots.

The session's volumes are first exported with their sidecars into the output folder, and the
session's scans are used as the files they are (:mod:`brainsynth_gui.utility_session`), so the
figures are those of ``brainsynth-cli utility`` on the same files, leakage check included.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.background import BackgroundWorker, WorkerDialog
from brainsynth_gui.utility_session import UtilitySession
from engine.errors import BrainSynthError


def _folder_row(field: QLineEdit, choose) -> QHBoxLayout:
    button = QPushButton("Choose…")
    button.clicked.connect(choose)
    row = QHBoxLayout()
    row.addWidget(field, 1)
    row.addWidget(button)
    return row


def _source_rows(session_choice: QCheckBox | None, folder_row: QHBoxLayout) -> QVBoxLayout:
    """The session choice above the folder choice; the folder is greyed out while the session is chosen."""
    rows = QVBoxLayout()
    if session_choice is not None:
        widgets = [folder_row.itemAt(i).widget() for i in range(folder_row.count())]

        def follow(on: bool) -> None:
            for widget in widgets:
                widget.setEnabled(not on)

        rows.addWidget(session_choice)
        session_choice.toggled.connect(follow)
        follow(session_choice.isChecked())
    rows.addLayout(folder_row)
    return rows


#: The experiment's options as this dialog names them; the engine's messages use the CLI's flags.
FIELD_NAMES = {
    "--real": "Real scans",
    "--synthetic": "Synthetic volumes",
    "--checkpoint": "Generator checkpoint",
    "--no-leakage-check": "Skip the leakage check",
    "--label": "Label",
    "--positive": "Positive class",
    "--task": "Task",
    "--repeats": "Repeats",
    "--epochs": "Epochs",
    "--out": "Output folder",
}
#: Options only the command line sets, named in words.
CLI_ONLY = {"--labels": "a labels file (command line only)", "--test-fraction": "the test fraction (command line only)"}


def in_app_terms(message: str) -> str:
    """An engine message with the CLI's option flags replaced by this dialog's names for them.

    ``--condition group=ftd`` becomes a choice in the Generate panel, ``--overwrite`` an empty
    output folder; other flags become the name of their field here, in quotes.
    """
    message = re.sub(r"--condition (\S+?=\S*?)(?=[\s;,)]|$)", r"\1 chosen in the Generate panel", message)
    message = message.replace("--overwrite", "an empty output folder")

    def field(match: re.Match) -> str:
        flag = match.group(0)
        if flag in CLI_ONLY:
            return CLI_ONLY[flag]
        return f"“{FIELD_NAMES[flag]}”" if flag in FIELD_NAMES else flag

    return re.sub(r"--[a-z][a-z-]*", field, message)


class UtilityDialog(WorkerDialog):
    """Run the augmentation-utility experiment in the background, or view an earlier one.

    Args:
        parent: the main window.
        quiet: errors on stderr instead of in dialogs (tests, headless runs).
        session: the app session's generated volumes, open scans and loaded checkpoints,
            offered beside the folder choices (None: folders only).
    """

    def __init__(
        self, parent: QWidget | None = None, *, quiet: bool = False, session: UtilitySession | None = None
    ) -> None:
        super().__init__(parent, quiet=quiet)
        self.setWindowTitle("Augmentation utility")
        self.session = session
        self.summary: dict | None = None
        self.events: list = []
        self._stop = threading.Event()

        intro = QLabel(
            "Does training with synthetic scans help on real patients? Trains a small 3-D classifier on real "
            "scans only, on real + synthetic scans and on synthetic scans only, with the same budget, and tests "
            "each on held-out real subjects (<i>brainsynth-cli utility</i>). Or open the output folder of an "
            "earlier experiment to see its figures."
        )
        intro.setWordWrap(True)
        self.real_field = QLineEdit()
        self.real_field.setPlaceholderText("folder of prepared real scans with participants.tsv (or a manifest)")
        self.synthetic_field = QLineEdit()
        self.synthetic_field.setPlaceholderText("folder of exported synthetic volumes with their sidecars")
        self.checkpoint_field = QLineEdit()
        self.checkpoint_field.setPlaceholderText("the checkpoint that made them (its training split is checked)")
        self.out_field = QLineEdit()
        self.out_field.setPlaceholderText("output folder (utility.json, report.md, plots)")
        self.label_field = QLineEdit("group")
        self.positive_field = QLineEdit("ftd")
        self.task = QComboBox()
        self.task.addItems(["classify", "regress"])
        self.repeats = QSpinBox()
        self.repeats.setRange(1, 100)
        self.repeats.setValue(3)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(20)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.skip_leakage = QCheckBox("Skip the leakage check (the report says so)")
        self.skip_leakage.setToolTip(
            "Without it, the generator checkpoint's training split is compared with the held-out real subjects"
        )
        # The session's own sets, chosen by default when it has them; the folders stay the alternative.
        self.session_real: QCheckBox | None = None
        self.session_synthetic: QCheckBox | None = None
        if session is not None:
            n_scans, n_volumes = len(session.scans), len(session.volumes)
            self.session_real = QCheckBox(
                f"The real scans open in this session ({n_scans}), labelled by their participants.tsv"
            )
            self.session_real.setChecked(n_scans > 0)
            self.session_synthetic = QCheckBox(
                f"The volumes generated in this session ({n_volumes}), labelled by their conditions"
            )
            self.session_synthetic.setChecked(n_volumes > 0)
            self.session_synthetic.setToolTip(
                "Written with their sidecars into the output folder first, then used as the synthetic set; the "
                "checkpoint that made them is checked for leakage"
            )
            self.checkpoint_field.setPlaceholderText(
                "another checkpoint that made the volumes (the session's own is checked without it)"
            )
        form = QFormLayout()
        form.addRow(
            "Real scans",
            _source_rows(
                self.session_real,
                _folder_row(self.real_field, lambda: self._choose(self.real_field, "Real scans")),
            ),
        )
        form.addRow(
            "Synthetic volumes",
            _source_rows(
                self.session_synthetic,
                _folder_row(self.synthetic_field, lambda: self._choose(self.synthetic_field, "Synthetic volumes")),
            ),
        )
        form.addRow("Generator checkpoint", _folder_row(self.checkpoint_field, self._choose_checkpoint))
        form.addRow("", self.skip_leakage)
        form.addRow("Label", self.label_field)
        form.addRow("Positive class", self.positive_field)
        form.addRow("Task", self.task)
        form.addRow("Repeats", self.repeats)
        form.addRow("Epochs", self.epochs)
        form.addRow("Seed", self.seed)
        form.addRow("Output folder", _folder_row(self.out_field, lambda: self._choose(self.out_field, "Output folder")))

        self.table = QTableWidget(0, 0)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.plots = QLabel()
        self.plots.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidget(self.plots)
        scroll.setWidgetResizable(True)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.open_button = QPushButton("Open report…")
        self.open_button.clicked.connect(self.ask_open)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.table)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(900, 760)

    # -- choosing -----------------------------------------------------------------------------
    def _choose(self, field: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title)
        if folder:
            field.setText(folder)

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Generator checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.checkpoint_field.setText(path)

    def ask_open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder of an experiment")
        if folder:
            self.open_report(Path(folder))

    # -- viewing ------------------------------------------------------------------------------
    def open_report(self, out_dir: Path) -> bool:
        """Show ``out_dir/utility.json`` as a table and its plots; False (and a message) if unreadable."""
        from engine.utility.report import read_summary

        try:
            summary = read_summary(out_dir)
        except BrainSynthError as exc:
            self.report_error("Cannot open the report", str(exc))
            return False
        self.show_summary(summary, out_dir)
        return True

    def show_summary(self, summary: dict, out_dir: Path) -> None:
        from engine.utility.report import ARMS_PLOT, CURVE_PLOT, METRIC_NAMES, arm_rows

        self.summary = summary
        names = summary["metrics"]
        columns = ["arm", "n_real", "n_synthetic", *names, *[f"{n}_difference" for n in names], "p_value"]
        headers = ["arm", "real", "synthetic", *[METRIC_NAMES[n] for n in names]]
        headers += [f"Δ {METRIC_NAMES[n]} vs real" for n in names] + ["p"]
        rows = arm_rows(summary)
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(columns):
                self.table.setItem(r, c, QTableWidgetItem(row[key]))
        self.table.resizeColumnsToContents()
        pixmaps = [QPixmap(str(out_dir / name)) for name in (ARMS_PLOT, CURVE_PLOT) if (out_dir / name).is_file()]
        if pixmaps:
            height = sum(p.height() for p in pixmaps)
            width = max(p.width() for p in pixmaps)
            combined = QPixmap(width, height)
            combined.fill(Qt.GlobalColor.white)
            from PySide6.QtGui import QPainter

            painter = QPainter(combined)
            y = 0
            for p in pixmaps:
                painter.drawPixmap(0, y, p)
                y += p.height()
            painter.end()
            self.plots.setPixmap(combined)
        self.status.setText(f"{out_dir / 'utility.json'}: {len(rows)} arms; report.md beside it has every figure.")

    # -- running ------------------------------------------------------------------------------
    @property
    def uses_session_scans(self) -> bool:
        return self.session_real is not None and self.session_real.isChecked()

    @property
    def uses_session_volumes(self) -> bool:
        return self.session_synthetic is not None and self.session_synthetic.isChecked()

    def options(self):
        """The experiment's options from the fields (raises BrainSynthError on a bad value)."""
        from engine.utility.experiment import UtilityOptions

        label = self.label_field.text().strip()
        if not label:
            raise BrainSynthError("give the label column (e.g. group)")
        task = self.task.currentText()
        return UtilityOptions(
            label=label,
            positive=(self.positive_field.text().strip() or None) if task == "classify" else None,
            task=task,
            repeats=self.repeats.value(),
            epochs=self.epochs.value(),
            seed=self.seed.value(),
        )

    def run(self, *, overrides: dict | None = None) -> bool:
        """Start the experiment in the background (``overrides``: extra option values, for tests)."""
        from dataclasses import replace

        from brainsynth_gui.utility_session import iter_session_experiment

        if self.worker is not None:
            return False
        real, synthetic = self.real_field.text().strip(), self.synthetic_field.text().strip()
        out, checkpoint = self.out_field.text().strip(), self.checkpoint_field.text().strip()
        session = self.session or UtilitySession()
        try:
            if not (real or self.uses_session_scans) or not out:
                raise BrainSynthError("choose the real scans and an output folder")
            options = replace(self.options(), **(overrides or {}))
            if self.uses_session_scans:
                session.check_scans(options.label)
            if self.uses_session_volumes:
                session.check_volumes(options.label)
        except (BrainSynthError, TypeError) as exc:
            self.report_error("Cannot run", in_app_terms(str(exc)))
            return False
        self.events = []
        # The worker's own abort flag stops it between runs; this event (no reference to the
        # worker, so no cycle that Python would collect behind Qt's back) stops a run mid-way.
        stop = threading.Event()
        self._stop = stop
        worker = BackgroundWorker(
            iter_session_experiment,
            session,
            list(session.scans) if self.uses_session_scans else [real],
            [synthetic] if synthetic else [],
            options,
            out_dir=Path(out),
            use_session_volumes=self.uses_session_volumes,
            checkpoints=[checkpoint] if checkpoint else [],
            waive_leakage_check=self.skip_leakage.isChecked(),
            cancel=stop.is_set,
        )
        self.start_worker(
            worker,
            label="Checking the inputs…",
            title="Augmentation utility",
            status="Running…",
            connect={
                "yielded": self._progress,
                "returned": self._returned,
                "errored": self._failed,
                "aborted": self._cancelled,
            },
        )
        return True

    def cancel(self) -> None:
        """Stop the experiment within a few training steps (finished runs are kept)."""
        self._stop.set()
        super().cancel()

    def _progress(self, event) -> None:
        self.events.append(event)
        self.show_progress(f"{event.stage}: {event.message}", event.done, event.total)

    def _returned(self, result) -> None:
        self.show_summary(result.summary, result.out_dir)

    def _failed(self, message: str) -> None:
        self.report_error("The experiment stopped", in_app_terms(message))

    def _cancelled(self) -> None:
        self.status.setText("Cancelled; the finished runs are kept, and Run continues from them.")
