"""Entry point of the ``brainsynth`` desktop app."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainsynth", description="Generate and review synthetic 3-D brain MRI.")
    parser.add_argument("--version", action="version", version=f"brainsynth {__version__}")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to open (default: the bundled demo model)")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the window and exit (works headless)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.screenshot and not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from brainsynth_gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("BrainSynth")
    app.setApplicationVersion(__version__)
    window = MainWindow()
    window.open_checkpoint(args.checkpoint, quiet=args.screenshot is not None)
    window.resize(1100, 700)
    window.show()
    if args.screenshot:

        def save_and_quit() -> None:
            window.grab().save(str(args.screenshot))
            app.quit()

        QTimer.singleShot(200, save_and_quit)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
