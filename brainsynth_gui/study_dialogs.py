"""Dialogs of the Study menu: pick a database, study and reader; create a study.

Only the organiser's dialogs (create) show file names; what a reader picks in
:class:`ReviewSetupDialog` is a study, a reader and the database file, never a case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.background import BackgroundWorker, create_worker
from engine.errors import BrainSynthError
from engine.export import ExportVolume
from engine.study import StudyDatabase, StudyError, default_database_path

DB_FILTER = "Study databases (*.sqlite *.sqlite3 *.db);;All files (*)"
SCAN_FILTER = "Volumes (*.nii *.nii.gz *.mgh *.mgz);;All files (*)"


class StudyPicker(QWidget):
    """Database file (default or another), then one of its studies and, optionally, a reader.

    Args:
        db_path: the database shown first (default: :func:`default_database_path`).
        with_reader: also offer the study's readers.
    """

    def __init__(self, db_path: Path | None = None, *, with_reader: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.db: StudyDatabase | None = None
        self.db_field = QLineEdit()
        self.db_field.setReadOnly(True)
        other = QPushButton("Other…")
        other.setToolTip("Open another study database file")
        other.clicked.connect(self._ask_db)
        default = QPushButton("Default")
        default.setToolTip(f"The database in your user data folder: {default_database_path()}")
        default.clicked.connect(lambda: self.set_db(default_database_path()))
        db_row = QHBoxLayout()
        db_row.addWidget(self.db_field, 1)
        db_row.addWidget(default)
        db_row.addWidget(other)
        self.study_box = QComboBox()
        self.study_box.currentTextChanged.connect(self._study_changed)
        self.reader_box = QComboBox()
        self.reader_box.currentTextChanged.connect(self._reader_changed)
        self.info = QLabel()
        self.info.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Database", db_row)
        form.addRow("Study", self.study_box)
        if with_reader:
            form.addRow("Reader", self.reader_box)
        else:
            self.reader_box.hide()
        form.addRow("", self.info)
        self.with_reader = with_reader
        self.set_db(db_path or default_database_path())

    def _ask_db(self) -> None:
        folder = str(Path(self.db_field.text()).parent)
        path, _ = QFileDialog.getOpenFileName(self, "Open a study database", folder, DB_FILTER)
        if path:
            self.set_db(Path(path))

    def set_db(self, path: Path) -> bool:
        """Open the database at ``path`` (created if missing) and list its studies."""
        if self.db is not None:
            self.db.close()
            self.db = None
        self.db_field.setText(str(path))
        self.study_box.clear()
        try:
            self.db = StudyDatabase(path)
            studies = self.db.list_studies()
        except BrainSynthError as exc:
            self.info.setText(f"<span style='color:#b00000'>{exc}</span>")
            return False
        self.study_box.addItems([s.name for s in studies])
        if not studies:
            self.info.setText("No studies in this database yet: create one (Study ▸ Create study…).")
        return True

    def _study_changed(self, name: str) -> None:
        self.reader_box.blockSignals(True)
        self.reader_box.clear()
        if self.db is not None and name:
            try:
                info = self.db.study(name)
            except BrainSynthError as exc:
                self.info.setText(str(exc))
                return
            self.reader_box.addItems(list(info.readers))
        self.reader_box.blockSignals(False)
        self._reader_changed(self.reader_box.currentText())

    def _reader_changed(self, reader: str) -> None:
        study = self.study
        if self.db is None or not study:
            return
        try:
            if self.with_reader and reader:
                p = self.db.session(study, reader).progress()
                waiting = f", {p.skipped} skipped for later" if p.skipped else ""
                done = " — finished" if p.done else ""
                self.info.setText(f"{p.answered} of {p.total} cases answered{waiting}{done}")
            else:
                info = self.db.study(study)
                self.info.setText(f"{info.n_cases} cases, readers: {', '.join(info.readers)}")
        except BrainSynthError as exc:
            self.info.setText(str(exc))

    @property
    def study(self) -> str:
        return self.study_box.currentText()

    @property
    def reader(self) -> str:
        return self.reader_box.currentText()

    def take_db(self) -> StudyDatabase | None:
        """Hand the open database to the caller (who closes it)."""
        db, self.db = self.db, None
        return db

    def close_db(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class StudyChoiceDialog(QDialog):
    """Choose a database, a study and (for review) a reader.

    Args:
        title: window title.
        ok_text: text of the accept button.
        with_reader: ask for a reader too.
        db_path: database shown first.
    """

    def __init__(
        self, parent: QWidget | None, *, title: str, ok_text: str, with_reader: bool, db_path: Path | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(560)
        self.picker = StudyPicker(db_path, with_reader=with_reader)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.picker)
        layout.addWidget(buttons)

    def _accept(self) -> None:
        if not self.picker.study or (self.picker.with_reader and not self.picker.reader):
            self.picker.info.setText("Choose a study" + (" and a reader" if self.picker.with_reader else ""))
            return
        self.accept()

    def reject(self) -> None:
        self.picker.close_db()
        super().reject()


# ----------------------------------------------------------------------------- create a study


@dataclass
class StudyRequest:
    """What the create dialog collected; :func:`create_study` carries it out (in a worker thread).

    Attributes:
        name: study name.
        real: real scans (files or folders).
        synthetic: synthetic volumes (files or folders), besides the session's volumes.
        readers: reader names.
        allow_changes: readers may change saved answers.
        session_volumes: volumes generated in this session (with their provenance), exported first.
        export_dir: where the session volumes are exported (they must stay there for the study).
        spec: the model spec of the session volumes.
        allow_synthetic_in_real: the organiser confirmed real-pool files whose sidecar says synthetic.
    """

    name: str
    real: list[Path]
    synthetic: list[Path]
    readers: list[str]
    allow_changes: bool = False
    session_volumes: list[ExportVolume] = field(default_factory=list)
    export_dir: Path | None = None
    spec: object = None
    allow_synthetic_in_real: bool = False


def safe_folder_name(name: str) -> str:
    """A study name as a folder name (letters, digits, ``-`` and ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "study"


def create_study(db_path: Path, request: StudyRequest, progress=None):
    """Export the session's volumes (if any), then create the study; returns its :class:`StudyInfo`.

    Runs off the interface thread (it opens its own connection: SQLite allows several).

    Raises:
        BrainSynthError: from the export or from :meth:`StudyDatabase.create_study`.
    """
    from engine.errors import ExportError
    from engine.export import export_batch

    if not request.name.strip():
        raise StudyError("a study needs a name")
    if not request.readers:
        raise StudyError("a study needs at least one reader name")
    if not request.real:
        raise StudyError("the real pool is empty; add real scans (files or a folder)")
    synthetic = list(request.synthetic)
    exported: list[Path] = []
    volumes = request.session_volumes
    if volumes:
        if request.export_dir is None or request.spec is None:
            raise ExportError("choose a folder for the generated volumes of this session")
        # All or nothing: a clash writes nothing, a failure midway removes what was written.
        exported = export_batch(volumes, spec=request.spec, out_dir=request.export_dir, prefix="synthetic")
    try:
        with StudyDatabase(db_path) as db:
            return db.create_study(
                name=request.name,
                real=request.real,
                synthetic=synthetic + exported,
                readers=request.readers,
                allow_changes=request.allow_changes,
                allow_synthetic_in_real=request.allow_synthetic_in_real,
                progress=progress,
            )
    except BaseException:
        _remove_exports(exported)  # no study refers to them: leave nothing behind
        raise


def check_blinding(request: StudyRequest, progress=None):
    """The leakage check of the pools as the study would display them (:mod:`engine.study.blinding`).

    Runs off the interface thread; the session's volumes are exported to a temporary folder first
    (the check measures files through the display pipeline, exactly as readers would see them).

    Raises:
        BrainSynthError: an empty pool, or a file that cannot be displayed (named).
    """
    import tempfile

    from engine.export import export_batch
    from engine.study.blinding import check_files
    from engine.study.display import DisplaySettings
    from engine.study.organiser import display_settings_for
    from engine.volumes import find_volumes

    if not request.real:
        raise StudyError("the real pool is empty; add real scans (files or a folder)")
    real = find_volumes(request.real)
    synthetic = find_volumes(request.synthetic) if request.synthetic else []
    with tempfile.TemporaryDirectory(prefix="brainsynth-blinding-") as folder:
        if request.session_volumes and request.spec is not None:
            synthetic += export_batch(request.session_volumes, spec=request.spec, out_dir=Path(folder))
        if not synthetic:
            raise StudyError("the synthetic pool is empty; add synthetic volumes or the session's volumes")
        settings = (
            DisplaySettings.from_spec(request.spec)
            if request.spec is not None and request.session_volumes
            else display_settings_for(None, synthetic)
        )
        return check_files(real, synthetic, settings, progress=progress)


def _remove_exports(paths: list[Path]) -> None:
    from engine.export import sidecar_path

    for nii in paths:
        nii.unlink(missing_ok=True)
        sidecar_path(nii).unlink(missing_ok=True)


class _PathList(QWidget):
    """A list of files and folders with Add files… / Add folder… / Remove."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.list = QListWidget()
        self.list.setMinimumHeight(70)
        add_files = QPushButton("Add files…")
        add_files.clicked.connect(self._add_files)
        add_folder = QPushButton("Add folder…")
        add_folder.clicked.connect(self._add_folder)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.list.takeItem(self.list.row(i)) for i in self.list.selectedItems()])
        buttons = QVBoxLayout()
        for b in (add_files, add_folder, remove):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    def _add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, f"Add {self.what}", "", SCAN_FILTER)
        self.add([Path(p) for p in paths])

    def _add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Add a folder of {self.what}")
        if folder:
            self.add([Path(folder)])

    def add(self, paths) -> None:
        known = set(self.paths())
        for path in paths:
            if Path(path) not in known:
                self.list.addItem(str(path))

    def paths(self) -> list[Path]:
        return [Path(self.list.item(i).text()) for i in range(self.list.count())]


class CreateStudyDialog(QDialog):
    """Set up a study: name, real and synthetic pools, readers, whether answers may change.

    Creating runs in the background (every file goes through the display pipeline once, so a
    file that cannot be shown is reported now, by name) with a progress bar.

    Args:
        parent: the main window.
        db_path: the database the study goes into.
        session_scans: real scans open in the app (offered with one click).
        session_volumes: the volumes generated in this session.
        spec: the model spec of those volumes.
        left_out: which open scans are not offered and why (view-only scans not in MNI space).
    """

    def __init__(
        self,
        parent: QWidget | None,
        *,
        db_path: Path | None = None,
        session_scans: list[Path] | None = None,
        session_volumes: list[ExportVolume] | None = None,
        spec=None,
        left_out: str = "",
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Create a reader study")
        self.setMinimumWidth(640)
        self.db_path = Path(db_path) if db_path is not None else default_database_path()
        self.session_scans = list(session_scans or [])
        self.session_volumes = list(session_volumes or [])
        self.spec = spec
        self.created = None
        self.errors: list[str] = []
        self._job: BackgroundWorker | None = None
        self._blinding_job: BackgroundWorker | None = None
        #: The last leakage check's result (an :class:`engine.study.blinding.BlindingReport`), or None.
        self.blinding = None

        self.db_field = QLineEdit(str(self.db_path))
        self.db_field.setReadOnly(True)
        db_other = QPushButton("Other…")
        db_other.clicked.connect(self._ask_db)
        db_row = QHBoxLayout()
        db_row.addWidget(self.db_field, 1)
        db_row.addWidget(db_other)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. Turing test, model v3")
        self.name.textChanged.connect(self._name_changed)
        self.real = _PathList("real scans")
        use_scans = QPushButton(f"Add the {len(self.session_scans)} real scans open in this session")
        use_scans.setEnabled(bool(self.session_scans))
        use_scans.clicked.connect(lambda: self.real.add(self.session_scans))
        self.synthetic = _PathList("synthetic volumes")
        self.use_session = QCheckBox(f"The {len(self.session_volumes)} volumes generated in this session, exported to:")
        self.use_session.setEnabled(bool(self.session_volumes))
        self.export_dir = QLineEdit()
        self.export_dir.setEnabled(False)
        self.use_session.toggled.connect(self.export_dir.setEnabled)
        self.readers = QLineEdit()
        self.readers.setPlaceholderText("comma-separated, e.g. Dr A, Dr B")
        self.allow_changes = QCheckBox("Readers may change saved answers (every change is kept)")
        self.blinding_button = QPushButton("Check blinding")
        self.blinding_button.setToolTip(
            "Measure simple image statistics of every case as readers would see it (histogram, quantisation, "
            "background noise, smoothness, brain volume) and test whether they tell real from synthetic"
        )
        self.blinding_button.clicked.connect(self.check_blinding)
        self.blinding_label = QLabel()
        self.blinding_label.setWordWrap(True)
        self.blinding_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.hide()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        form.addRow("Database", db_row)
        form.addRow("Name", self.name)
        form.addRow("Real scans", self.real)
        form.addRow("", use_scans)
        self.left_out = QLabel(left_out)
        self.left_out.setWordWrap(True)
        if left_out:
            form.addRow("", self.left_out)
        form.addRow("Synthetic volumes", self.synthetic)
        form.addRow("", self.use_session)
        form.addRow("", self.export_dir)
        form.addRow("Readers", self.readers)
        form.addRow("", self.allow_changes)
        form.addRow("Leakage check", self.blinding_button)
        form.addRow("", self.blinding_label)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        self.buttons.accepted.connect(self.create)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self._name_changed("")

    def _ask_db(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Study database", str(self.db_path), DB_FILTER, options=QFileDialog.Option.DontConfirmOverwrite
        )
        if path:
            self.db_path = Path(path)
            self.db_field.setText(path)
            self._name_changed(self.name.text())

    def _name_changed(self, name: str) -> None:
        if not self.export_dir.isModified():
            folder = self.db_path.parent / "study-volumes" / safe_folder_name(name.strip())
            self.export_dir.setText(str(folder))

    def request(self) -> StudyRequest:
        """The study as the fields describe it."""
        use_session = self.use_session.isChecked() and bool(self.session_volumes)
        return StudyRequest(
            name=self.name.text().strip(),
            real=self.real.paths(),
            synthetic=self.synthetic.paths(),
            readers=[r.strip() for r in self.readers.text().split(",") if r.strip()],
            allow_changes=self.allow_changes.isChecked(),
            session_volumes=self.session_volumes if use_session else [],
            export_dir=Path(self.export_dir.text()) if use_session else None,
            spec=self.spec,
        )

    def create(self) -> None:
        """Create the study in the background; the dialog closes when it is done."""
        if self._job is not None:
            return
        request = self.request()
        if not request.synthetic and not request.session_volumes:
            self._fail("Add synthetic volumes (files or a folder), or tick the volumes generated in this session")
            return
        if not self._confirm_pools(request):
            return
        self.buttons.setEnabled(False)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.message.setText("Checking every volume through the display pipeline…")
        self._job = create_worker(
            create_study,
            self.db_path,
            request,
            report_as="progress",
            connect={
                "yielded": self._show_progress,
                "returned": self._created,
                "errored": self._fail,
                "finished": self._job_finished,
            },
        )

    def check_blinding(self) -> None:
        """Run the leakage check on the pools in the background; the result shows under the button."""
        if self._blinding_job is not None:
            return
        self.blinding = None
        self.blinding_button.setEnabled(False)
        self.blinding_label.setText("Measuring every case as readers would see it…")
        self._blinding_job = create_worker(
            check_blinding,
            self.request(),
            report_as="progress",
            connect={
                "yielded": self._blinding_progress,
                "returned": self._blinding_done,
                "errored": self._blinding_failed,
                "finished": self._blinding_finished,
            },
        )

    def _blinding_progress(self, report: tuple[int, int]) -> None:
        done, total = report
        self.blinding_label.setText(f"Measuring every case as readers would see it: {done} of {total}")

    def _blinding_done(self, report) -> None:
        self.blinding = report
        lines = [_escape(line) for line in report.lines()]
        colour = "#b00000" if report.leaks else "#206020"
        self.blinding_label.setText(f"<span style='color:{colour}'>" + "<br>".join(lines) + "</span>")

    def _blinding_failed(self, message: str) -> None:
        self.errors.append(message)
        self.blinding_label.setText(f"<span style='color:#b00000'>{_escape(message)}</span>")

    def _blinding_finished(self) -> None:
        job, self._blinding_job = self._blinding_job, None
        if job is not None:
            job.deleteLater()
        self.blinding_button.setEnabled(True)

    def _confirm_pools(self, request: StudyRequest) -> bool:
        """Ask before using real-pool files that say they are synthetic, and before unbalanced pools."""
        from engine.study.case_files import pool_balance_warning, synthetic_files
        from engine.volumes import find_volumes

        try:
            real = find_volumes(request.real)
            synthetic = find_volumes(request.synthetic) if request.synthetic else []
        except BrainSynthError:
            return True  # create_study reports the empty or unreadable pool by name
        mislabelled = synthetic_files(real)
        if mislabelled:
            names = ", ".join(p.name for p in mislabelled[:3]) + (" …" if len(mislabelled) > 3 else "")
            answer = QMessageBox.question(
                self,
                "Synthetic files in the real pool",
                f"{len(mislabelled)} file(s) in the real pool have a sidecar saying they are synthetic ({names}).\n\n"
                "Counted as real, they make the study's truth wrong. Use them as real scans anyway?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                self._fail("Move the synthetic files out of the real pool")
                return False
            request.allow_synthetic_in_real = True
        warning = pool_balance_warning(len(real), len(synthetic) + len(request.session_volumes))
        if warning:
            answer = QMessageBox.question(
                self,
                "Unbalanced pools",
                warning[0].upper() + warning[1:] + ".\n\nCreate the study anyway?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
        return True

    def _show_progress(self, report: tuple[int, int]) -> None:
        done, total = report
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.message.setText(f"Checking every volume through the display pipeline: {done} of {total}")

    def _job_finished(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.deleteLater()
        self.buttons.setEnabled(True)
        self.progress.hide()

    def _created(self, info) -> None:
        self.created = info
        self.message.setText(f"Created study {info.name!r}: {info.n_cases} cases, readers {', '.join(info.readers)}.")
        self.accept()

    def _fail(self, message: str) -> None:
        self.errors.append(message)
        self.message.setText(f"<span style='color:#b00000'>{_escape(message)}</span>")

    def wait(self) -> None:
        """Block until a running creation or leakage check has finished (tests, closing)."""
        for job in (self._job, self._blinding_job):
            if job is not None:
                job.wait()

    def reject(self) -> None:
        if self._job is not None:
            return  # creating; it cannot be interrupted halfway (nothing is written until the end)
        if self._blinding_job is not None:
            self._blinding_job.wait()  # a check only reads; let it end before the dialog goes
        super().reject()


def _escape(text: str) -> str:
    from html import escape

    return escape(text)


class OrganiserPassphraseDialog(QDialog):
    """The organiser's step before results and truth-bearing exports of a study.

    A study without a passphrase gets one here (typed twice); a study with one asks for it.
    The passphrase is checked and stored (hashed) by
    :meth:`engine.study.StudyDatabase.check_organiser_passphrase` /
    :meth:`~engine.study.StudyDatabase.set_organiser_passphrase`.

    Args:
        db_path: the study database.
        study: the study name.
    """

    def __init__(self, parent: QWidget | None, *, db_path: Path, study: str) -> None:
        super().__init__(parent)
        self.db_path = Path(db_path)
        self.study = study
        with StudyDatabase(self.db_path) as db:
            self.setting = not db.has_organiser_passphrase(study)
        self.setWindowTitle("Organiser passphrase")
        self.first = QLineEdit()
        self.first.setEchoMode(QLineEdit.EchoMode.Password)
        self.second = QLineEdit()
        self.second.setEchoMode(QLineEdit.EchoMode.Password)
        self.message = QLabel()
        self.message.setWordWrap(True)
        form = QFormLayout()
        if self.setting:
            intro = (
                f"Results of <b>{_escape(study)}</b> show which cases are real. Set an organiser passphrase "
                "for this study so that readers cannot open them; you will be asked for it from now on."
            )
            form.addRow("New passphrase:", self.first)
            form.addRow("Again:", self.second)
        else:
            intro = f"Results of <b>{_escape(study)}</b> are for the study's organiser. Enter the organiser passphrase."
            form.addRow("Passphrase:", self.first)
            self.second.hide()
        top = QLabel(intro)
        top.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(top)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.first.setFocus()

    def _accept(self) -> None:
        try:
            with StudyDatabase(self.db_path) as db:
                if self.setting:
                    if self.first.text() != self.second.text():
                        raise StudyError("the two passphrases differ")
                    db.set_organiser_passphrase(self.study, self.first.text())
                elif not db.check_organiser_passphrase(self.study, self.first.text()):
                    raise StudyError("that is not this study's organiser passphrase")
        except BrainSynthError as exc:
            self.message.setText(f"<span style='color:#b00000'>{_escape(str(exc))}</span>")
            self.first.selectAll()
            return
        self.accept()
