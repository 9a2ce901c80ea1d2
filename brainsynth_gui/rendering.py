"""Slicing, windowing and colouring volumes for display and export, without Qt.

The on-screen views and the exported GIF/MP4/PNG frames use these same functions, so an
exported animation looks exactly like the window.

Screen conventions (those of FSLeyes, ITK-SNAP and MRIcroGL):

* axial: looking from the feet, anterior up; coronal: looking from the front, superior up;
  sagittal: anterior on the left, superior up.
* radiological (the default): the patient's right on the screen's left in axial and coronal
  views; neurological: the patient's right on the right. Sagittal views are unaffected.

Arrays are RAS+ on the model grid (axis 0 left→right, 1 posterior→anterior, 2 inferior→superior).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Letters at the negative and positive end of each RAS+ array axis.
AXIS_LETTERS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))

COLORMAPS: tuple[str, ...] = ("gray", "bone", "hot", "inferno", "viridis")


@dataclass(frozen=True)
class Plane:
    """An orthogonal view.

    Attributes:
        name: "axial", "coronal" or "sagittal".
        normal: the array axis the view slices through (the one its slider steps).
        horizontal: the array axis along the screen's x.
        vertical: the array axis along the screen's y, pointing up.
    """

    name: str
    normal: int
    horizontal: int
    vertical: int

    def horizontal_sign(self, radiological: bool) -> int:
        """+1 when the array axis grows to the screen's right, -1 when it grows to the left."""
        if self.horizontal == 0:  # left-right: the convention decides
            return -1 if radiological else 1
        return -1  # sagittal: anterior on the left whatever the convention

    def edge_letters(self, radiological: bool) -> dict[str, str]:
        """Orientation letters at the ``left``, ``right``, ``top`` and ``bottom`` edges."""
        neg, pos = AXIS_LETTERS[self.horizontal]
        left, right = (pos, neg) if self.horizontal_sign(radiological) < 0 else (neg, pos)
        bottom, top = AXIS_LETTERS[self.vertical]
        return {"left": left, "right": right, "top": top, "bottom": bottom}


PLANES: dict[str, Plane] = {
    "axial": Plane("axial", normal=2, horizontal=0, vertical=1),
    "coronal": Plane("coronal", normal=1, horizontal=0, vertical=2),
    "sagittal": Plane("sagittal", normal=0, horizontal=1, vertical=2),
}
PLANE_ORDER: tuple[str, ...] = ("axial", "coronal", "sagittal")


def oriented_slice(volume: np.ndarray, plane: Plane, index: int, *, radiological: bool) -> np.ndarray:
    """The slice through ``volume`` at ``index`` along ``plane.normal``, ordered for the screen.

    Returns:
        A 2-D view ``(n_horizontal, n_vertical)``: row 0 is the leftmost screen column and
        column 0 the bottom screen row (pyqtgraph's column-major image order).
    """
    index = min(max(int(index), 0), volume.shape[plane.normal] - 1)
    # np.take keeps the two remaining axes in increasing order, which is (horizontal, vertical).
    section = np.take(volume, index, axis=plane.normal)
    if plane.horizontal_sign(radiological) < 0:
        section = section[::-1, :]
    return section


def screen_rows(section: np.ndarray) -> np.ndarray:
    """An :func:`oriented_slice` as a raster: row 0 at the top, column 0 at the left."""
    return section.T[::-1, :]


def slice_rect_mm(
    plane: Plane, shape: Sequence[int], spacing_mm: Sequence[float], origin_mm: Sequence[float], *, radiological: bool
) -> tuple[float, float, float, float]:
    """Where an :func:`oriented_slice` lies in the view's scene coordinates.

    Scene x is ``sign * mm`` along the horizontal axis (so the screen's right is +x whatever
    the convention), scene y is mm along the vertical axis.

    Returns:
        ``(x, y, width, height)`` in mm of the slice's outer voxel edges.
    """
    h, v = plane.horizontal, plane.vertical
    sign = plane.horizontal_sign(radiological)
    lo_h = origin_mm[h] - spacing_mm[h] / 2
    hi_h = origin_mm[h] + (shape[h] - 0.5) * spacing_mm[h]
    x0 = min(sign * lo_h, sign * hi_h)
    y0 = origin_mm[v] - spacing_mm[v] / 2
    return (x0, y0, shape[h] * spacing_mm[h], shape[v] * spacing_mm[v])


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A 256-entry RGB lookup table (uint8, ``(256, 3)``) for a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; choose one of: {', '.join(COLORMAPS)}") from None
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


