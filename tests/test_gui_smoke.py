"""The desktop app opens, shows a checkpoint, reports bad files, and renders headless screenshots."""

from __future__ import annotations

import os
import subprocess
import sys

from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles


def test_window_shows_checkpoint(qtbot, tmp_path, tiny_checkpoint):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"))
    qtbot.addWidget(window)
    assert window.open_checkpoint(tiny_checkpoint, wait=True)
    assert "tiny" in window.model_info.text()
    assert "16 x 24 x 16" in window.model_info.text()


def test_bad_checkpoint_is_reported_not_raised(qtbot, tmp_path):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    qtbot.addWidget(window)
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert not window.open_checkpoint(bad, wait=True)
    assert "not a readable safetensors" in window.statusBar().currentMessage()
    assert window.errors
    assert "not a readable safetensors" in window.errors[0]


def test_screenshot_command_line_waits_for_generation(tmp_path, tiny_checkpoint):
    from tests.helpers_volumes import write_phantom

    shot = tmp_path / "window.png"
    scan = write_phantom(tmp_path / "phantom.nii.gz")
    cmd = [
        sys.executable, "-m", "brainsynth_gui.app", "--checkpoint", str(tiny_checkpoint), "--real", str(scan),
        "--generate", "2", "--steps", "2", "--device", "cpu", "--screenshot", str(shot),
    ]  # fmt: skip
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "BRAINSYNTH_CONFIG_DIR": str(tmp_path / "cfg")}
    result = subprocess.run(cmd, timeout=120, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import imageio.v3 as iio

    image = iio.imread(shot)
    assert image.shape[1] >= 1000
    assert image[..., :3].std() > 10


def test_screenshot_with_a_bad_checkpoint_exits_nonzero_with_the_message(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    shot = tmp_path / "window.png"
    cmd = [sys.executable, "-m", "brainsynth_gui.app", "--checkpoint", str(bad), "--screenshot", str(shot)]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "BRAINSYNTH_CONFIG_DIR": str(tmp_path / "cfg")}
    result = subprocess.run(cmd, timeout=120, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "not a readable safetensors" in result.stderr
    assert shot.is_file()


def test_seed_field_takes_any_engine_seed(qtbot):
    from PySide6.QtCore import Qt

    from brainsynth_gui.generation_panel import MAX_SEED, GenerationPanel
    from brainsynth_gui.generation_request import GenerationChoices

    panel = GenerationPanel(["cpu"])
    qtbot.addWidget(panel)
    big = 2**40 + 3  # beyond a QSpinBox's 2**31 - 1, as seeds from the command line may be
    panel.set_choices(GenerationChoices(seed=big, count=2))
    assert panel.choices().seed == big
    assert panel.choices().resolve_seeds() == [big, big + 1]
    panel.seed.clear()
    qtbot.keyClicks(panel.seed, "12x-3")  # the validator lets only digits through
    assert panel.seed.text() == "123"
    panel.seed.setText("9" * 19)
    panel.seed.editingFinished.emit()
    assert panel.seed.text() == str(MAX_SEED)
    panel.set_choices(GenerationChoices(seed=MAX_SEED, count=500))
    assert panel.choices().resolve_seeds()[-1] == 2**63 - 1
    qtbot.keyClick(panel.seed, Qt.Key.Key_Backspace)
    assert panel.choices().seed == MAX_SEED // 10


def test_generate_panel_starts_from_the_models_default_sampler(qtbot):
    from dataclasses import replace

    from brainsynth_gui.generation_panel import GenerationPanel
    from engine.specs import PRESETS, SamplerSettings

    panel = GenerationPanel(["cpu"])
    qtbot.addWidget(panel)
    assert (panel.choices().sampler, panel.choices().steps) == ("dpmpp-2m", 25)  # no model yet
    panel.set_model(replace(PRESETS["tiny"], default_sampler=SamplerSettings("ddim", 7)))
    assert (panel.choices().sampler, panel.choices().steps) == ("ddim", 7)
    panel.select_sampler("dpmpp-2m")
    assert panel.choices().steps == 25
    panel.sampler.setCurrentIndex(panel.sampler.findData("ddim"))  # as a user picks it
    assert panel.choices().steps == 7
    panel.set_model(PRESETS["demo"])
    assert (panel.choices().sampler, panel.choices().steps) == ("ddpm", 100)
    assert panel.steps.maximum() == 1000
