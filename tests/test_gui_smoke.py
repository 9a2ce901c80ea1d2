"""The desktop app opens, shows a checkpoint and reports bad files in the window."""

from __future__ import annotations

import subprocess
import sys

from brainsynth_gui.main_window import MainWindow


def test_window_shows_checkpoint(qtbot, tiny_checkpoint):
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.open_checkpoint(tiny_checkpoint, quiet=True)
    assert "tiny" in window.info.text() and "16 x 24 x 16" in window.info.text()


def test_bad_checkpoint_is_reported_not_raised(qtbot, tmp_path):
    window = MainWindow()
    qtbot.addWidget(window)
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert not window.open_checkpoint(bad, quiet=True)
    assert "not a readable safetensors" in window.statusBar().currentMessage()


def test_screenshot_command_line(tmp_path, tiny_checkpoint):
    shot = tmp_path / "window.png"
    cmd = [sys.executable, "-m", "brainsynth_gui.app", "--checkpoint", str(tiny_checkpoint), "--screenshot", str(shot)]
    subprocess.run(cmd, check=True, timeout=120, env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert shot.stat().st_size > 1000
