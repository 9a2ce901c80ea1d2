"""The Generate panel: device, sampler, steps, count, seed, trajectory frames, progress, cancel."""

from __future__ import annotations

from PySide6.QtCore import QRegularExpression, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.generation_request import GenerationChoices, format_seconds
from brainsynth_gui.generation_worker import ProgressReport
from engine.sampler_registry import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS, sampler_info
from engine.samplers import default_settings, default_steps
from engine.specs import ModelSpec

MAX_VOLUMES = 500
# The engine takes seeds in [0, 2**63); the last volume of a run gets seed + count - 1.
MAX_SEED = 2**63 - MAX_VOLUMES


class SeedEdit(QLineEdit):
    """A whole-number field for any engine seed (a QSpinBox stops at 2**31 - 1, so seeds from
    the command line or a sidecar could not be typed back)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("0", parent)
        self.setValidator(QRegularExpressionValidator(QRegularExpression(r"[0-9]{1,19}"), self))
        self.editingFinished.connect(lambda: self.setValue(self.value()))

    def value(self) -> int:
        """The seed shown, 0 when empty, at most :data:`MAX_SEED`."""
        return min(int(self.text() or 0), MAX_SEED)

    def setValue(self, seed: int) -> None:
        self.setText(str(min(max(int(seed), 0), MAX_SEED)))


class GenerationPanel(QWidget):
    """Controls for one generation run; emits ``generate_requested`` and ``cancel_requested``.

    Args:
        devices: device names offered besides "auto" (see :func:`engine.device.available_devices`).
        auto_label: what "auto" resolves to here, shown in the list.
    """

    generate_requested = Signal(object)  # GenerationChoices
    cancel_requested = Signal()

    def __init__(self, devices: list[str], auto_label: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._spec: ModelSpec | None = None
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.device = QComboBox()
        self.device.addItem(f"auto ({auto_label})" if auto_label else "auto", "auto")
        for name in devices:
            self.device.addItem(name, name)
        self.device.setToolTip("auto: CUDA GPU, then Apple MPS, then CPU")
        self.sampler = QComboBox()
        for name, info in SAMPLERS.items():
            self.sampler.addItem(info.label, name)
        self.sampler.setCurrentIndex(SAMPLER_NAMES.index(DEFAULT_SAMPLER))
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setValue(sampler_info(DEFAULT_SAMPLER).default_steps)
        self.steps.setToolTip("Denoising steps per volume: more is slower and usually cleaner")
        self.sampler.currentIndexChanged.connect(self._sampler_changed)
        self.count = QSpinBox()
        self.count.setRange(1, MAX_VOLUMES)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setToolTip("Volumes denoised together: faster on a large GPU, same volumes, more memory")
        self.seed = SeedEdit()
        self.seed.setToolTip("Volume k gets seed + k; the same seed on the same device gives the same volume")
        self.random_seed = QCheckBox("random")
        self.random_seed.toggled.connect(lambda on: self.seed.setEnabled(not on))
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        self.frames = QSpinBox()
        self.frames.setRange(0, 1000)
        self.frames.setValue(20)
        self.frames.setToolTip("Denoising frames kept per volume for the timeline and animations (0 = none)")
        self.precision = QComboBox()
        self.precision.addItem("auto (bf16 where faster here)", "auto")
        self.precision.addItem("fp32", "fp32")
        self.precision.addItem("bf16", "bf16")
        self.precision.setToolTip(
            "auto times one step in fp32 and in bf16 the first time a model runs on a device and keeps the faster;"
            " bf16 needs a GPU or CPU with bf16 units"
        )
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Sampler", self.sampler)
        form.addRow("Steps", self.steps)
        form.addRow("Volumes", self.count)
        form.addRow("Batch size", self.batch)
        form.addRow("Seed", seed_row)
        form.addRow("Trajectory frames", self.frames)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(lambda: self.generate_requested.emit(self.choices()))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 1)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.status = QLabel("Ready")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def _sampler_changed(self) -> None:
        name = self.sampler.currentData()
        self.steps.setValue(default_steps(self._spec, name) if self._spec else sampler_info(name).default_steps)

    def select_sampler(self, name: str) -> None:
        """Choose a sampler; the steps become the model's count for it."""
        self.sampler.setCurrentIndex(self.sampler.findData(name))
        self._sampler_changed()

    def set_model(self, spec: ModelSpec) -> None:
        """Offer the model's own default sampler and steps, at most its training timesteps."""
        self._spec = spec
        self.steps.setMaximum(spec.schedule.num_train_timesteps)
        self.select_sampler(default_settings(spec).name)

    def choices(self) -> GenerationChoices:
        """The settings as entered."""
        return GenerationChoices(
            device=self.device.currentData(),
            precision=self.precision.currentData(),
            sampler=self.sampler.currentData(),
            steps=self.steps.value(),
            count=self.count.value(),
            seed=self.seed.value(),
            random_seed=self.random_seed.isChecked(),
            trajectory_frames=self.frames.value(),
            batch_size=self.batch.value(),
        )

    def set_choices(self, choices: GenerationChoices) -> None:
        """Fill the controls from ``choices`` (the command line uses this)."""
        index = self.device.findData(choices.device)
        if index >= 0:
            self.device.setCurrentIndex(index)
        self.precision.setCurrentIndex(max(self.precision.findData(choices.precision), 0))
        self.sampler.setCurrentIndex(max(self.sampler.findData(choices.sampler), 0))
        self.steps.setValue(choices.steps)
        self.count.setValue(choices.count)
        self.seed.setValue(choices.seed)
        self.random_seed.setChecked(choices.random_seed)
        self.frames.setValue(choices.trajectory_frames)
        self.batch.setValue(choices.batch_size)

    def set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.status.setText("Starting… (building the model)")

    def show_progress(self, report: ProgressReport) -> None:
        self.progress.setValue(round(report.fraction * 1000))
        self.status.setText(
            f"Volume {report.volume}/{report.volumes} (seed {report.seed}) · step {report.step}/{report.steps}"
            f" · {format_seconds(report.seconds_left)} left\nPrecision {report.precision}"
        )

    def show_message(self, text: str) -> None:
        self.status.setText(text)
