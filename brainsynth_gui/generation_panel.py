"""The Generate panel: device, sampler, steps, count, seed, trajectory frames, the conditions
of a conditional model and guidance, progress, cancel."""

from __future__ import annotations

from PySide6.QtCore import QRegularExpression, Qt, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.generation_request import GenerationChoices, format_seconds
from brainsynth_gui.generation_worker import ProgressReport
from engine.conditions import ANY_VALUE, Covariate
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


def _guidance_box() -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 20.0)
    box.setSingleStep(0.5)
    box.setDecimals(2)
    box.setValue(1.0)
    box.setToolTip(
        "Classifier-free guidance: 1 = the plain conditional model, 0 = ignore the conditions, above 1 ="
        " follow them more strongly (each step then runs the network twice as wide)"
    )
    return box


def _short_unit(covariate: Covariate) -> str:
    """`` years`` or `` mL``: the first word of the covariate's unit for its label (the rest, such
    as a data-field number, is in the field's tooltip); nothing for a unit in brackets or none."""
    word = covariate.unit.split(",")[0].strip()
    return "" if not word or word.startswith("(") or " " in word else f" {word}"


class ContinuousCovariate(QWidget):
    """A continuous covariate: "any" (its null), or a value on a slider and in a field, both
    limited to the model's training range unless extrapolation is allowed
    (:meth:`set_extrapolation`: the field then reaches one range's width beyond either end; the
    slider keeps to the training range)."""

    STEPS = 1000  # slider positions across the training range

    def __init__(self, covariate: Covariate, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.covariate = covariate
        lo, hi = covariate.minimum, covariate.maximum
        self.any = QCheckBox(ANY_VALUE)
        self.any.setChecked(True)
        self.any.setToolTip(f"No condition on {covariate.name}: the whole training population")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, self.STEPS)
        self.field = QDoubleSpinBox()
        self.field.setRange(lo, hi)
        self.field.setDecimals(1)
        self.field.setSingleStep(max((hi - lo) / 40, 0.1))
        self.field.setValue((lo + hi) / 2)
        self.field.setToolTip(f"{covariate.name}: training range {lo:g} to {hi:g} {covariate.unit}".rstrip())
        self.slider.setValue(self._position(self.field.value()))
        self.slider.valueChanged.connect(self._slid)
        self.field.valueChanged.connect(lambda v: self._sync_slider(v))
        self.any.toggled.connect(self._any_toggled)
        self._any_toggled(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.any)
        row.addWidget(self.slider, 1)
        row.addWidget(self.field)

    def set_extrapolation(self, allowed: bool) -> None:
        """Let the field go outside the training range (by one range's width each way), or not."""
        lo, hi = self.covariate.minimum, self.covariate.maximum
        span = (hi - lo) or max(abs(hi), 1.0)
        if allowed:
            self.field.setRange(lo - span, hi + span)
            self.field.setToolTip(
                f"{self.covariate.name}: training range {lo:g} to {hi:g}; values outside it are extrapolation"
            )
        else:
            self.field.setRange(lo, hi)  # a value outside comes back to the nearest end of the range
            self.field.setToolTip(f"{self.covariate.name}: training range {lo:g} to {hi:g}")

    def _position(self, value: float) -> int:
        lo, hi = self.covariate.minimum, self.covariate.maximum
        return min(max(round((value - lo) / ((hi - lo) or 1.0) * self.STEPS), 0), self.STEPS)

    def _slid(self, position: int) -> None:
        lo, hi = self.covariate.minimum, self.covariate.maximum
        self.field.setValue(lo + (hi - lo) * position / self.STEPS)

    def _sync_slider(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self._position(value))
        self.slider.blockSignals(False)

    def _any_toggled(self, on: bool) -> None:
        self.slider.setEnabled(not on)
        self.field.setEnabled(not on)

    def value(self) -> float | None:
        return None if self.any.isChecked() else float(self.field.value())

    def set_value(self, value) -> None:
        self.any.setChecked(value is None)
        if value is not None:
            self.field.setValue(float(value))


