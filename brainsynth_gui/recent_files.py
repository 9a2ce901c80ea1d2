"""Recently opened checkpoints and scans, kept per user through platformdirs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from engine.atomic import atomic_write_text

KINDS: tuple[str, ...] = ("checkpoints", "scans")


def default_store_path() -> Path:
    """``recent.json`` in the user's config folder (e.g. ~/.config/BrainSynth on Linux).

    ``BRAINSYNTH_CONFIG_DIR`` overrides the folder (tests, portable installs).
    """
    override = os.environ.get("BRAINSYNTH_CONFIG_DIR")
    if override:
        return Path(override) / "recent.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("BrainSynth", appauthor=False)) / "recent.json"


class RecentFiles:
    """Most-recent-first lists of paths, one per kind, saved after each change.

    A damaged or unreadable store is treated as empty: losing the list must never stop the
    app from starting.

    Args:
        path: the JSON file (default :func:`default_store_path`).
        limit: how many paths to keep per kind.
    """

    def __init__(self, path: Path | None = None, *, limit: int = 10) -> None:
        self.path = path or default_store_path()
        self.limit = limit
        self._items: dict[str, list[str]] = {kind: [] for kind in KINDS}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            for kind in KINDS:
                self._items[kind] = [str(p) for p in data.get(kind, []) if isinstance(p, str)][:limit]
        except (OSError, ValueError, AttributeError):
            pass

    def get(self, kind: str) -> list[Path]:
        """The paths of ``kind`` that still exist, most recent first."""
        return [Path(p) for p in self._items[kind] if Path(p).exists()]

    def add(self, kind: str, path: str | os.PathLike) -> None:
        """Put ``path`` first in its list and save (save errors are ignored)."""
        text = str(Path(path).resolve())
        items = [text] + [p for p in self._items[kind] if p != text]
        self._items[kind] = items[: self.limit]
        # Losing the list is harmless; a read-only config folder must not break opening files.
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps(self._items, indent=1), overwrite=True)
