"""How the app's windows tell the user about a failure without stopping."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QMainWindow, QMessageBox, QWidget

from brainsynth_gui.gui_thread_gc import collect_garbage_on_gui_thread


def tell_user(parent: QWidget, title: str, message: str, *, quiet: bool) -> None:
    """A warning dialog, or one line on stderr when ``quiet`` (headless runs, tests)."""
    if quiet:
        print(f"brainsynth: {message}", file=sys.stderr)
    else:
        QMessageBox.warning(parent, title, message)


class ErrorReportingWindow(QMainWindow):
    """A main window that reports errors in a dialog (or on stderr when ``quiet``) and keeps running.

    Every message is also kept in ``errors`` (for ``--screenshot``'s exit status and for tests)
    and shown in the status bar.
    """

    def __init__(self, *, quiet: bool = False) -> None:
        super().__init__()
        collect_garbage_on_gui_thread()  # worker threads must never destroy this window's widgets
        self.quiet = quiet
        self.errors: list[str] = []

    def report_error(self, title: str, message: str) -> None:
        """Tell the user; the window keeps running."""
        self.errors.append(message)
        self.statusBar().showMessage(message, 15000)
        tell_user(self, title, message, quiet=self.quiet)
