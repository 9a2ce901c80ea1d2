"""The denoising timeline: a thin widget over :class:`~brainsynth_gui.state.TrajectoryState`.

Scrub with the slider (a click on the groove jumps there), step with , and . (window
shortcuts), play/pause with Space at the chosen frame rate, and choose x_t (the noisy sample)
or the predicted x_0. The first frame is the starting noise, the last the final sample.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.state import TrajectoryState

KIND_LABELS = {"x_t": "x_t (noisy sample)", "x0": "predicted x_0"}


class JumpSlider(QSlider):
    """A slider that jumps to where its groove is clicked (not one page towards it)."""

    def mousePressEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton and self.maximum() > self.minimum():
            option = QStyleOptionSlider()
            self.initStyleOption(option)
            handle = self.style().subControlRect(
                QStyle.ComplexControl.CC_Slider, option, QStyle.SubControl.SC_SliderHandle, self
            )
            if not handle.contains(ev.position().toPoint()):
                groove = self.style().subControlRect(
                    QStyle.ComplexControl.CC_Slider, option, QStyle.SubControl.SC_SliderGroove, self
                )
                span = max(groove.width() - handle.width(), 1)
                x = int(ev.position().x()) - groove.x() - handle.width() // 2
                self.setValue(
                    QStyle.sliderValueFromPosition(self.minimum(), self.maximum(), x, span, option.upsideDown)
                )
                ev.accept()
                return
        super().mousePressEvent(ev)


class TimelineBar(QWidget):
    """Play/pause, slider, step label, kind and speed controls, and the playback timer.

    Args:
        state: the trajectory state it shows and writes.
    """

    def __init__(self, state: TrajectoryState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.recording = False  # a run is recording frames for the volume to come
        # Qt's own media icons: the ⏸ glyph is missing from many fonts.
        self._play_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay)
        self._pause_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPause)
        self.play_button = QPushButton(self._play_icon, "Play")
        self.play_button.setToolTip("Play or pause the denoising (Space)")
        self.play_button.clicked.connect(state.toggle_playing)
        self.slider = JumpSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Recorded denoising steps (, and . step through them)")
        self.slider.valueChanged.connect(state.set_index)
        self.label = QLabel()
        self.slider.setMinimumWidth(160)
        self.kind = QComboBox()
        for kind in TrajectoryState.KINDS:
            self.kind.addItem(KIND_LABELS[kind], kind)
        self.kind.setToolTip("Show the noisy sample x_t or the network's prediction of the clean volume (X)")
        self.kind.currentIndexChanged.connect(lambda: state.set_kind(self.kind.currentData()))
        self.fps = QDoubleSpinBox()
        self.fps.setRange(TrajectoryState.MIN_FPS, TrajectoryState.MAX_FPS)
        self.fps.setDecimals(0)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip("Playback speed, frames per second")
        self.fps.valueChanged.connect(state.set_fps)
        # Two rows: the slider keeps its width at 1024 pixels and the frame label is never cut.
        top = QHBoxLayout()
        top.setContentsMargins(6, 2, 6, 0)
        top.addWidget(QLabel("Denoising:"))
        top.addWidget(self.play_button)
        top.addWidget(self.slider, 1)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(6, 0, 6, 2)
        bottom.addWidget(self.label, 1)
        bottom.addWidget(self.kind)
        bottom.addWidget(self.fps)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(top)
        layout.addLayout(bottom)
        self.timer = QTimer(self)
        self.timer.timeout.connect(state.advance)
        state.subscribe(self.refresh)
        self.refresh()

    def set_recording(self, recording: bool) -> None:
        """Say whether a run now under way records frames (then an empty timeline is not "none recorded")."""
        self.recording = bool(recording)
        self.refresh()

    def refresh(self) -> None:
        state = self.state
        frames = len(state)
        for widget in (self.slider, self.play_button, self.kind, self.fps):
            widget.setEnabled(frames > 1)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(frames - 1, 0))
        self.slider.setValue(state.index)
        self.slider.blockSignals(False)
        self.kind.blockSignals(True)
        self.kind.setCurrentIndex(TrajectoryState.KINDS.index(state.kind))
        self.kind.blockSignals(False)
        self.fps.blockSignals(True)
        self.fps.setValue(state.fps)
        self.fps.blockSignals(False)
        if frames:
            text = state.label()
        elif self.recording:
            text = "recording the denoising; the frames appear when the volume is done"
        else:
            text = "no trajectory recorded (set trajectory frames before generating)"
        self.label.setText(text)
        self.play_button.setText("Pause" if state.playing else "Play")
        self.play_button.setIcon(self._pause_icon if state.playing else self._play_icon)
        self.timer.setInterval(round(1000 / state.fps))
        if state.playing and not self.timer.isActive():
            self.timer.start()
        elif not state.playing:
            self.timer.stop()
