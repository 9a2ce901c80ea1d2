"""Render the project's SVG icon to PNG (and, on request, ICO) with Qt's own SVG renderer.

    python packaging/desktop/render_icon.py                 # resources/icons/brainsynth.png, 256 px
    python packaging/desktop/render_icon.py --size 512 --out icon.png
    python packaging/desktop/render_icon.py --out resources/icons/brainsynth.ico   # for a Windows build

The committed PNG is what the app, the .desktop file and the bundle use; re-run this after
changing the SVG. Works headless (offscreen Qt platform).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SVG = ROOT / "resources" / "icons" / "brainsynth.svg"


def render(svg: Path, out: Path, size: int) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out)):
        raise SystemExit(f"could not write {out} (no Qt image plugin for {out.suffix}?)")
    print(f"{out} ({size} x {size} px)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svg", type=Path, default=SVG)
    parser.add_argument("--out", type=Path, default=SVG.with_suffix(".png"))
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    render(args.svg, args.out, args.size)


if __name__ == "__main__":
    main()
