"""The main window. For now: open a checkpoint and show what it holds."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox

from engine import __version__
from engine.errors import BrainSynthError


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(f"BrainSynth {__version__}")
        self.checkpoint = None
        self.info = QLabel("No checkpoint loaded. File ▸ Open checkpoint…")
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setMargin(16)
        self.setCentralWidget(self.info)
        menu = self.menuBar().addMenu("&File")
        menu.addAction("&Open checkpoint…", self._ask_checkpoint, "Ctrl+O")
        menu.addSeparator()
        menu.addAction("&Quit", self.close, "Ctrl+Q")

    def _ask_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open checkpoint", "", "Checkpoints (*.safetensors *.pt *.pth);;All files (*)"
        )
        if path:
            self.open_checkpoint(Path(path))

    def open_checkpoint(self, path: Path | None, *, quiet: bool = False) -> bool:
        """Load ``path`` (or the bundled demo model); errors go to a dialog, never a crash."""
        from engine.checkpoint import load_checkpoint
        from engine.resources import default_checkpoint

        try:
            self.checkpoint = load_checkpoint(default_checkpoint(path))
        except BrainSynthError as exc:
            self.statusBar().showMessage(str(exc))
            if not quiet:
                QMessageBox.warning(self, "Cannot open checkpoint", str(exc))
            return False
        spec = self.checkpoint.spec
        grid = " x ".join(map(str, spec.grid.shape))
        self.info.setText(
            f"<h3>{self.checkpoint.path.name}</h3>"
            f"<p>preset <b>{spec.name}</b>, grid {grid} voxels "
            f"({' x '.join(f'{s:.2f}' for s in spec.grid.spacing_mm)} mm, MNI152, RAS+)</p>"
            f"<p>channels {tuple(spec.unet.channels)}, schedule {spec.schedule.schedule} "
            f"(T = {spec.schedule.num_train_timesteps})</p>"
            f"<p>EMA weights: {'yes' if self.checkpoint.has_ema else 'no'}</p>"
        )
        self.statusBar().showMessage(f"Loaded {self.checkpoint.path}")
        return True