def window_to_uint8(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` → 0 and ``high`` → 255, clipping (what a window/level does)."""
    span = max(float(high) - float(low), 1e-6)
    scaled = (np.asarray(data, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / span)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def colourise(raster: np.ndarray, *, low: float, high: float, colormap: str) -> np.ndarray:
    """Window and colour a 2-D raster: ``(H, W)`` floats → ``(H, W, 3)`` uint8 RGB."""
    return colormap_lut(colormap)[window_to_uint8(raster, low, high)]


def render_plane(
    volume: np.ndarray,
    plane: Plane,
    *,
    voxel: Sequence[int],
    spacing_mm: Sequence[float],
    radiological: bool,
    low: float,
    high: float,
    colormap: str,
    mm_per_pixel: float = 1.0,
) -> np.ndarray:
    """One view as an RGB image with square pixels of ``mm_per_pixel`` (bilinear).

    Returns:
        ``(H, W, 3)`` uint8, top row first.
    """
    from PIL import Image

    raster = screen_rows(oriented_slice(volume, plane, voxel[plane.normal], radiological=radiological))
    rgb = colourise(raster, low=low, high=high, colormap=colormap)
    height = max(1, round(raster.shape[0] * spacing_mm[plane.vertical] / mm_per_pixel))
    width = max(1, round(raster.shape[1] * spacing_mm[plane.horizontal] / mm_per_pixel))
    # Resample the coloured image, not the data: the windowing stays exactly as on screen.
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _draw_text(image, xy: tuple[int, int], text: str, *, size: int, fill=(255, 255, 255), anchor: str = "la") -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    font = _font(size)
    x, y = xy
    # A dark outline keeps the text readable over bright tissue.
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        draw.text((x + dx, y + dy), text, font=font, fill=(0, 0, 0), anchor=anchor)
    draw.text((x, y), text, font=font, fill=fill, anchor=anchor)


def compose_views(
    volume: np.ndarray,
    planes: Sequence[str],
    *,
    voxel: Sequence[int],
    spacing_mm: Sequence[float],
    radiological: bool,
    low: float,
    high: float,
    colormap: str,
    caption: str = "",
    mm_per_pixel: float = 1.0,
    letters: bool = True,
    gap_px: int = 4,
) -> np.ndarray:
    """One or more views side by side on black, with orientation letters and a caption.

    Args:
        volume: float array (standard units) on the model grid, RAS+.
        planes: names from :data:`PLANES`, left to right.
        voxel: the cursor; each view shows the slice through it.
        spacing_mm: voxel size of the grid per axis.
        radiological: screen convention (see the module docstring).
        low: intensity shown black.
        high: intensity shown white.
        colormap: a name from :data:`COLORMAPS`.
        caption: text written at the bottom left (e.g. the denoising step).
        mm_per_pixel: output resolution.
        letters: write R/L, A/P, S/I at the view edges.
        gap_px: black columns between views.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    from PIL import Image

    tiles = [
        render_plane(
            volume,
            PLANES[name],
            voxel=voxel,
            spacing_mm=spacing_mm,
            radiological=radiological,
            low=low,
            high=high,
            colormap=colormap,
            mm_per_pixel=mm_per_pixel,
        )
        for name in planes
    ]
    text_size = 14
    caption_band = text_size + 8 if caption else 0
    height = max(t.shape[0] for t in tiles) + caption_band
    width = sum(t.shape[1] for t in tiles) + gap_px * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height))
    x = 0
    for name, tile in zip(planes, tiles, strict=True):
        y = (height - caption_band - tile.shape[0]) // 2
        canvas.paste(Image.fromarray(tile), (x, y))
        if letters:
            edge = PLANES[name].edge_letters(radiological)
            w, h = tile.shape[1], tile.shape[0]
            colour = (255, 200, 60)
            _draw_text(canvas, (x + 3, y + h // 2), edge["left"], size=text_size, fill=colour, anchor="lm")
            _draw_text(canvas, (x + w - 3, y + h // 2), edge["right"], size=text_size, fill=colour, anchor="rm")
            _draw_text(canvas, (x + w // 2, y + 2), edge["top"], size=text_size, fill=colour, anchor="mt")
            _draw_text(canvas, (x + w // 2, y + h - 2), edge["bottom"], size=text_size, fill=colour, anchor="mb")
        x += tile.shape[1] + gap_px
    if caption:
        _draw_text(canvas, (4, height - 4), caption, size=text_size, anchor="lb")
    return np.asarray(canvas)


def pad_to_multiple(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Pad an ``(H, W, 3)`` frame with black at the bottom and right to a multiple of ``multiple``.

    Video encoders (H.264 in yuv420p) need even sizes, and macroblocks of 16 avoid rescaling.
    """
    h, w = frame.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)))
