"""The main window: assembles the panels and views over one shared state and runs the actions.

Layout: the Model, Generate, Generated volumes and Real scans panels dock on the left; the
display controls sit above the orthogonal viewer (synthetic row over real row); the
denoising timeline runs along the bottom; the cursor readout is in the status bar.

Errors a user can act on (:class:`engine.errors.BrainSynthError`) are shown in a dialog and the
app keeps running; with ``quiet=True`` (the ``--screenshot`` mode) they go to stderr instead,
since nobody is there to close a dialog. :attr:`MainWindow.errors` keeps every reported
message, for tests and for the screenshot mode's exit status.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QEventLoop, QItemSelectionModel, QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMenu,
    QMessageBox,
    QProgressBar,
    QProgressDialog,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.about import add_help_menu
from brainsynth_gui.animation import animation_frames
from brainsynth_gui.background import BackgroundWorker, RunningWorkers, create_worker
from brainsynth_gui.checkpoint_info import NO_MODEL_HTML, describe_checkpoint, summarise_checkpoint
from brainsynth_gui.display_panel import DisplayPanel
from brainsynth_gui.error_reporting import ErrorReportingWindow
from brainsynth_gui.export_dialogs import AnimationDialog, export_nifti
from brainsynth_gui.generation_panel import GenerationPanel
from brainsynth_gui.generation_request import GenerationChoices
from brainsynth_gui.generation_worker import GenerationWorker, ProgressReport
from brainsynth_gui.recent_files import RecentFiles
from brainsynth_gui.state import ViewerState
from brainsynth_gui.timeline import TimelineBar
from brainsynth_gui.viewer import OrthoViewer
from brainsynth_gui.volume_library import RealScans, SyntheticEntry, SyntheticLibrary, model_to_display
from engine import __version__
from engine.checkpoint import TORCH_SUFFIXES, Checkpoint, load_checkpoint
from engine.errors import BrainSynthError, CancelledError, ExportError, NotInMNISpaceError, TargetExistsError
from engine.specs import PRESETS, ModelSpec

CHECKPOINT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.pt *.pth *.ckpt);;All files (*)"
SCAN_FILTER = "Scans (*.nii *.nii.gz *.mgh *.mgz);;All files (*)"


class MainWindow(ErrorReportingWindow):
    """The BrainSynth desktop window.

    Args:
        recent: where recent files are kept (default: the user's config folder).
        quiet: report errors on stderr instead of dialogs (headless screenshots).

    Signals:
        generation_finished(bool): after every generation run; True when it was cancelled.
    """

    generation_finished = Signal(bool)

    def __init__(self, *, recent: RecentFiles | None = None, quiet: bool = False) -> None:
        super().__init__(quiet=quiet)
        from engine.device import available_devices, describe_device, resolve_device

        self.setWindowTitle(f"BrainSynth {__version__}")
        self.setAcceptDrops(True)
        self.recent = recent or RecentFiles()
        self.checkpoint: Checkpoint | None = None
        self._checkpoint_job: BackgroundWorker | None = None  # a checkpoint being loaded
        self.spec: ModelSpec = PRESETS["demo"]  # the grid real scans use until a model is open
        self.state = ViewerState.for_grid(self.spec.grid)  # layers "synthetic" and "real"
        self.synthetic_layer = self.state.layer("synthetic")
        self.real_layer = self.state.layer("real")
        self.library = SyntheticLibrary()
        self.scans = RealScans()
        self.worker: GenerationWorker | None = None
        self._model_cache: dict = {}
        self._follow_preview = False
        self._current: SyntheticEntry | None = None
        self.last_dir: Path | None = None  # where the last file dialog was answered
        self._exported: set[int] = set()  # numbers of generated volumes written to disk
        self._shown_scan: Path | None = None  # the real scan on screen
        self._scan_jobs = RunningWorkers()
        self.review_windows: list = []  # open review-mode windows (Study ▸ Review study…)
        self.native_windows: dict[Path, QWidget] = {}  # scans not in MNI space, viewed as they are
        self._scan_labels = None  # real scans' participants.tsv labels for the model's covariates
        self._match_message: tuple[Path, str] | None = None  # the scan a match chose, and why
        self.study_db_path: Path | None = None  # the study database last used (None: the default)
        # sha256 → file of every checkpoint loaded: the leakage check of the augmentation utility
        # needs the file (its training split) that made each generated volume.
        self.checkpoint_files: dict[str, Path] = {}

        # Central area: display controls, viewer, timeline.
        self.viewer = OrthoViewer(self.state)
        self.display_panel = DisplayPanel(self.state)
        self.timeline = TimelineBar(self.state.trajectory)
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.display_panel)
        column.addWidget(self.viewer, 1)
        column.addWidget(self.timeline)
        self.setCentralWidget(central)

        # Left dock: model, generation, generated volumes, real scans.
        self.model_info = QLabel(NO_MODEL_HTML)
        self.model_info.setWordWrap(True)
        self.model_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # The full metadata folds away, so the lists below show more than a few rows.
        self.model_details = QLabel()
        self.model_details.setWordWrap(True)
        self.model_details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_details.hide()
        self.details_button = QToolButton()
        self.details_button.setText("Model details")
        self.details_button.setCheckable(True)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setAutoRaise(True)
        self.details_button.hide()
        self.details_button.toggled.connect(self._toggle_model_details)
        open_model = QPushButton("Open checkpoint…")
        open_model.clicked.connect(self.ask_checkpoint)
        self.checkpoint_progress = QProgressBar()
        self.checkpoint_progress.setRange(0, 1000)
        self.checkpoint_progress.setFormat("Loading checkpoint… %p%")
        self.checkpoint_progress.setToolTip("Reading the checkpoint; the rest of the window stays usable")
        self.checkpoint_progress.hide()
        try:
            auto = describe_device(resolve_device("auto"))
        except Exception:  # describing is cosmetic; never block start-up on it
            auto = ""
        self.generation_panel = GenerationPanel(available_devices(), auto)
        self.generation_panel.generate_requested.connect(self.start_generation)
        self.generation_panel.cancel_requested.connect(self.cancel_generation)
        self._list_removers: dict[QListWidget, Callable[[], None]] = {}
        self.volume_list = QListWidget()
        self.volume_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.volume_list.setToolTip(
            "Generated volumes; select several to export them together (Delete removes, right-click for more)"
        )
        self.volume_list.currentRowChanged.connect(self._volume_chosen)
        self.scan_list = QListWidget()
        self.scan_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.scan_list.setToolTip("Real scans, resampled onto the model grid for comparison (Delete removes)")
        self.scan_list.currentRowChanged.connect(self._scan_chosen)
        for widget, which, remove in (
            (self.volume_list, "volumes", self.remove_selected_volumes),
            (self.scan_list, "scans", self.remove_selected_scans),
        ):
            widget.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            widget.customContextMenuRequested.connect(lambda pos, w=which: self._list_menu(w, pos))
            widget.installEventFilter(self)  # Delete / Backspace remove (see eventFilter)
            self._list_removers[widget] = remove
        open_scan = QPushButton("Open scan…")
        open_scan.clicked.connect(self.ask_scans)
        open_folder = QPushButton("Open folder…")
        open_folder.clicked.connect(self.ask_scan_folder)
        scan_buttons = QHBoxLayout()
        scan_buttons.addWidget(open_scan)
        scan_buttons.addWidget(open_folder)
        scans_page = QWidget()
        scans_layout = QVBoxLayout(scans_page)
        scans_layout.setContentsMargins(0, 0, 0, 0)
        scans_layout.addWidget(self.scan_list)
        scans_layout.addLayout(scan_buttons)
        # Tabs keep both lists visible without scrolling the panel on a laptop screen.
        self.lists = QTabWidget()
        self.lists.addTab(self.volume_list, "Generated volumes")
        self.lists.addTab(scans_page, "Real scans")
        self.lists.setMinimumHeight(160)

        side = QWidget()
        panel = QVBoxLayout(side)
        panel.addWidget(_heading("Model"))
        panel.addWidget(self.model_info)
        panel.addWidget(self.details_button)
        panel.addWidget(self.model_details)
        panel.addWidget(self.checkpoint_progress)
        panel.addWidget(open_model)
        panel.addWidget(_heading("Generate"))
        panel.addWidget(self.generation_panel)
        panel.addWidget(self.lists, 1)
        scroll = _SidePanelScroll()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(side)
        self.side_scroll = scroll
        dock = QDockWidget("Session", self)
        dock.setObjectName("session")
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        dock.setWidget(scroll)
        dock.setMinimumWidth(320)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)

        self.readout = QLabel()
        self.statusBar().addPermanentWidget(self.readout)
        for observable in (self.state.cursor, self.synthetic_layer, self.real_layer, self.state.display):
            observable.subscribe(self._update_readout)
        self.state.trajectory.subscribe(self._show_current)
        self._build_menus()
        self._update_generate_enabled()
        self._update_readout()
        # Keys go to the axial view first (slice stepping), not to the first spin box.
        self.viewer.view("synthetic", "axial").setFocus()

    # -- menus and shortcuts ----------------------------------------------------------------

    def _action(self, menu, text: str, slot, shortcut: str | QKeySequence | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open checkpoint…", self.ask_checkpoint, "Ctrl+O")
        self.recent_checkpoints_menu = file_menu.addMenu("Recent checkpoints")
        file_menu.addSeparator()
        self._action(file_menu, "Open &scan…", self.ask_scans, "Ctrl+Shift+O")
        self._action(file_menu, "Open scan &folder…", self.ask_scan_folder)
        self.recent_scans_menu = file_menu.addMenu("Recent scans")
        file_menu.addSeparator()
        self._action(file_menu, "Open study &pack…", self.ask_pack)
        file_menu.addSeparator()
        self._action(file_menu, "&Export selected volumes as NIfTI…", self.ask_export_nifti, "Ctrl+E")
        self._action(file_menu, "Export denoising &animation (GIF/MP4)…", self.ask_export_animation, "Ctrl+Shift+E")
        self._action(file_menu, "Save &PNG of the views…", self.ask_save_png, "Ctrl+Shift+S")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.quit_requested, QKeySequence.StandardKey.Quit)
        file_menu.aboutToShow.connect(self._fill_recent_menus)

        generate_menu = bar.addMenu("&Generate")
        self.generate_action = self._action(generate_menu, "&Generate", lambda: self.start_generation(), "Ctrl+G")
        self._action(generate_menu, "&Cancel", self.cancel_generation, "Esc")

        view_menu = bar.addMenu("&View")
        orientation = self.state.orientation
        self._action(
            view_menu,
            "Toggle &radiological / neurological",
            lambda: orientation.set_radiological(not orientation.radiological),
            "R",
        )
        zoom = self.state.zoom
        self._action(view_menu, "Zoom &in", lambda: zoom.zoom_by(1.25), "Ctrl+=")
        self._action(view_menu, "Zoom &out", lambda: zoom.zoom_by(0.8), "Ctrl+-")
        self._action(view_menu, "&Fit", zoom.reset, "Ctrl+0")
        wl = self.state.window_level
        self._action(view_menu, "Reset &window/level", lambda: wl.set(window=1000, level=500), "Ctrl+R")
        view_menu.addSeparator()
        self._action(view_menu, "Show a real scan of the same &group", self.show_matching_scan, "Ctrl+M")

        study_menu = bar.addMenu("&Study")
        self._action(study_menu, "&Review study…", self.ask_review)
        self._action(study_menu, "Re&sults…", self.ask_results)
        study_menu.addSeparator()
        self._action(study_menu, "&Create study…", self.ask_create_study)

        tools_menu = bar.addMenu("T&ools")
        self._action(tools_menu, "&Evaluate generated volumes…", self.ask_evaluate)
        self._action(tools_menu, "&Augmentation utility…", self.ask_utility)

        timeline_menu = bar.addMenu("&Timeline")
        trajectory = self.state.trajectory
        self._action(timeline_menu, "&Play / pause", trajectory.toggle_playing, "Space")
        self._action(timeline_menu, "P&revious frame", lambda: trajectory.step_by(-1), ",")
        self._action(timeline_menu, "&Next frame", lambda: trajectory.step_by(1), ".")
        self._action(timeline_menu, "&First frame", lambda: trajectory.set_index(0), "Home")
        last = lambda: trajectory.set_index(len(trajectory) - 1)  # noqa: E731
        self._action(timeline_menu, "&Last frame (finished volume)", last, "End")
        self._action(
            timeline_menu,
            "Show x_t / predicted x_0",
            lambda: trajectory.set_kind("x0" if trajectory.kind == "x_t" else "x_t"),
            "X",
        )
        self.about_action = add_help_menu(self)

    def _fill_recent_menus(self) -> None:
        for menu, kind, opener in (
            (self.recent_checkpoints_menu, "checkpoints", self.open_checkpoint),
            (self.recent_scans_menu, "scans", lambda p: self.open_scans([p])),
        ):
            menu.clear()
            paths = self.recent.get(kind)
            for path in paths:
                action = menu.addAction(str(path))
                action.triggered.connect(lambda _c=False, p=path, o=opener: o(p))
            menu.setEnabled(bool(paths))

    # -- checkpoint -------------------------------------------------------------------------

    def ask_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open checkpoint", self._start_dir(), CHECKPOINT_FILTER)
        if path:
            self._remember_dir(path)
            self.open_checkpoint(Path(path))

    def ask_preset(self, path: Path) -> str | None:
        """The preset a plain MONAI checkpoint was trained with, chosen by the user (None: cancelled or headless)."""
        from PySide6.QtWidgets import QInputDialog

        from engine.specs import PRESETS

        if self.quiet:
            return None  # headless: the engine's message says a preset is needed
        names = list(PRESETS)
        describe = {
            name: f"{name} — {' x '.join(map(str, spec.grid.shape))} grid, channels {tuple(spec.unet.channels)}"
            for name, spec in PRESETS.items()
        }
        default = names.index("paper") if "paper" in names else 0
        choice, ok = QInputDialog.getItem(
            self,
            "Which model is this?",
            f"{path.name} is a plain PyTorch/MONAI state_dict: it holds weights but not which network, grid "
            "and noise schedule they belong to. Choose the preset it was trained with:",
            [describe[n] for n in names],
            default,
            False,
        )
        if not ok:
            return None
        return names[[describe[n] for n in names].index(choice)]

    def open_checkpoint(self, path: str | Path | None = None, *, wait: bool = False) -> bool:
        """Load ``path`` in the background, or the bundled demo model when None (if installed).

        The file is read in a :class:`~brainsynth_gui.background.BackgroundWorker` with a
        progress bar in the Model panel; the window stays usable meanwhile and the model in
        use (if any) stays until the new one has loaded. A failed load is reported once and
        keeps the previous model.

        Args:
            path: the checkpoint file, or None for the bundled demo model.
            wait: return only when the load has ended (the event loop runs meanwhile), for
                callers that need the model next (``--generate``, tests).

        Returns:
            Without ``wait``: True when the load has started. With ``wait``: True when the
            model is loaded.
        """
        from engine.resources import bundled_checkpoint

        if path is None:
            path = bundled_checkpoint()
            if path is None:
                self.statusBar().showMessage("No model loaded: open a checkpoint (Ctrl+O)")
                return False
        if self.worker is not None:
            self.report_error("Cannot open checkpoint", "a generation is running; cancel it before changing the model")
            return False
        if self._checkpoint_job is not None:
            self.report_error("Cannot open checkpoint", "another checkpoint is loading; wait for it to finish")
            return False
        path = Path(path)
        preset = None
        if path.suffix.lower() in TORCH_SUFFIXES:
            # A plain MONAI state_dict holds weights only: which network it is must be chosen.
            preset = self.ask_preset(path)
            if preset is None and not self.quiet:
                return False
        job = (
            BackgroundWorker(load_checkpoint, path, preset=preset, report_as="progress")
            if preset is not None
            else BackgroundWorker(load_checkpoint, path, report_as="progress")
        )
        loaded: list[Checkpoint] = []
        job.yielded.connect(self._checkpoint_progress)
        job.returned.connect(loaded.append)
        job.returned.connect(lambda checkpoint: self._checkpoint_loaded(path, checkpoint))
        job.errored.connect(lambda message: self.report_error("Cannot open checkpoint", message))
        job.finished.connect(self._checkpoint_job_done)
        self._checkpoint_job = job
        self.checkpoint_progress.setValue(0)
        self.checkpoint_progress.show()
        self.statusBar().showMessage(f"Loading {path.name}…")
        self._update_generate_enabled()
        loop = QEventLoop() if wait else None
        if loop is not None:
            job.finished.connect(loop.quit)  # queued after _checkpoint_job_done: the window is settled
        job.start()
        if loop is None:
            return True
        loop.exec()
        return bool(loaded) and self.checkpoint is loaded[0]

    @property
    def loading_checkpoint(self) -> bool:
        """Whether a checkpoint is being read in the background."""
        return self._checkpoint_job is not None

    def _checkpoint_progress(self, fraction: float) -> None:
        self.checkpoint_progress.setValue(round(1000 * float(fraction)))

    def _checkpoint_loaded(self, path: Path, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        if checkpoint.sha256:
            self.checkpoint_files[checkpoint.sha256] = path
        self._model_cache.clear()
        self.recent.add("checkpoints", path)
        self.model_info.setText(summarise_checkpoint(checkpoint))
        self.model_details.setText(describe_checkpoint(checkpoint))
        self.details_button.show()
        self.generation_panel.set_model(checkpoint.spec)
        self._set_spec(checkpoint.spec)
        self.statusBar().showMessage(f"Loaded {checkpoint.path}", 5000)

    def _checkpoint_job_done(self) -> None:
        job, self._checkpoint_job = self._checkpoint_job, None
        if job is not None:
            job.wait()
            job.deleteLater()
        self.checkpoint_progress.hide()
        self._update_generate_enabled()

    def _update_generate_enabled(self) -> None:
        """Generate is offered only with a model loaded, none loading, and no generation running."""
        ready = self.checkpoint is not None and self._checkpoint_job is None and self.worker is None
        self.generation_panel.generate_button.setEnabled(ready)
        self.generate_action.setEnabled(ready)

    def _set_spec(self, spec: ModelSpec) -> None:
        if spec.grid != self.spec.grid and len(self.library):
            self.library.clear()
            self.volume_list.clear()
            self.lists.setTabText(0, "Generated volumes")
            self._current = None
            self.state.trajectory.clear()
            self.synthetic_layer.set(None)
            self.statusBar().showMessage("New model grid: the previous volumes were removed from the list", 8000)
        self.spec = spec
        self.state.set_grid(spec.grid)
        self._scan_chosen(self.scan_list.currentRow())

    # -- real scans -------------------------------------------------------------------------

    def ask_scans(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open real scans", self._start_dir(), SCAN_FILTER)
        if paths:
            self._remember_dir(paths[0])
            self.open_scans([Path(p) for p in paths])

    def ask_scan_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of real scans", self._start_dir())
        if folder:
            self._remember_dir(folder, is_dir=True)
            self.open_scans([Path(folder)])

    def _start_dir(self) -> str:
        """Where file dialogs open: the folder used last (this session), else the home folder."""
        folder = self.last_dir
        return str(folder) if folder is not None and folder.is_dir() else str(Path.home())

    def _remember_dir(self, path: str | Path, *, is_dir: bool = False) -> None:
        path = Path(path)
        self.last_dir = path if is_dir else path.parent

    def open_scans(self, paths: list[str | Path]) -> bool:
        """Add scans (files or folders) to the Real scans list and show the first new one."""
        try:
            new = self.scans.add(paths)
        except BrainSynthError as exc:
            self.report_error("Cannot open scans", str(exc))
            return False
        for path in paths:
            self.recent.add("scans", path)
        first_new = self.scan_list.count()
        for path in new:
            self.scan_list.addItem(self._scan_text(path))
        self.lists.setTabText(1, f"Real scans ({len(self.scans)})")
        if new:
            self.scan_list.setCurrentRow(first_new, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        return True

    def open_demo_scans(self) -> bool:
        """Open the bundled demo scans, if this installation has them."""
        from engine.resources import bundled_demo_scans

        scans = bundled_demo_scans()
        return self.open_scans(scans) if scans else False

    def _scan_chosen(self, row: int) -> None:
        """Show scan ``row``; preparing it (resampling onto the grid) runs in the background."""
        if row < 0:
            return  # nothing selected: the scan on screen stays (it is cleared when removed)
        spec = self.spec
        path = self.scans.paths[row]
        if path in self.scans.view_only:
            self._show_view_only(path)
            return
        cached = self.scans.cached(row, spec)
        if cached is not None:
            self._show_scan(path, spec, cached)
            return
        job = create_worker(
            self._prepared_or_not_in_mni,
            row,
            spec,
            start=False,
            connect={
                "returned": lambda prepared: self._show_scan(path, spec, prepared),
                "errored": lambda message: self._scan_failed(path, message),
            },
        )
        self.statusBar().showMessage(f"Preparing {path.name} on the model grid…")
        self._scan_jobs.start(job)

    def _toggle_model_details(self, shown: bool) -> None:
        self.model_details.setVisible(shown)
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def _current_scan(self) -> Path | None:
        row = self.scan_list.currentRow()
        return self.scans.paths[row] if 0 <= row < len(self.scans) else None

    def _prepared_or_not_in_mni(self, row: int, spec: ModelSpec):
        """The prepared scan, or the :class:`NotInMNISpaceError` itself (runs in a worker): a scan that
        is not registered is offered for preprocessing rather than reported as a failure."""
        try:
            return self.scans.prepared(row, spec)
        except NotInMNISpaceError as exc:
            return exc

    def _show_scan(self, path: Path, spec: ModelSpec, prepared) -> None:
        if isinstance(prepared, NotInMNISpaceError):
            self._offer_preprocessing(path, str(prepared))
            return
        if path != self._current_scan() or spec is not self.spec:
            return  # the user moved on while it was being prepared
        self._shown_scan = path
        self.real_layer.set(prepared.data, path.name)
        matched = self._match_message if self._match_message and self._match_message[0] == path else None
        self._match_message = None
        # Why this scan is beside the volume (Show a real scan of the same group) outlasts its preparation.
        notes = [*prepared.warnings, *([matched[1]] if matched else [])]
        self.statusBar().showMessage("; ".join(notes), 15000 if matched else 10000)

    def _offer_preprocessing(self, path: Path, message: str) -> None:
        """A scan that is not in MNI space cannot be compared as it is: it is offered for
        preprocessing (the preprocessed scan then takes its place) or for viewing as it is, in its
        own space (view only, kept in the list marked so); otherwise it leaves the list."""
        if self.quiet:
            if path in self.scans.paths:
                self._remove_scan_rows([self.scans.paths.index(path)])
            print(f"{message}; preprocess it with brainsynth-cli preprocess", file=sys.stderr)
            return
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Preprocess this scan?")
        box.setText(
            f"{message}.\n\nPreprocess it now? (brain extraction, denoising, bias-field correction and "
            "registration to MNI152, offline; about a minute per scan on 2 CPU cores). The result is "
            "kept in BrainSynth's cache and opened in its place.\n\nOr view it as it is, in its own space: "
            "view only, not compared, evaluated or used in a study until it is preprocessed."
        )
        preprocess = box.addButton("Preprocess", QMessageBox.ButtonRole.AcceptRole)
        view = box.addButton("View as is", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(preprocess)
        box.exec()
        if box.clickedButton() is view:
            self.view_as_is(path, reason=message)
            return
        if path in self.scans.paths:
            self._remove_scan_rows([self.scans.paths.index(path)])
        if box.clickedButton() is preprocess:
            self.preprocess_scan(path)

    def _scan_text(self, path: Path) -> str:
        """A scan's row in the list: its name, and "own space, view only" for a scan not in MNI space."""
        return f"{path.name}  ·  own space, view only" if path in self.scans.view_only else path.name

    def view_as_is(self, path: str | Path, *, reason: str = "") -> bool:
        """Look at a scan that is not in MNI space in its own space, in a window of its own (view only).

        The scan stays in the Real scans list, marked view only; it is left out of the side-by-side
        comparison, Evaluate and Create study, each saying why, until it is preprocessed.

        Returns:
            True when the scan is shown; False when it cannot even be read (reported).
        """
        from brainsynth_gui.native_view import NativeScanWindow
        from engine.volumes import load_volume

        path = Path(path)
        try:
            volume = load_volume(path)
        except BrainSynthError as exc:
            self._scan_failed(path, str(exc))
            return False
        self.scans.mark_view_only(path, reason or "not in MNI space")
        if path not in self.native_windows:
            self.native_windows[path] = NativeScanWindow(path, volume.data, volume.affine, reason=reason)
        rows = [self._scan_text(p) for p in self.scans.paths]
        self.scan_list.blockSignals(True)
        while self.scan_list.count() < len(rows):
            self.scan_list.addItem("")
        for row, text in enumerate(rows):
            self.scan_list.item(row).setText(text)
        self.scan_list.setCurrentRow(self.scans.paths.index(path), QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.scan_list.blockSignals(False)
        self.lists.setTabText(1, f"Real scans ({len(self.scans)})")
        self._show_view_only(path)
        return True

    def _preprocess_view_only(self, path: Path) -> None:
        """A view-only scan's context menu: preprocess it after all; the result takes its place."""
        if path in self.scans.paths:
            self._remove_scan_rows([self.scans.paths.index(path)])
        self.preprocess_scan(path)

    def _show_view_only(self, path: Path) -> None:
        """A view-only scan chosen in the list: its own window comes up; the real row says why it is empty."""
        from brainsynth_gui.native_view import VIEW_ONLY_SHORT

        window = self.native_windows.get(path)
        if window is not None:
            window.show()
            window.raise_()
        self._shown_scan = None
        self.real_layer.set(None, f"{path.name}: {VIEW_ONLY_SHORT}")
        self.statusBar().showMessage(f"{path.name}: {VIEW_ONLY_SHORT}; preprocess it to compare", 15000)

    def preprocess_scan(self, path: str | Path, *, settings=None, wait: bool = False) -> bool:
        """Preprocess a raw scan in the background (:func:`engine.preprocess.preprocess_file`, into
        the user cache, so the same scan is done once), with progress and Cancel; then open it.

        Returns True when the work started (with ``wait``: when the preprocessed scan opened).
        """
        from engine.device import physical_cores_available
        from engine.preprocess import PreprocessSettings, preprocess_file
        from engine.resources import user_cache_dir

        path = Path(path)
        out_dir = user_cache_dir() / "preprocessed"
        settings = settings or PreprocessSettings(threads=physical_cores_available())
        progress = None
        if not self.quiet:
            progress = QProgressDialog(f"Preprocessing {path.name}…", "Cancel", 0, 0, self)
            progress.setWindowTitle("Preprocess scan")
            progress.setMinimumDuration(0)
        outcome: list = []

        def work(report):
            return preprocess_file(
                path,
                out_dir,
                settings=settings,
                on_step=lambda step: report(step),
            )

        def done(result) -> None:
            outcome.append(result)
            scan = out_dir / result.record["outputs"]["scan"]  # relative to the output folder
            self.statusBar().showMessage(f"{path.name} preprocessed ({result.status}): {scan}", 15000)
            self.open_scans([scan])

        def failed(message: str) -> None:
            outcome.append(None)
            self.report_error("Preprocessing failed", message)

        def finished() -> None:
            outcome.append(None)
            if progress is not None:
                progress.close()

        def step(name) -> None:
            self.statusBar().showMessage(f"Preprocessing {path.name}: {name}…")
            if progress is not None:
                progress.setLabelText(f"Preprocessing {path.name}: {name}…")

        job = create_worker(
            work,
            report_as="report",
            start=False,
            connect={"returned": done, "errored": failed, "yielded": step, "finished": finished},
        )
        if progress is not None:
            progress.canceled.connect(job.abort)
        self._scan_jobs.start(job)
        if wait:
            while not outcome:
                QApplication.processEvents()
                job.wait(10)
            QApplication.processEvents()
            return outcome[0] is not None
        return True

    def _scan_failed(self, failed: Path, message: str) -> None:
        """A scan cannot be shown: say so once, and keep it nowhere (list, display, Evaluate, studies).

        The scan on screen before stays there: a failed open never replaces it.
        """
        if failed not in self.scans.paths:
            return
        self._remove_scan_rows([self.scans.paths.index(failed)])
        self.report_error("Cannot show scan", message)
        self.statusBar().showMessage(f"{failed.name} was not added: {message}", 15000)

    def _remove_scan_rows(self, rows: list[int]) -> None:
        """Take scans out of the session; the display moves to the scan shown before, if it is still there."""
        keep_shown = self._shown_scan
        for row in sorted(set(rows), reverse=True):
            if 0 <= row < len(self.scans):
                if self.scans.paths[row] == keep_shown:
                    keep_shown = None
                native = self.native_windows.pop(self.scans.paths[row], None)
                if native is not None:
                    native.close()
                self.scans.remove(row)
        self.scan_list.blockSignals(True)
        self.scan_list.clear()
        for path in self.scans.paths:
            self.scan_list.addItem(self._scan_text(path))
        target = self.scans.paths.index(keep_shown) if keep_shown in self.scans.paths else -1
        self.scan_list.setCurrentRow(target, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.scan_list.blockSignals(False)
        if target < 0:
            self._shown_scan = None
            self.real_layer.set(None)
        self.lists.setTabText(1, f"Real scans ({len(self.scans)})")

    def remove_selected_scans(self) -> None:
        """Remove the selected real scans from the session (Delete, or the list's context menu)."""
        rows = sorted({i.row() for i in self.scan_list.selectedIndexes()} or {self.scan_list.currentRow()} - {-1})
        if rows:
            self._remove_scan_rows(rows)

    def remove_selected_volumes(self) -> None:
        """Remove the selected generated volumes from the session (Delete, or the list's context menu)."""
        if self.worker is not None:
            self.statusBar().showMessage("Volumes can be removed once the generation has finished", 8000)
            return
        rows = sorted({i.row() for i in self.volume_list.selectedIndexes()} or {self.volume_list.currentRow()} - {-1})
        if not rows:
            return
        for row in reversed(rows):
            if 0 <= row < len(self.library):
                entry = self.library.entries.pop(row)
                self._exported.discard(entry.number)
                self.volume_list.takeItem(row)
        self.lists.setTabText(0, f"Generated volumes ({len(self.library)})")
        if self._current is not None and self._current not in self.library.entries:
            self._current = None
            self.state.trajectory.clear()
        self._volume_chosen(self.volume_list.currentRow())

    def eventFilter(self, watched, event) -> bool:
        if (
            event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace)
            and watched in self._list_removers
        ):
            self._list_removers[watched]()
            return True
        return super().eventFilter(watched, event)

    def _list_menu(self, which: str, pos) -> None:
        widget = self.volume_list if which == "volumes" else self.scan_list
        menu = QMenu(widget)
        if which == "volumes":
            menu.addAction("Export selected as NIfTI…", self.ask_export_nifti)
            menu.addAction("Show a real scan of the same group", self.show_matching_scan)
            menu.addAction("Remove from the session", self.remove_selected_volumes)
        else:
            menu.addAction("Open scan…", self.ask_scans)
            current = self._current_scan()
            if current is not None and current in self.scans.view_only:
                menu.addAction("Preprocess this scan…", lambda: self._preprocess_view_only(current))
            menu.addAction("Remove from the session", self.remove_selected_scans)
        menu.exec(widget.viewport().mapToGlobal(pos))

    @property
    def unexported(self) -> list[SyntheticEntry]:
        """Generated volumes that were never written to disk."""
        return [e for e in self.library.entries if e.number not in self._exported]

    @property
    def busy(self) -> bool:
        """Whether a generation, a checkpoint load or a scan preparation is still running."""
        return self.worker is not None or self._checkpoint_job is not None or bool(self._scan_jobs)

    # -- generation -------------------------------------------------------------------------

    @property
    def generating(self) -> bool:
        return self.worker is not None

    def start_generation(self, choices: GenerationChoices | None = None) -> bool:
        """Start generating in the background with ``choices`` (default: the panel's settings)."""
        if self.worker is not None:
            return False
        if self._checkpoint_job is not None:
            self.report_error("Cannot generate", "a checkpoint is loading; generate once it is loaded")
            return False
        if self.checkpoint is None:
            self.report_error("No model", "open a checkpoint first (File ▸ Open checkpoint…, Ctrl+O)")
            return False
        choices = choices or self.generation_panel.choices()
        try:
            request = choices.to_request(self.checkpoint)
        except BrainSynthError as exc:
            self.report_error("Cannot generate", str(exc))
            return False
        worker = GenerationWorker(self.checkpoint, request, self._model_cache)
        worker.progress.connect(self._on_progress)
        worker.preview.connect(self._on_preview)
        worker.volume_ready.connect(self._on_volume)
        worker.failed.connect(lambda message: self.report_error("Generation failed", message))
        worker.done.connect(self._on_done)
        self.worker = worker
        self._first_new_row = self.volume_list.count()
        self._follow_preview = True
        self._last_report: ProgressReport | None = None
        self._generation_spec = self.checkpoint.spec
        self.generation_panel.set_running(True)
        self.timeline.set_recording(request.trajectory_frames > 0)
        # With torch, MONAI and Qt loaded the heap holds ~400,000 objects, and a full cyclic
        # garbage collection (which the worker's allocations trigger now and then) freezes every
        # thread for 100-400 ms on a slow CPU. Freezing moves what exists now out of the
        # collector's sight, so collections during generation only scan new objects.
        gc.freeze()
        worker.start()
        return True

    def cancel_generation(self) -> None:
        """Stop after the denoising step in progress."""
        if self.worker is not None:
            self.worker.cancel()
            self.generation_panel.show_message("Cancelling after this step…")

    def _on_progress(self, report: ProgressReport) -> None:
        self._last_report = report
        self.generation_panel.show_progress(report)

    def _on_preview(self, preview: np.ndarray, seed: int) -> None:
        if not self._follow_preview or self.worker is None:
            return
        report = self._last_report
        step = f"step {report.step}/{report.steps}" if report is not None else "starting"
        self.synthetic_layer.set(
            model_to_display(preview, self._generation_spec.intensity), f"generating seed {seed}, {step}, predicted x_0"
        )

    def _on_volume(self, volume) -> None:
        entry = self.library.add(volume, self._generation_spec)
        self.volume_list.addItem(entry.label)
        self.lists.setTabText(0, f"Generated volumes ({len(self.library)})")

    def _on_done(self, cancelled: bool) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.wait()
            worker.deleteLater()
        self.generation_panel.set_running(False)
        self.timeline.set_recording(False)
        self._update_generate_enabled()
        new = self.volume_list.count() - self._first_new_row
        self.generation_panel.show_message(
            f"{'Cancelled' if cancelled else 'Done'}: {new} volume{'s' if new != 1 else ''} generated"
        )
        if self._follow_preview and new:
            self.volume_list.setCurrentRow(self._first_new_row)
        elif self._follow_preview:
            self._show_current()
        self._follow_preview = False
        self.generation_finished.emit(cancelled)

    # -- showing a generated volume ---------------------------------------------------------

    def _volume_chosen(self, row: int) -> None:
        if self.worker is not None and self.volume_list.hasFocus():
            self._follow_preview = False  # the user picked a volume: stop following the live preview
        entry = self.library.entries[row] if 0 <= row < len(self.library) else None
        self._current = entry
        trajectory = entry.volume.trajectory if entry is not None else None
        if trajectory is not None:
            steps, timesteps = entry.timeline()
            self.state.trajectory.set_frames(steps, timesteps, total_steps=entry.volume.settings.steps)
        else:
            self.state.trajectory.clear()
        self._show_current()

    def _show_current(self) -> None:
        """Show the selected volume at the timeline's frame (or the live preview while following it)."""
        if self._follow_preview and self.worker is not None:
            return
        entry = self._current
        if entry is None:
            self.synthetic_layer.set(None)
            return
        trajectory = self.state.trajectory
        data = entry.frame_or_final(trajectory.kind, trajectory.index) if len(trajectory) else entry.standard()
        title = entry.title
        if len(trajectory) and not (trajectory.kind == "x_t" and trajectory.at_end):
            title += f" — {trajectory.label()}"
        self.synthetic_layer.set(data, title)

    def show_matching_scan(self):
        """View ▸ Show a real scan of the same group: side by side with the selected generated volume,
        the open real scan labelled with its group (every categorical condition) and the closest
        age (continuous conditions), from a participants.tsv beside the scans as training reads it.

        Returns:
            the :class:`~brainsynth_gui.scan_labels.ScanMatch` (its message is shown either way).
        """
        from brainsynth_gui.scan_labels import ScanLabels, ScanMatch

        entry = self._current
        if entry is None:
            result = ScanMatch(None, "select a generated volume first")
        elif entry.spec.conditions is None:
            result = ScanMatch(None, "this model is unconditional: its volumes have no group to match")
        else:
            if self._scan_labels is None or self._scan_labels.conditions is not entry.spec.conditions:
                self._scan_labels = ScanLabels(entry.spec.conditions)
            paths = [self.scans.paths[i] for i in self.scans.comparable]
            result = self._scan_labels.match(entry.provenance.get("conditions") or {}, paths)
        if result.path is None:
            self.statusBar().showMessage(f"No matching real scan: {result.message}", 15000)
            if not self.quiet:
                QMessageBox.information(self, "No matching real scan", result.message[0].upper() + result.message[1:])
            return result
        self.state.display.set_compare("side-by-side")
        self.lists.setCurrentIndex(1)
        row = self.scans.paths.index(result.path)
        self._match_message = (result.path, f"#{entry.number} beside {result.message}")
        self.statusBar().showMessage(self._match_message[1], 15000)
        self.scan_list.setCurrentRow(row, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        return result

    def selected_entries(self) -> list[SyntheticEntry]:
        """The selected generated volumes, or all of them when none is selected."""
        rows = sorted(index.row() for index in self.volume_list.selectedIndexes())
        return [self.library.entries[r] for r in rows] if rows else list(self.library.entries)

    def _update_readout(self) -> None:
        self.readout.setText(self.state.readout())

    # -- exports ----------------------------------------------------------------------------

    def ask_export_nifti(self) -> None:
        if not len(self.library):
            self.report_error("Nothing to export", "generate a volume first")
            return
        # A non-native dialog offers "Create folder" on every platform; export_batch creates a
        # typed folder that does not exist yet.
        folder = QFileDialog.getExistingDirectory(
            self, "Export NIfTI volumes into", self._start_dir(), QFileDialog.Option.ShowDirsOnly
        )
        if folder:
            self._remember_dir(folder, is_dir=True)
            self.export_nifti(Path(folder))

    def export_nifti(self, out_dir: Path, *, overwrite: bool | None = None) -> list[Path]:
        """Export the selected volumes (all if none selected) into ``out_dir``.

        When files of the same names exist the user is asked before anything is replaced
        (``overwrite=None``); pass True or False to decide without asking.
        """
        entries = self.selected_entries()
        if not entries:
            self.report_error("Nothing to export", "generate a volume first")
            return []
        try:
            if overwrite is None:
                from brainsynth_gui.export_dialogs import nifti_targets

                try:
                    nifti_targets(entries, out_dir, prefix="synthetic", overwrite=False)
                    overwrite = False
                except TargetExistsError as exc:
                    answer = QMessageBox.question(
                        self, "Replace files?", f"{exc}.\n\nReplace the existing files of the same names?"
                    )
                    if answer != QMessageBox.StandardButton.Yes:
                        return []
                    overwrite = True
            written = export_nifti(self, entries, out_dir=out_dir, overwrite=overwrite)
        except CancelledError as exc:
            self.statusBar().showMessage(str(exc), 8000)
            return []
        except BrainSynthError as exc:
            self.report_error("Export failed", str(exc))
            return []
        self._exported.update(e.number for e in entries)
        self.statusBar().showMessage(f"Exported {len(written)} volume(s) to {out_dir}", 8000)
        return written

    def ask_export_animation(self) -> None:
        entry = self._current
        if entry is None or entry.volume.trajectory is None:
            self.report_error(
                "No denoising recorded",
                "select a generated volume that has a recorded trajectory (trajectory frames above 0)",
            )
            return
        dialog = AnimationDialog(
            self,
            voxel=self.state.cursor.voxel,
            grid_shape=entry.spec.grid.shape,
            kind=self.state.trajectory.kind,
            fps=self.state.trajectory.fps,
        )
        if dialog.exec() != AnimationDialog.DialogCode.Accepted:
            return
        name = str(Path(self._start_dir()) / f"denoising_seed{entry.volume.seed}.gif")
        path, _ = QFileDialog.getSaveFileName(self, "Save animation", name, "GIF (*.gif);;MP4 video (*.mp4)")
        if path:
            self._remember_dir(path)
            self.export_animation(Path(path), dialog.options(), overwrite=True)

    def export_animation(self, path: Path, options=None, *, overwrite: bool = False) -> Path | None:
        """Write the selected volume's denoising as GIF or MP4 (by suffix) with ``options``.

        ``overwrite`` replaces an existing file (the save dialog has already asked the user).
        """
        from brainsynth_gui.animation import AnimationOptions
        from brainsynth_gui.media import write_animation

        entry = self._current
        if entry is None or entry.volume.trajectory is None:
            self.report_error("No denoising recorded", "select a generated volume with a recorded trajectory")
            return None
        if options is None:
            options = AnimationOptions(
                voxel=self.state.cursor.voxel, kind=self.state.trajectory.kind, fps=self.state.trajectory.fps
            )
        wl = self.state.window_level
        try:
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
            try:
                frames = animation_frames(
                    entry,
                    options,
                    radiological=self.state.orientation.radiological,
                    low=wl.low,
                    high=wl.high,
                    colormap=self.state.display.colormap,
                )
                written = write_animation(
                    path, frames, fps=options.fps, hold_last_seconds=options.hold_seconds, overwrite=overwrite
                )
            finally:
                QApplication.restoreOverrideCursor()
        except BrainSynthError as exc:
            self.report_error("Animation export failed", str(exc))
            return None
        self.statusBar().showMessage(f"Saved {written}", 8000)
        return written

    def ask_save_png(self) -> None:
        name = str(Path(self._start_dir()) / "brainsynth_views.png")
        path, _ = QFileDialog.getSaveFileName(self, "Save the views as PNG", name, "PNG (*.png)")
        if path:
            self._remember_dir(path)
            self.save_views_png(Path(path if path.lower().endswith(".png") else path + ".png"))

    def save_views_png(self, path: Path, *, whole_window: bool = False) -> bool:
        """Save a PNG of the views (or of the whole window), atomically."""
        from engine.atomic import atomic_path

        widget = self if whole_window else self.viewer
        try:
            with atomic_path(path, overwrite=True) as tmp:
                if not widget.grab().save(str(tmp), "PNG"):
                    raise ExportError(f"cannot write {path}")
        except (BrainSynthError, OSError) as exc:
            self.report_error("Cannot save PNG", str(exc))
            return False
        self.statusBar().showMessage(f"Saved {path}", 8000)
        return True

    # -- reader studies and evaluation ------------------------------------------------------

    def ask_review(self) -> None:
        from brainsynth_gui.study_dialogs import StudyChoiceDialog

        dialog = StudyChoiceDialog(
            self, title="Review a study", ok_text="Start reviewing", with_reader=True, db_path=self.study_db_path
        )
        if dialog.exec() != StudyChoiceDialog.DialogCode.Accepted:
            return
        picker = dialog.picker
        study, reader = picker.study, picker.reader
        db = picker.take_db()
        if db is not None:
            self.study_db_path = db.path
            self.open_review(db, study, reader, owns_db=True)

    def open_review(self, db, study: str, reader: str, *, owns_db: bool = False):
        """Open review mode for ``reader`` of ``study`` in ``db`` (a StudyDatabase or its path).

        Returns:
            The :class:`~brainsynth_gui.review_window.ReviewWindow`, or None after an error.
        """
        from brainsynth_gui.review_window import ReviewWindow
        from engine.study import StudyDatabase

        try:
            if not isinstance(db, StudyDatabase):
                db, owns_db = StudyDatabase(db), True
            session = db.session(study, reader)
        except BrainSynthError as exc:
            self.report_error("Cannot open the study", str(exc))
            return None
        return self._show_review(ReviewWindow(db, session, owns_db=owns_db, quiet=self.quiet))

    def ask_pack(self) -> None:
        """File ▸ Open study pack…: rate the cases of a reader's pack (.bsstudy)."""
        from engine.study.pack import PACK_SUFFIX

        path, _ = QFileDialog.getOpenFileName(
            self, "Open study pack", self._start_dir(), f"Study packs (*{PACK_SUFFIX});;All files (*)"
        )
        if path:
            self.open_pack(Path(path))

    def open_pack(self, path: Path):
        """Open review mode on a study pack (answers are saved into the pack as they are given).

        Returns:
            The :class:`~brainsynth_gui.review_window.ReviewWindow`, or None after an error.
        """
        from brainsynth_gui.review_window import ReviewWindow
        from engine.study.pack import open_pack

        try:
            session = open_pack(path)
        except BrainSynthError as exc:
            self.report_error("Cannot open the study pack", str(exc))
            return None
        return self._show_review(ReviewWindow(session.pack, session, owns_db=True, quiet=self.quiet))

    def _show_review(self, window):
        window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.review_windows.append(window)
        # Full screen, and this window out of sight: its file names, lists and real-scan row
        # could give cases away. It comes back when the reader closes review mode.
        window.closed.connect(lambda: self._review_closed(window))
        window.showFullScreen()
        self.hide()
        window.start()
        window.take_focus()
        return window

    def _review_closed(self, closed) -> None:
        if not any(w.isVisible() for w in self.review_windows if w is not closed):
            self.show()
            self.raise_()
            self.activateWindow()

    def ask_results(self) -> None:
        from brainsynth_gui.study_dialogs import StudyChoiceDialog

        dialog = StudyChoiceDialog(
            self, title="Study results", ok_text="Show results", with_reader=False, db_path=self.study_db_path
        )
        if dialog.exec() != StudyChoiceDialog.DialogCode.Accepted:
            return
        picker = dialog.picker
        study, db = picker.study, picker.take_db()
        if db is not None:
            path = db.path
            db.close()
            self.study_db_path = path
            if self.unlock_results(path, study):
                self.open_results(path, study)

    def unlock_results(self, db_path: Path, study: str) -> bool:
        """The organiser's step before results (they show the truth): the study's passphrase, set or entered."""
        from brainsynth_gui.study_dialogs import OrganiserPassphraseDialog

        try:
            dialog = OrganiserPassphraseDialog(self, db_path=Path(db_path), study=study)
        except BrainSynthError as exc:
            self.report_error("Cannot open the study", str(exc))
            return False
        return dialog.exec() == OrganiserPassphraseDialog.DialogCode.Accepted

    def open_results(self, db_path: Path, study: str):
        """Show the results view of ``study`` (computed in the background); returns the dialog."""
        from brainsynth_gui.results_view import ResultsDialog

        dialog = ResultsDialog(self, db_path=Path(db_path), study=study, quiet=self.quiet)
        dialog.show()
        return dialog

    def ask_create_study(self):
        """Study ▸ Create study…: the dialog, offering this session's scans and generated volumes."""
        from brainsynth_gui.study_dialogs import CreateStudyDialog

        dialog = self.create_study_dialog()
        if dialog.exec() == CreateStudyDialog.DialogCode.Accepted and dialog.created is not None:
            self.study_db_path = dialog.db_path
            self.statusBar().showMessage(
                f"Created study {dialog.created.name!r} ({dialog.created.n_cases} cases); "
                "readers start it with Study ▸ Review study…",
                10000,
            )
        return dialog

    def create_study_dialog(self):
        """The Create study dialog over this session's comparable scans and generated volumes (not shown)."""
        from brainsynth_gui.study_dialogs import CreateStudyDialog
        from engine.export import ExportVolume

        volumes = [
            ExportVolume(number=e.number, array=np.asarray(e.volume.array, dtype=np.float32), provenance=e.provenance)
            for e in self.library.entries
        ]
        dialog = CreateStudyDialog(
            self,
            db_path=self.study_db_path,
            session_scans=[self.scans.paths[i] for i in self.scans.comparable],
            session_volumes=volumes,
            spec=self.spec,
            left_out=self._view_only_note(),
        )
        return dialog

    def evaluation_dialog(self):
        """The Tools ▸ Evaluate dialog over this session's generated volumes and real scans."""
        from brainsynth_gui.evaluation_dialog import EvaluationDialog

        spec = self.spec
        entries = list(self.library.entries)
        scans = self.scans
        rows = scans.comparable  # view-only scans (not in MNI space) are left out, and the dialog says so
        n_scans = len(rows)
        scale = float(spec.intensity.scale)
        paths = [scans.paths[i] for i in rows]

        def real():
            prepared = [scans.prepared(scans.paths.index(p), spec).data for p in paths]
            # Clipped like every study case (engine.study.display): standard space is [0, scale].
            names = [p.name for p in paths]
            return [np.clip(d, 0.0, scale).astype(np.float32) for d in prepared], names

        def synthetic():
            return [e.standard() for e in entries], [f"#{e.number} seed {e.volume.seed}" for e in entries]

        return EvaluationDialog(
            self,
            real=real,
            synthetic=synthetic,
            counts=(n_scans, len(entries)),
            spec=spec,
            quiet=self.quiet,
            left_out=self._view_only_note(),
        )

    def _view_only_note(self) -> str:
        """Which open scans are left out of comparisons and why ("" when none)."""
        names = [p.name for p in self.scans.paths if p in self.scans.view_only]
        if not names:
            return ""
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        one = len(names) == 1
        return (
            f"Left out: {listed} ({'it is' if one else 'they are'} not in MNI space, view only); "
            f"preprocess {'it' if one else 'them'} to use {'it' if one else 'them'} here."
        )

    def ask_evaluate(self) -> None:
        self.evaluation_dialog().exec()

    def utility_session(self):
        """This session's generated volumes, comparable real scans and loaded checkpoints, for the utility."""
        from brainsynth_gui.utility_session import SessionVolume, UtilitySession

        return UtilitySession(
            volumes=tuple(
                SessionVolume(e.number, np.asarray(e.volume.array, np.float32), e.provenance, e.spec)
                for e in self.library.entries
            ),
            scans=tuple(self.scans.paths[i] for i in self.scans.comparable),
            checkpoints=dict(self.checkpoint_files),
        )

    def utility_dialog(self):
        """The Tools ▸ Augmentation utility dialog (run the experiment, or view a report)."""
        from brainsynth_gui.utility_dialog import UtilityDialog

        return UtilityDialog(self, quiet=self.quiet, session=self.utility_session())

    def ask_utility(self) -> None:
        self.utility_dialog().exec()

    # -- drag and drop ----------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        event.acceptProposedAction()
        self.open_paths(paths)

    def open_paths(self, paths: list[Path]) -> None:
        """Open dropped files: checkpoints as the model, scans and folders as real scans."""
        from engine.volumes import is_supported

        scans = []
        for path in paths:
            if path.suffix.lower() in CHECKPOINT_SUFFIXES:
                self.open_checkpoint(path)
            elif path.is_dir() or is_supported(path):
                scans.append(path)
            else:
                self.report_error(
                    "Cannot open file",
                    f"{path.name} is neither a checkpoint (.safetensors, .pt, .pth) "
                    f"nor a scan (.nii, .nii.gz, .mgh, .mgz)",
                )
        if scans:
            self.open_scans(scans)

    def confirm_quit(self) -> bool:
        """Ask before quitting with generated volumes that were never exported; True to quit."""
        left = self.unexported
        if not left or self.quiet:
            return True
        answer = QMessageBox.question(
            self,
            "Quit BrainSynth?",
            f"{len(left)} generated volume{'s have' if len(left) != 1 else ' has'} not been exported and will be "
            "lost.\n\nQuit anyway? (File ▸ Export selected volumes as NIfTI… keeps them.)",
            QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Discard

    def quit_requested(self) -> bool:
        """File ▸ Quit: ask about unexported volumes, then close; True when the window closed."""
        if not self.confirm_quit():
            return False
        self._quit_confirmed = True
        return self.close()

    def closeEvent(self, event) -> None:
        # The user closing the window (the title bar's close, a system quit) is asked too; a
        # close() from code (tests, the session ending) is not.
        asked = getattr(self, "_quit_confirmed", False)
        if event.spontaneous() and not asked and not self.confirm_quit():
            event.ignore()
            return
        if self.worker is not None:
            self.worker.cancel()
            self.worker.wait()
        if self._checkpoint_job is not None:
            self._checkpoint_job.wait()
        self._scan_jobs.wait()
        for window in [*self.review_windows, *self.native_windows.values()]:
            window.close()
        super().closeEvent(event)


class _SidePanelScroll(QScrollArea):
    """The side panel's scroll area, never narrower than its panel plus the vertical scroll bar.

    A plain QScrollArea asks for the panel's width only; at 1024 x 700 the panel is taller than
    the window, the vertical scroll bar takes its width from the viewport, and with horizontal
    scrolling off the right edge of every field and button was cut by a few pixels.
    """

    def _width_for(self, inner: int) -> int:
        return inner + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        widget = self.widget()
        if widget is None:
            return hint
        return QSize(self._width_for(widget.minimumSizeHint().width()), hint.height())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        widget = self.widget()
        if widget is None:
            return hint
        return QSize(max(hint.width(), self._width_for(widget.sizeHint().width())), hint.height())


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    label.setStyleSheet("font-weight: bold; margin-top: 6px;")
    return label
