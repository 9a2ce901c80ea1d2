"""Tools ▸ Evaluate generated volumes…: the CLI's evaluation for the volumes of this session.

Runs :func:`engine.evaluation.evaluate_volumes` — the computation behind ``brainsynth-cli
evaluate`` — on the volumes generated in the session against the real scans open in it. Both
sets are on the model grid in standard space [0, 1000]: generated volumes through
``spec.intensity.model_to_standard`` (as on export), real scans as the app prepares them for
display (resampled onto the grid, normalised, clipped to [0, 1000] like every study case).
A training folder, if chosen, is prepared the same way for the memorisation check.

The work runs in a :class:`~brainsynth_gui.background.BackgroundWorker` with a progress
dialog; Cancel stops it at the next progress report. Errors an input can cause (fewer than
two volumes in a set, mismatched grids) come back as one message in a dialog. The full
report (``evaluation.json``, ``report.md``, PNG figures) is written with
:func:`engine.evaluation.write_report`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.background import BackgroundWorker, WorkerDialog
from engine.errors import BrainSynthError

#: ``() -> (volumes, labels)``, called in the worker thread.
SetLoader = Callable[[], tuple[list[np.ndarray], list[str]]]


def prepare_folder(folder: Path, spec) -> tuple[list[np.ndarray], list[str]]:
    """Every scan in ``folder`` on ``spec``'s grid in standard space [0, scale] (for the training set)."""
    from engine.preprocessing import prepare_scan
    from engine.volumes import find_volumes, load_volume

    paths = find_volumes([folder])
    scale = float(spec.intensity.scale)
    volumes = [np.clip(prepare_scan(load_volume(p), spec).data, 0.0, scale).astype(np.float32) for p in paths]
    return volumes, [p.name for p in paths]


class EvaluationWorker(BackgroundWorker):
    """Loads the sets and evaluates them off the interface thread.

    A :class:`~brainsynth_gui.background.BackgroundWorker`: ``yielded`` carries
    ``(stage, done, total)`` progress, ``returned`` the :class:`engine.evaluation.EvaluationResult`,
    ``errored`` a message; :meth:`cancel` stops it at the next progress report (``aborted``).
    """

    def __init__(self, *, real: SetLoader, synthetic: SetLoader, train: SetLoader | None, options) -> None:
        super().__init__()
        self._real, self._synthetic, self._train = real, synthetic, train
        self.options = options

    def cancel(self) -> None:
        self.abort()

    def work(self):
        from engine.evaluation import evaluate_volumes

        self.report("preparing real scans", 0, 1)
        real, real_labels = self._real()
        synthetic, synthetic_labels = self._synthetic()
        train, train_labels = (None, None)
        if self._train is not None:
            self.report("preparing training scans", 0, 1)
            train, train_labels = self._train()
        return evaluate_volumes(
            real,
            synthetic,
            train=train,
            options=self.options,
            real_labels=real_labels,
            synthetic_labels=synthetic_labels,
            train_labels=train_labels,
            progress=self.report,
            sources={"real": "real scans open in the app", "synthetic": "volumes generated in the app"},
        )


