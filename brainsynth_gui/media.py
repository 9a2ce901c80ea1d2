"""Writing animations (GIF, MP4) and still images (PNG), atomically and without Qt.

GIF needs only Pillow (through imageio). MP4 needs the optional ``imageio-ffmpeg`` package
(the ``video`` extra); without it :func:`write_animation` says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.atomic import atomic_path
from engine.errors import ExportError

ANIMATION_FORMATS: tuple[str, ...] = (".gif", ".mp4")
MP4_HINT = (
    "MP4 export needs the optional imageio-ffmpeg package: pip install 'brainsynth[video]' "
    "(or pip install imageio-ffmpeg). GIF export works without it."
)


def ffmpeg_available() -> bool:
    """Whether MP4 export can run here."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_animation(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    *,
    fps: float,
    hold_last_seconds: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write RGB frames as an animated GIF (looping) or an H.264 MP4, chosen by the suffix.

    Args:
        path: target ending in .gif or .mp4.
        frames: ``(H, W, 3)`` uint8 images, all the same size.
        fps: frames per second (1 to 60).
        hold_last_seconds: extra time the last frame stays before the animation loops.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        ExportError: unsupported suffix, no frames, an existing file, imageio-ffmpeg missing
            for MP4, or a write failure.
    """
    import imageio.v2 as imageio

    from brainsynth_gui.rendering import pad_to_multiple

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_FORMATS:
        raise ExportError(f"{path.name}: animations are saved as .gif or .mp4")
    if not frames:
        raise ExportError("nothing to export: the animation has no frames")
    fps = min(max(float(fps), 1.0), 60.0)
    if suffix == ".mp4" and not ffmpeg_available():
        raise ExportError(MP4_HINT)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            if suffix == ".gif":
                # Per-frame durations (ms): Pillow merges identical frames, so the hold is a
                # longer last frame rather than repeated ones.
                durations = [1000.0 / fps] * len(frames)
                durations[-1] += 1000.0 * max(hold_last_seconds, 0.0)
                imageio.mimwrite(tmp, list(frames), format="GIF", duration=durations, loop=0)
            else:
                hold = [frames[-1]] * round(max(hold_last_seconds, 0.0) * fps)
                padded = [pad_to_multiple(f, 16) for f in [*frames, *hold]]
                imageio.mimwrite(tmp, padded, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=16)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def write_png(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as PNG, atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ExportError(f"{path.name}: screenshots are saved as .png")
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            imageio.imwrite(tmp, image, format="PNG")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
