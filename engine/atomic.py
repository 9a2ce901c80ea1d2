"""Atomic file writes: a file the user made is either complete or absent, never half-written.

* **One file**: :func:`atomic_path` yields a temporary path beside the target; when the block
  ends the file is flushed to disk (``fsync``), renamed over the target (``os.replace``,
  atomic on POSIX and Windows) and the folder is flushed too, so that the rename itself
  survives a power cut.
* **Several files that belong together** (an image and its JSON sidecar, a cache entry and
  its metadata): :func:`atomic_group` writes every temporary file first and renames them
  only when all are complete, the last one named being the one readers look for; a failure
  removes every temporary file and every target the group had already created.
* **Temporary files are recognisable**: ``.<name>.bstmp_<host>_<pid>_<token><suffix>``, so
  :func:`remove_orphaned_temporaries` can delete those a killed process left behind (its PID
  is gone) without touching a file another running process is still writing.
* **Write failures are one line**: a full disk, a read-only folder or a permission problem
  raise :class:`~engine.errors.WriteError` naming the file and what to do, from every writer
  that goes through this module (exports, checkpoints, training state and logs, caches).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from engine.errors import BrainSynthError, ExportError, TargetExistsError, WriteError

#: Marker in every temporary file name this module makes.
TEMP_MARKER = ".bstmp_"
_TEMP_PATTERN = re.compile(r"\.bstmp_(?P<host>[A-Za-z0-9-]*)_(?P<pid>\d+)_(?P<token>[0-9a-f]{8})")
#: A temporary file from another machine (shared file system) is left alone unless older.
_FOREIGN_TEMP_AGE_S = 24 * 3600
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full; free some space and try again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and try again",
    errno.EFBIG: "the file is larger than this file system or process may write",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
}
# What libraries that write through their own C/C++/Rust code (torch.save, safetensors) put in
# the message of the RuntimeError they raise instead of an OSError.
_WRITE_FAILURE_TEXTS = ("no space left", "storagefull", "os error 28", "file write failed", "disk quota")


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing file unless told to."""
    if path.exists() and not overwrite:
        raise TargetExistsError(f"{path} already exists; choose another output folder or pass --overwrite")


def failure_reason(exc: BaseException) -> str:
    """What a write failure means for the user ("the disk is full; free some space ...")."""
    code = getattr(exc, "errno", None)
    if code in _WRITE_ERRNOS:
        return _WRITE_ERRNOS[code]
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = str(exc).lower()
    if "no space left" in text or "os error 28" in text or "storagefull" in text:
        return _WRITE_ERRNOS[errno.ENOSPC]
    return "the disk is full or the file cannot be written; free some space and try again"