class CategoricalCovariate(QComboBox):
    """A categorical covariate: "any" (its null) or one of the model's categories."""

    def __init__(self, covariate: Covariate, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.covariate = covariate
        self.addItem(ANY_VALUE, None)
        for category in covariate.categories:
            self.addItem(category, category)
        self.setToolTip(f"{covariate.name}: one of {', '.join(covariate.categories)}, or any")

    def value(self) -> str | None:
        return self.currentData()

    def set_value(self, value) -> None:
        self.setCurrentIndex(max(self.findData(value), 0) if value is not None else 0)


#: Characters a drop-down of the panel shows at least, whatever its longest item.
COMBO_MIN_CHARACTERS = 14


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
        self.precision.addItem("auto (bf16 if faster)", "auto")
        self.precision.addItem("fp32", "fp32")
        self.precision.addItem("bf16", "bf16")
        self.precision.setToolTip(
            "auto times one step in fp32 and in bf16 the first time a model runs on a device and keeps the faster;"
            " bf16 needs a GPU or CPU with bf16 units"
        )
        for combo in (self.device, self.precision, self.sampler):
            # Sized by a short text, not the longest item (the open list shows every item whole), so
            # the side panel fits beside the views at 1024 x 700.
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Sampler", self.sampler)
        form.addRow("Steps", self.steps)
        form.addRow("Volumes", self.count)
        form.addRow("Batch size", self.batch)
        form.addRow("Seed", seed_row)
        form.addRow("Trajectory frames", self.frames)

        # One control per covariate of the loaded model (built in set_model), and guidance.
        self.conditions_box = QGroupBox("Conditions")
        self.conditions_form = QFormLayout(self.conditions_box)
        self.covariate_controls: dict[str, ContinuousCovariate | CategoricalCovariate] = {}
        self.guidance = _guidance_box()
        self.extrapolation = self._extrapolation_box()
        self.conditions_box.setVisible(False)

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
        layout.addWidget(self.conditions_box)
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
        self._build_condition_controls(spec)

    def _build_condition_controls(self, spec: ModelSpec) -> None:
        """One control per covariate of ``spec`` (none, and the box hidden, for an unconditional model)."""
        while self.conditions_form.rowCount():
            self.conditions_form.removeRow(0)  # deletes the row's widgets, guidance included
        self.covariate_controls = {}
        self.guidance = _guidance_box()
        self.extrapolation = self._extrapolation_box()
        conditions = spec.conditions
        self.conditions_box.setVisible(conditions is not None)
        if conditions is None:
            return
        for covariate in conditions.covariates:
            if covariate.kind == "continuous":
                control: ContinuousCovariate | CategoricalCovariate = ContinuousCovariate(covariate)
                label = f"{covariate.name} ({covariate.minimum:g}–{covariate.maximum:g}{_short_unit(covariate)})"
            else:
                control = CategoricalCovariate(covariate)
                label = covariate.name
            self.covariate_controls[covariate.name] = control
            self.conditions_form.addRow(label, control)
        if any(c.kind == "continuous" for c in conditions.covariates):
            self.conditions_form.addRow("", self.extrapolation)
        self.conditions_form.addRow("Guidance", self.guidance)

    def _extrapolation_box(self) -> QCheckBox:
        box = QCheckBox("Allow extrapolation")
        box.setToolTip(
            "Accept values outside the training range of a continuous covariate (the model has seen none "
            "there; each volume's record says so). Off: values are kept inside the range."
        )
        box.toggled.connect(self._extrapolation_toggled)
        return box

    def _extrapolation_toggled(self, allowed: bool) -> None:
        for control in self.covariate_controls.values():
            if isinstance(control, ContinuousCovariate):
                control.set_extrapolation(allowed)

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
            conditions=tuple((name, control.value()) for name, control in self.covariate_controls.items()),
            guidance=self.guidance.value(),
            allow_extrapolation=self.extrapolation.isChecked(),
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
        self.extrapolation.setChecked(choices.allow_extrapolation)  # first: it sets the fields' ranges
        for name, value in choices.conditions:
            if name in self.covariate_controls:
                self.covariate_controls[name].set_value(value)
        self.guidance.setValue(choices.guidance)

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
