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