def write_error(path: str | os.PathLike, exc: BaseException) -> WriteError:
    """The one-line :class:`WriteError` for an OSError (or a library's write failure) at ``path``."""
    return WriteError(f"cannot write {path}: {failure_reason(exc)}")


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the environment refusing a write (full disk, read-only, permission),
    as opposed to a bug: OSErrors, and the RuntimeErrors torch/safetensors raise for them."""
    if isinstance(exc, BrainSynthError):
        return False
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    if type(exc).__name__ == "SafetensorError":
        return "ioerror" in text or "os error" in text
    return isinstance(exc, RuntimeError | ValueError) and any(t in text for t in _WRITE_FAILURE_TEXTS)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temporary_path(path: Path) -> Path:
    """A new, recognisable temporary file name beside ``path`` (keeping its suffixes, so that
    libraries choosing the format by extension write the right one)."""
    suffix = "".join(path.suffixes) or ".tmp"
    stem = path.name[: len(path.name) - len("".join(path.suffixes))] if path.suffixes else path.name
    return path.with_name(f".{stem}{TEMP_MARKER}{_host()}_{os.getpid()}_{secrets.token_hex(4)}{suffix}")


def _create_temporary(path: Path) -> Path:
    for _ in range(100):
        tmp = temporary_path(path)
        try:
            # Mode 0o666 less the process umask, applied by the kernel: the permissions any new
            # file gets, without reading the umask (os.umask is process-wide and racy).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise WriteError(f"cannot create a temporary file beside {path}")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename, a new file) to disk; a no-op where folders cannot
    be opened (Windows) or the file system does not support it."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write failure inside the block (see :func:`is_write_failure`) into one
    :class:`WriteError` naming ``path``; anything else passes unchanged."""
    try:
        yield
    except BaseException as exc:
        if is_write_failure(exc):
            raise write_error(path, exc) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file keeps the final suffix (``.nii.gz`` etc.) so libraries that choose
    the format by extension write the right one. On any exception the temporary file is
    removed and ``path`` is untouched.

    Raises:
        TargetExistsError: ``path`` exists and ``overwrite`` is False.
        WriteError: the folder or file cannot be written (full disk, read-only, permission).
    """
    with atomic_group() as group:
        yield group.path(path, overwrite=overwrite)


class AtomicGroup:
    """Temporary files that are renamed onto their targets together (see :func:`atomic_group`)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path, bool]] = []  # (temporary, target, overwrite)

    def path(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """A temporary path to write ``path``'s content to; it becomes ``path`` when the group ends."""
        path = Path(path)
        check_writable(path, overwrite=overwrite)
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _create_temporary(path)
        self._pending.append((tmp, path, overwrite))
        return tmp

    def _commit(self) -> None:
        for tmp, path, _ in self._pending:
            with write_errors(path):
                _fsync_file(tmp)
        for _, path, overwrite in self._pending:
            if not overwrite and path.exists():
                raise ExportError(f"{path} appeared while writing; nothing was overwritten")
        created: list[Path] = []
        try:
            for tmp, path, _ in self._pending:
                existed = path.exists()
                with write_errors(path):
                    os.replace(tmp, path)
                if not existed:
                    created.append(path)
            for folder in dict.fromkeys(path.parent for _, path, _ in self._pending):
                with write_errors(folder):
                    fsync_folder(folder)
        except BaseException:
            # The group appears together or not at all: take back what this group created
            # (a file it replaced cannot be restored, but it is complete either way).
            for path in created:
                path.unlink(missing_ok=True)
            raise

    def _discard(self) -> None:
        for tmp, _, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_group() -> Iterator[AtomicGroup]:
    """Write several files that must appear together or not at all.

    Ask the group for a temporary path per target (``group.path(target)``) and write each;
    when the block ends without an exception every file is flushed and renamed onto its
    target, in the order asked for, so name the file readers look for (a sidecar, a cache
    entry's data) last. If anything fails, no target this group created is left behind.

    Example::

        with atomic_group() as group:
            nib.save(img, group.path(nii))
            group.path(sidecar).write_text(json.dumps(meta))
    """
    group = AtomicGroup()
    try:
        yield group
        group._commit()
    except BaseException as exc:
        group._discard()
        if is_write_failure(exc):
            where = group._pending[0][1] if group._pending else "the output"
            raise write_error(where, exc) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_orphaned_temporaries(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Delete the temporary files that killed BrainSynth processes left in ``folder``.

    Only names this module makes are considered. A file made on this machine is removed when
    the process that made it has ended; one made on another machine (a shared file system)
    when it is older than a day. Files still being written are never touched.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _host()
    removed: list[Path] = []
    candidates = folder.rglob(f"*{TEMP_MARKER}*") if recursive else folder.glob(f"*{TEMP_MARKER}*")
    for candidate in candidates:
        match = _TEMP_PATTERN.search(candidate.name)
        if match is None or not candidate.is_file():
            continue
        if match["host"] == host:
            orphaned = not _process_alive(int(match["pid"]))
        else:
            try:
                orphaned = time.time() - candidate.stat().st_mtime > _FOREIGN_TEMP_AGE_S
            except OSError:
                continue
        if orphaned:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # no signal 0 on Windows: keep the file (it is small and hidden)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a PID at all: keep the file
    return True
