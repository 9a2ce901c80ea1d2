"""Find bundled files whether installed editable, from a wheel, or frozen by PyInstaller."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.errors import BrainSynthError

DEMO_CHECKPOINT = "demo_model.safetensors"
DEMO_SCANS_DIR = "demo_scans"
CACHE_ENV_VAR = "BRAINSYNTH_CACHE_DIR"


def user_cache_dir() -> Path:
    """Where BrainSynth keeps what it can remake (timings, prepared and preprocessed scans):
    ``$BRAINSYNTH_CACHE_DIR``, else the platform's user cache folder (platformdirs)."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("brainsynth", appauthor=False))


def resources_dir() -> Path:
    """The folder holding the bundled resources."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    import resources

    return Path(resources.__file__).resolve().parent


def resource_path(name: str) -> Path:
    return resources_dir() / name


def bundled_checkpoint() -> Path | None:
    """The bundled demo checkpoint, or None if this installation has none."""
    path = resource_path(DEMO_CHECKPOINT)
    return path if path.is_file() else None


def default_checkpoint(explicit: str | Path | None) -> Path:
    """``explicit`` if given, else the bundled demo checkpoint, else a clear error."""
    if explicit:
        return Path(explicit)
    bundled = bundled_checkpoint()
    if bundled is None:
        raise BrainSynthError(
            "no checkpoint given and this installation has no bundled demo model; "
            "pass --checkpoint FILE (a BrainSynth .safetensors or a MONAI .pt with --preset)"
        )
    return bundled


def bundled_demo_scans() -> list[Path]:
    """The bundled demo scans (NIfTI/MGH files in ``resources/demo_scans``), sorted; empty if none."""
    from engine.volumes import is_supported

    folder = resource_path(DEMO_SCANS_DIR)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))
