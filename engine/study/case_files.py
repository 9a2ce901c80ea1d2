"""A case's file on disk: its SHA-256 fingerprint and whether it is still the file the study was made with.

A study stores each case file's SHA-256 when it is created, so a file replaced later is
refused instead of being shown under the old truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from engine.study.errors import StudyError

#: What is wrong with a case file: gone, or not the content the study was created with.
FileProblem = Literal["missing", "changed"]


def case_file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex).

    Raises:
        StudyError: the file cannot be read.
    """
    from engine.export import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise StudyError(f"cannot read {path}: {exc.strerror or exc}") from exc


def case_file_problem(path: Path, digest: str) -> FileProblem | None:
    """Whether the case file at ``path`` is missing or changed against the stored ``digest``; None if intact."""
    if not path.is_file():
        return "missing"
    if case_file_sha256(path) != digest:
        return "changed"
    return None


def sidecar_kind(path: Path) -> str | None:
    """What a volume's BrainSynth sidecar says it is (``"synthetic"``, ``"prepared"``...), or None without one."""
    import json

    from engine.errors import BrainSynthError
    from engine.export import sidecar_path

    try:
        sidecar = sidecar_path(path)
        payload = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None
    except (OSError, ValueError, BrainSynthError):
        return None
    kind = payload.get("kind") if isinstance(payload, dict) else None
    return str(kind) if kind is not None else None


def synthetic_files(paths: list[Path]) -> list[Path]:
    """The files among ``paths`` whose sidecar says they are synthetic (BrainSynth exports)."""
    return [p for p in paths if sidecar_kind(p) == "synthetic"]


#: Above this ratio of the larger pool to the smaller, a study is unbalanced enough to warn.
MAX_POOL_RATIO = 1.5


def pool_balance_warning(n_real: int, n_synthetic: int) -> str | None:
    """A warning when one pool is much larger than the other, or None.

    With unbalanced pools a reader who always answers the larger kind scores well without
    looking, and the per-kind statistics rest on few cases.
    """
    small, large = sorted((int(n_real), int(n_synthetic)))
    if small == 0 or large / small <= MAX_POOL_RATIO:
        return None
    kind = "synthetic" if n_synthetic > n_real else "real"
    share = large / (small + large)
    return (
        f"the pools are unbalanced: {n_real} real and {n_synthetic} synthetic volumes; a reader who always answers "
        f"'{kind}' would be right {share:.0%} of the time (similar pool sizes are recommended)"
    )
