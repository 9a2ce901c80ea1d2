"""Help ▸ About BrainSynth: version, licences of the bundled parts, the template notice, the model card.

The licence list is what a redistributed desktop bundle must tell its users: above all that
Qt (through PySide6) is used under the LGPL-3.0 as unmodified shared libraries, which a user
may replace. The model card is ``resources/MODEL_CARD.md`` when the installation has one,
rendered as Markdown in its own scrollable tab.
"""

from __future__ import annotations

import html
import importlib.metadata
from dataclasses import dataclass

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QMainWindow,
    QMessageBox,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine import __version__
from engine.resources import resource_path

MODEL_CARD = "MODEL_CARD.md"
NO_MODEL_CARD = (
    "This installation has no model card (resources/MODEL_CARD.md): it ships no demo model, "
    "or the demo model was added without one. Ask whoever trained your checkpoint for its card."
)


@dataclass(frozen=True)
class BundledPart:
    """A third-party part BrainSynth ships with, as the About box lists it."""

    name: str
    distribution: str  # for importlib.metadata.version
    licence: str
    url: str


BUNDLED_PARTS: tuple[BundledPart, ...] = (
    BundledPart(
        "Qt 6 / PySide6", "PySide6_Essentials", "LGPL-3.0-only", "https://doc.qt.io/qtforpython-6/licenses.html"
    ),
    BundledPart("PyTorch", "torch", "BSD-3-Clause", "https://github.com/pytorch/pytorch/blob/main/LICENSE"),
    BundledPart("MONAI", "monai", "Apache-2.0", "https://github.com/Project-MONAI/MONAI/blob/dev/LICENSE"),
    BundledPart("nibabel", "nibabel", "MIT", "https://github.com/nipy/nibabel/blob/master/COPYING"),
    BundledPart("pyqtgraph", "pyqtgraph", "MIT", "https://github.com/pyqtgraph/pyqtgraph/blob/master/LICENSE.txt"),
    BundledPart("NumPy", "numpy", "BSD-3-Clause", "https://numpy.org/doc/stable/license.html"),
    BundledPart("SciPy", "scipy", "BSD-3-Clause", "https://github.com/scipy/scipy/blob/main/LICENSE.txt"),
    BundledPart("scikit-image", "scikit-image", "BSD-3-Clause", "https://github.com/scikit-image/scikit-image"),
    BundledPart("safetensors", "safetensors", "Apache-2.0", "https://github.com/huggingface/safetensors"),
    BundledPart(
        "matplotlib", "matplotlib", "matplotlib (PSF-based)", "https://matplotlib.org/stable/project/license.html"
    ),
)

QT_NOTE = (
    "Qt is used through PySide6 under the GNU Lesser General Public License v3.0 "
    '(<a href="https://www.gnu.org/licenses/lgpl-3.0.html">LGPL-3.0</a>). The desktop bundle ships '
    "PySide6 and Qt unmodified, as the separate shared libraries of the PySide6 wheel (in "
    "<code>_internal/PySide6/</code>), so you may replace them with your own build of the same version; "
    'Qt\'s source is at <a href="https://code.qt.io/">code.qt.io</a>. The licence texts are in '
    "<code>_internal/licenses/</code> of the bundle; see also NOTICE."
)


def installed_version(distribution: str) -> str:
    """The installed version of a distribution, or an empty string when it cannot be told."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def template_notice() -> str:
    """The MNI152 (ICBM 2009a) template notice the demo data and demo model carry."""
    from engine.demo_data import TEMPLATE_NOTICE

    return TEMPLATE_NOTICE


def about_html() -> str:
    """The About tab: version, licences of the bundled parts, the template notice."""
    rows = "".join(
        f"<tr><td>{html.escape(p.name)}</td><td>{html.escape(installed_version(p.distribution))}</td>"
        f'<td><a href="{p.url}">{html.escape(p.licence)}</a></td></tr>'
        for p in BUNDLED_PARTS
    )
    return (
        f"<h2>BrainSynth {html.escape(__version__)}</h2>"
        "<p>Generate and review synthetic 3-D T1-weighted brain MRI with a denoising diffusion model. "
        "Synthetic volumes are not patient data and must not be used for diagnosis.</p>"
        "<p>BrainSynth is licensed under the "
        '<a href="https://www.apache.org/licenses/LICENSE-2.0">Apache License 2.0</a>.</p>'
        "<h3>Third-party software</h3>"
        "<table cellpadding='3'><tr><th align='left'>part</th><th align='left'>version</th>"
        f"<th align='left'>licence</th></tr>{rows}</table>"
        f"<p>{QT_NOTE}</p>"
        "<h3>MNI152 template</h3>"
        "<p>The demo population, the demo scans and the demo model are derived from the ICBM 2009a "
        "symmetric MNI152 template (not patients).</p>"
        f"<p><small>{html.escape(template_notice()).replace(chr(10), ' ')}</small></p>"
    )


def model_card_markdown() -> str | None:
    """The bundled model card (Markdown), or None when this installation has none."""
    path = resource_path(MODEL_CARD)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def application_icon() -> QIcon:
    """The BrainSynth icon (PNG rendered from the project's SVG)."""
    for name in ("icons/brainsynth.png", "icons/brainsynth.svg"):
        path = resource_path(name)
        if path.is_file():
            return QIcon(str(path))
    return QIcon()


class AboutDialog(QDialog):
    """Two scrollable tabs: About (version, licences, template notice) and Model card."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About BrainSynth")
        self.setWindowIcon(application_icon())
        self.resize(680, 560)
        self.tabs = QTabWidget()
        self.about_text = QTextBrowser()
        self.about_text.setOpenExternalLinks(True)
        self.about_text.setHtml(about_html())
        self.tabs.addTab(self.about_text, "About")
        self.model_card = QTextBrowser()
        self.model_card.setOpenExternalLinks(True)
        card = model_card_markdown()
        if card is None:
            self.model_card.setPlainText(NO_MODEL_CARD)
        else:
            self.model_card.setMarkdown(card)
        self.tabs.addTab(self.model_card, "Model card")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        about_qt = buttons.addButton("About Qt", QDialogButtonBox.ButtonRole.HelpRole)
        about_qt.clicked.connect(lambda: QMessageBox.aboutQt(self, "About Qt"))
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(buttons)


def show_about(parent: QWidget | None = None) -> AboutDialog:
    """Open the About box (non-blocking) and return it."""
    dialog = AboutDialog(parent)
    if parent is not None:
        parent._about_dialog = dialog  # keep it alive while it is open
    dialog.open()
    return dialog


def add_help_menu(window: QMainWindow):
    """Add Help ▸ About BrainSynth to a main window's menu bar; returns the action."""
    menu = window.menuBar().addMenu("&Help")
    action = menu.addAction("&About BrainSynth")
    action.triggered.connect(lambda _checked=False: show_about(window))
    return action
