"""Entry point of the ``brainsynth`` desktop app.

``brainsynth [--checkpoint CKPT] [--real FILE_OR_DIR] [--generate N] [--screenshot FILE]``
``brainsynth READER.bsstudy`` (or ``--pack READER.bsstudy``): rate a reader's study pack.

With ``--screenshot`` (like ``fsleyes render``) the window opens with what was asked, waits for
any generation to finish, saves a PNG of the whole window and exits; it works headless (the
offscreen Qt platform is chosen when there is no display). The exit status is 0 when
everything asked for worked, 1 when an error was reported (the PNG is saved either way).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import __version__
from engine.sampler_registry import SAMPLER_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainsynth", description="Generate and review synthetic 3-D brain MRI.")
    parser.add_argument("--version", action="version", version=f"brainsynth {__version__}")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to open (default: the bundled demo model)")
    parser.add_argument(
        "--real", type=Path, action="append", metavar="FILE_OR_DIR", help="real scan(s) to compare with (repeatable)"
    )
    parser.add_argument("--generate", type=int, metavar="N", help="generate N volumes on start")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="sampler for --generate")
    parser.add_argument("--steps", type=int, help="denoising steps for --generate")
    parser.add_argument("--seed", type=int, help="first seed for --generate")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument(
        "--screenshot", type=Path, metavar="FILE", help="save a PNG of the window and exit (works headless)"
    )
    parser.add_argument("--size", default="1400x860", help="window size for --screenshot, WIDTHxHEIGHT")
    parser.add_argument("--pack", type=Path, metavar="FILE", help="a study pack (.bsstudy) to rate")
    parser.add_argument("pack_file", type=Path, nargs="?", metavar="PACK", help="a study pack (.bsstudy) to rate")
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
    from brainsynth_gui.about import application_icon

    app.setWindowIcon(application_icon())
    window = MainWindow(quiet=args.screenshot is not None)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        width, height = 1400, 860
    window.resize(width, height)
    window.open_checkpoint(args.checkpoint, wait=bool(args.generate))  # --generate needs the model
    if args.real:
        window.open_scans(list(args.real))
    else:
        window.open_demo_scans()
    window.show()

    pack = args.pack or args.pack_file
    if pack is not None:
        window.open_pack(pack)

    if args.generate:
        from dataclasses import replace

        panel = window.generation_panel
        if args.sampler:
            panel.select_sampler(args.sampler)  # and the model's steps for it, unless --steps
        changes = {"count": args.generate}
        for key in ("steps", "seed", "device"):
            if getattr(args, key) is not None:
                changes[key] = getattr(args, key)
        panel.set_choices(replace(panel.choices(), **changes))
        window.start_generation()

    if args.screenshot:

        def save_and_quit() -> None:
            app.processEvents()
            window.save_views_png(args.screenshot, whole_window=True)
            app.exit(1 if window.errors else 0)

        def when_idle() -> None:
            # Wait for the generation and any scan preparation, then let the views repaint.
            if window.busy:
                QTimer.singleShot(100, when_idle)
            else:
                QTimer.singleShot(300, save_and_quit)

        QTimer.singleShot(100, when_idle)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