def plural(n: int, word: str) -> str:
    """``"1 pair"``, ``"2 pairs"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def key_figures(result) -> list[tuple[str, str]]:
    """(figure, value) rows of the dialog: the reference study's Table 1 first, then the extras."""
    ms = result.msssim

    def pairs(s) -> str:
        return f"{s.mean:.4f} ± {s.std:.4f} ({plural(s.n_pairs, 'pair')})" if s.n_pairs else "n/a"

    bv = result.brain_volume
    whole = result.intensity.comparisons[0]
    rows = [
        ("Volumes", f"{result.n_real} real, {result.n_synthetic} synthetic on {' x '.join(map(str, result.shape))}"),
        ("MMD (unbiased, linear kernel)", f"{result.mmd.value:.4g}  (per voxel {result.mmd.value_per_voxel:.3g})"),
        ("MMD (Gaussian kernel)", f"{result.mmd.rbf_value:.4g}  (σ = {result.mmd.rbf_sigma:.3g})"),
        (
            "FID (MedicalNet 3-D)",
            f"{result.fid_3d.value:.2f}"
            if result.fid_3d.available
            else "unavailable: " + result.fid_3d.reason.replace("with --fid-weights", "under FID weights above"),
        ),
        ("MS-SSIM within real", pairs(ms.within_real)),
        ("MS-SSIM within synthetic", pairs(ms.within_synthetic)),
        ("MS-SSIM between real and synthetic", pairs(ms.between)),
        ("MS-SSIM settings", f"window {ms.settings.kernel_size}, {ms.settings.n_scales} scales, seed {ms.seed}"),
        # Measured on the model grid, which lies over the MNI box: volumes after the affine
        # registration to MNI space, not in each subject's native space.
        ("Brain volume, real", f"{bv.real_mean_sd[0]:.0f} ± {bv.real_mean_sd[1]:.0f} mL (brain mask, in MNI space)"),
        (
            "Brain volume, synthetic",
            f"{bv.synthetic_mean_sd[0]:.0f} ± {bv.synthetic_mean_sd[1]:.0f} mL (brain mask, in MNI space)",
        ),
        ("Brain volume distance (Wasserstein-1)", f"{bv.wasserstein_ml:.1f} mL"),
        (
            "Intensity histogram distance, whole brain",
            "n/a"
            if whole.wasserstein is None
            else f"Wasserstein-1 {whole.wasserstein:.1f} units, Jensen-Shannon {whole.js_distance:.3f}",
        ),
    ]
    mem = result.memorisation
    if mem.available:
        top = max((n.r for n in mem.synthetic), default=float("nan"))
        rows.append(
            (
                "Memorisation (near copies of training scans)",
                f"{len(mem.flagged)} of {len(mem.synthetic)} above r = {mem.threshold:g}; highest r {top:.3f}",
            )
        )
    else:
        rows.append(("Memorisation (near copies of training scans)", "not checked: choose a training folder"))
    return rows


