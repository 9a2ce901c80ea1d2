"""Atomic file writes: a file the user made is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engine.errors import ExportError, TargetExistsError


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing file unless told to."""
    if path.exists() and not overwrite:
        raise TargetExistsError(f"{path} already exists; choose another output folder or pass --overwrite")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file keeps the final suffix (``.nii.gz`` etc.) so libraries that choose
    the format by extension write the right one. On any exception the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes files private (0600); give the result the permissions any new file gets.
        os.chmod(tmp, 0o666 & ~_current_umask())
        if not overwrite and path.exists():
            raise ExportError(f"{path} appeared while writing; nothing was overwritten")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
