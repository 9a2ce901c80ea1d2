"""Help ▸ About BrainSynth: version, licences of the bundled parts, template notice, model card."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QApplication

import brainsynth_gui.about as about
from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles
from engine import __version__
from engine.demo_data import TEMPLATE_NOTICE


@pytest.fixture
def window(qtbot, tmp_path):
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"))
    qtbot.addWidget(window)
    window.show()
    return window


def open_about_from_the_menu(window):
    (help_menu,) = [a.menu() for a in window.menuBar().actions() if a.text() == "&Help"]
    (action,) = [a for a in help_menu.actions() if a.text() == "&About BrainSynth"]
    assert action is window.about_action
    action.trigger()
    QApplication.processEvents()
    dialog = window._about_dialog
    assert dialog.isVisible()
    assert dialog.windowTitle() == "About BrainSynth"
    return dialog


def test_about_box_names_version_licences_and_template_notice(window):
    dialog = open_about_from_the_menu(window)
    text = dialog.about_text.toPlainText()
    assert f"BrainSynth {__version__}" in text
    for part, licence in [
        ("Qt 6 / PySide6", "LGPL-3.0"),
        ("PyTorch", "BSD-3-Clause"),
        ("MONAI", "Apache-2.0"),
        ("nibabel", "MIT"),
        ("pyqtgraph", "MIT"),
        ("NumPy", "BSD-3-Clause"),
        ("SciPy", "BSD-3-Clause"),
    ]:
        lines = [line.strip() for line in text.splitlines()]
        row = lines[lines.index(part) : lines.index(part) + 3]  # a table row: part, version, licence
        assert row[2].startswith(licence), (part, row)
    assert "unmodified" in text
    assert "shared libraries" in text
    assert " ".join(TEMPLATE_NOTICE.split()) in " ".join(text.split())
    links = dialog.about_text.toHtml()
    assert "https://www.gnu.org/licenses/lgpl-3.0.html" in links
    assert dialog.about_text.openExternalLinks()
    assert about.installed_version("torch")  # versions come from the installed distributions
    dialog.close()


def test_model_card_is_rendered_as_markdown_and_scrolls(window, monkeypatch, tmp_path, qtbot):
    card = (
        "# Demo model card\n\n**Intended use:** trying the software.\n\n| epochs | loss |\n|---|---|\n| 50 | 0.01 |\n"
    )
    card += "\n".join(f"- line {i}" for i in range(200))
    (tmp_path / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    monkeypatch.setattr(about, "resource_path", lambda name: tmp_path / name)
    dialog = open_about_from_the_menu(window)
    dialog.tabs.setCurrentWidget(dialog.model_card)
    qtbot.waitUntil(lambda: dialog.model_card.verticalScrollBar().maximum() > 0)
    rendered = dialog.model_card.toPlainText()
    assert rendered.startswith("Demo model card")
    assert "**" not in rendered
    assert "# " not in rendered
    assert "<table" in dialog.model_card.toHtml()
    dialog.close()


def test_without_a_model_card_the_tab_says_so(window, monkeypatch, tmp_path):
    monkeypatch.setattr(about, "resource_path", lambda name: tmp_path / name)
    dialog = open_about_from_the_menu(window)
    assert dialog.model_card.toPlainText() == about.NO_MODEL_CARD
    dialog.close()


def test_application_icon_is_the_bundled_png():
    assert about.resource_path("icons/brainsynth.png").is_file()
    assert not about.application_icon().isNull()