class EvaluationDialog(WorkerDialog):
    """Evaluate the session's generated volumes against its real scans.

    Args:
        parent: the main window.
        real: loads the real set (called in the worker thread).
        synthetic: loads the synthetic set (called in the worker thread).
        counts: (real, synthetic) set sizes, for the summary line.
        spec: the model spec (grid and intensity mapping) a training folder is prepared onto.
        quiet: errors on stderr instead of in dialogs (tests, headless runs).
    """

    def __init__(
        self,
        parent: QWidget | None,
        *,
        real: SetLoader,
        synthetic: SetLoader,
        counts: tuple[int, int],
        spec,
        quiet: bool = False,
        left_out: str = "",
    ) -> None:
        super().__init__(parent, quiet=quiet)
        self.setWindowTitle("Evaluate generated volumes")
        self._real, self._synthetic, self.spec = real, synthetic, spec
        self.result = None

        n_real, n_synthetic = counts
        grid = " x ".join(str(n) for n in spec.grid.shape)
        intro = QLabel(
            f"Compares the <b>{n_synthetic}</b> volumes generated in this session with the <b>{n_real}</b> real "
            f"scans open in it, both on the model grid ({grid}) in standard space — the metrics of "
            "<i>brainsynth-cli evaluate</i>: MMD, MS-SSIM within and between the sets, brain volumes, "
            "intensity histograms and, with a training folder, a check for near copies."
        )
        intro.setWordWrap(True)
        # Scans the session holds but cannot compare (not in MNI space, view only), and why.
        self.left_out = QLabel(left_out)
        self.left_out.setWordWrap(True)
        self.left_out.setVisible(bool(left_out))
        self.train_field = QLineEdit()
        self.train_field.setPlaceholderText("optional: the scans the model was trained on")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._ask_train)
        train_row = QHBoxLayout()
        train_row.addWidget(self.train_field, 1)
        train_row.addWidget(browse)
        self.fid_field = QLineEdit()
        self.fid_field.setPlaceholderText("optional: MedicalNet weights (.pth) for the 3-D FID")
        self.fid_field.setToolTip(
            "resnet_10_23dataset.pth or resnet_50_23dataset.pth from https://github.com/Tencent/MedicalNet; "
            "without it the FID is reported as unavailable"
        )
        fid_browse = QPushButton("Choose…")
        fid_browse.clicked.connect(self._ask_fid)
        fid_row = QHBoxLayout()
        fid_row.addWidget(self.fid_field, 1)
        fid_row.addWidget(fid_browse)
        self.pairs = QSpinBox()
        self.pairs.setRange(1, 10000)
        self.pairs.setValue(50)
        self.pairs.setToolTip("MS-SSIM pairs sampled within each set and between the sets")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the MS-SSIM pair sampling")
        form = QFormLayout()
        form.addRow("Training folder", train_row)
        form.addRow("FID weights", fid_row)
        form.addRow("MS-SSIM pairs", self.pairs)
        form.addRow("Seed", self.seed)

        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["figure", "value"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setWordWrap(True)
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.run)
        self.report_button = QPushButton("Write full report…")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(self.ask_report)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.report_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.left_out)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(760, 560)

    def _ask_fid(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "MedicalNet weights for the 3-D FID", "", "PyTorch weights (*.pth *.pt);;All files (*)"
        )
        if path:
            self.fid_field.setText(path)

    def _ask_train(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of training scans")
        if folder:
            self.train_field.setText(folder)

    def run(self) -> bool:
        """Start the evaluation in the background."""
        from engine.metrics.results import EvaluationOptions

        if self.worker is not None:
            return False
        try:
            options = EvaluationOptions(
                n_pairs=self.pairs.value(),
                seed=self.seed.value(),
                spacing_mm=tuple(float(s) for s in self.spec.grid.spacing_mm),
                scale=float(self.spec.intensity.scale),
                fid_weights=Path(self.fid_field.text().strip()) if self.fid_field.text().strip() else None,
            )
        except BrainSynthError as exc:
            self.report_error("Cannot evaluate", str(exc))
            return False
        train_text = self.train_field.text().strip()
        spec = self.spec
        train = (lambda: prepare_folder(Path(train_text), spec)) if train_text else None
        worker = EvaluationWorker(real=self._real, synthetic=self._synthetic, train=train, options=options)
        self.start_worker(
            worker,
            label="Evaluating…",
            title="Evaluating",
            status="Evaluating…",
            connect={
                "yielded": self._progress,
                "returned": self._show,
                "errored": self._failed,
                "aborted": self._cancelled,
            },
        )
        return True

    def _progress(self, report: tuple[str, int, int]) -> None:
        stage, done, total = report
        self.show_progress(f"{stage[:1].upper()}{stage[1:]}… {done}/{total}", done, total)

    def _show(self, result) -> None:
        self.result = result
        rows = key_figures(result)
        self.table.setRowCount(len(rows))
        for r, (name, value) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(name))
            self.table.setItem(r, 1, QTableWidgetItem(value))
        self.table.resizeRowsToContents()
        self.status.setText("Done. Write the full report for the figures, every parameter and the plots.")
        self.report_button.setEnabled(True)

    def _cancelled(self) -> None:
        self.status.setText("Cancelled.")

    def _failed(self, message: str) -> None:
        self.report_error("Evaluation failed", message)

    def ask_report(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write the evaluation report into")
        if folder:
            self.write_report(Path(folder))

    def write_report(self, out_dir: Path, *, overwrite: bool | None = None) -> list[Path]:
        """Write evaluation.json, report.md and the PNG figures (asks before replacing, unless told)."""
        from engine.evaluation import report_paths, write_report

        if self.result is None:
            return []
        if overwrite is None:
            existing = [p.name for p in report_paths(out_dir) if p.exists()]
            overwrite = False
            if existing:
                if self.quiet:
                    self.report_error("Report not written", f"{', '.join(existing)} already in {out_dir}")
                    return []
                answer = QMessageBox.question(
                    self, "Replace files?", f"{', '.join(existing)} already in {out_dir}. Replace them?"
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return []
                overwrite = True
        try:
            written = write_report(self.result, out_dir, overwrite=overwrite)
        except (BrainSynthError, OSError) as exc:
            self.report_error("Cannot write the report", str(exc))
            return []
        self.status.setText(f"Wrote {len(written)} files into {out_dir}")
        return written
