"""The study database file: its SQLite connection, schema and transactions.

One database file (by default in the user data directory, see :func:`default_database_path`)
holds any number of studies. :class:`DatabaseConnection` opens it, checks or creates the
schema, and hands out the two ways of using it, :meth:`~DatabaseConnection.read` and
:meth:`~DatabaseConnection.transaction`; the organiser's
:class:`~engine.study.organiser.StudyDatabase` and the reader's
:class:`~engine.study.reader_session.ReaderSession` both work only through those two.

* **Nothing answered is ever lost.** The database runs in WAL mode with ``synchronous=FULL``
  and every answer, change or skip is one ``BEGIN IMMEDIATE … COMMIT`` transaction that has
  finished before the call returns; a crash or ``kill -9`` afterwards cannot take it back.
  Several processes (two readers on one workstation, the CLI next to the app) may use one
  file: writers wait up to :data:`BUSY_TIMEOUT_S` for each other. WAL needs a local disk
  (not a network share).
* **Versioned schema.** ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; a database
  made by a newer BrainSynth is refused instead of being misread.
* **Read-only files are readable.** A database whose file or folder cannot be written (a
  read-only share, an archive copy) opens read-only: listing, progress and reports work,
  and anything that would change it says "read-only" instead of "damaged".
* **Copies are made with SQLite's backup API** (:meth:`DatabaseConnection.backup`,
  ``brainsynth-cli study backup``): copying the file while a reader works misses the answers
  still in its ``-wal`` file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

from engine.study.errors import StudyError

#: Version of the database layout; bump it with a migration when tables change.
SCHEMA_VERSION = 1
#: Marker stored in the ``meta`` table so that a foreign SQLite file is not mistaken for ours.
DB_FORMAT = "brainsynth-reader-studies"
#: Environment variable that overrides the default database path (tests, shared setups).
DB_ENV_VAR = "BRAINSYNTH_STUDY_DB"
#: How long a writer waits for another process's transaction, in seconds.
BUSY_TIMEOUT_S = 10.0

#: The tables, as created in a new file (the on-disk format: change only with a migration).
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    seed INTEGER NOT NULL,
    allow_changes INTEGER NOT NULL,
    display_json TEXT NOT NULL,
    questions_json TEXT NOT NULL,
    software_version TEXT NOT NULL
);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    source_path TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    UNIQUE (study_id, number)
);
CREATE TABLE readers (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    name TEXT NOT NULL,
    added_at TEXT NOT NULL,
    UNIQUE (study_id, name)
);
CREATE TABLE reader_cases (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    position INTEGER NOT NULL,
    queue INTEGER NOT NULL,
    skips INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reader_id, case_id)
);
CREATE INDEX reader_cases_queue ON reader_cases (reader_id, queue);
CREATE TABLE answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    values_json TEXT NOT NULL,
    seconds REAL,
    answered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
CREATE TABLE answer_history (
    id INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    revision INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('answer', 'change')),
    values_json TEXT NOT NULL,
    seconds REAL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE views (
    id INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    opened_at REAL NOT NULL,
    closed_at REAL,
    seconds REAL,
    outcome TEXT CHECK (outcome IN ('answered', 'changed', 'skipped', 'abandoned'))
);
CREATE INDEX views_open ON views (reader_id, closed_at);
"""


def default_database_path() -> Path:
    """Where studies are kept: ``$BRAINSYNTH_STUDY_DB`` if set, else ``reader-studies.sqlite``
    in the user data directory (platformdirs, e.g. ``~/.local/share/brainsynth`` on Linux)."""
    override = os.environ.get(DB_ENV_VAR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("brainsynth", appauthor=False)) / "reader-studies.sqlite"


def now_iso() -> str:
    """Local time with milliseconds and UTC offset, e.g. ``2025-01-31T14:02:11.123+01:00``."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


class DatabaseConnection:
    """One study database file behind one SQLite connection.

    The object is safe to share between threads (one connection behind a lock), so a front
    end may load the next case's volume in a worker thread while the reader rates.

    Subclasses for other files of the same kind (a reader's study pack,
    :mod:`engine.study.pack`) set the class attributes: the format marker, the layout, its
    version, the journal mode and what the file is called in messages.

    Args:
        path: the database file; None for :func:`default_database_path`. Created (with its
            folder) if missing.

    Raises:
        StudyError: the file is not a BrainSynth study database, is damaged, was made by a
            newer BrainSynth, or cannot be created or opened.
    """

    #: The ``meta`` table's ``format`` value that marks the file as ours.
    FORMAT = DB_FORMAT
    #: The layout of a new file (statements separated by ``;``).
    SCHEMA_SQL = _SCHEMA
    #: ``PRAGMA user_version`` of that layout.
    VERSION = SCHEMA_VERSION
    #: SQLite journal mode: WAL for the shared organiser's file (readers and the CLI at once).
    JOURNAL_MODE = "wal"
    #: What the file is called in messages.
    FILE_NOUN = "study database"

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_database_path()
        self._lock = threading.RLock()
        self._closed = False
        #: True when the file or its folder cannot be written: reading works, changes are refused.
        self.read_only = False
        self._conn = self._open()

    # ------------------------------------------------------------------------ using the file

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for queries, held under the lock for the block.

        SQLite errors inside the block become one :class:`StudyError` (busy, damaged, closed).
        """
        with self._lock, self._sql_errors():
            self._check_open()
            yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; committed (and on disk) when the block ends
        without an exception, rolled back otherwise.

        SQLite errors inside the block become one :class:`StudyError` (busy, damaged, closed).
        """
        with self._lock, self._sql_errors():
            self._check_open()
            if self.read_only:
                raise StudyError(self._read_only_message())
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def backup(self, target: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Copy the whole database to ``target`` with SQLite's online backup API.

        The copy is one consistent snapshot that includes the answers still in the ``-wal``
        file, even while other processes (the app, other readers) keep writing; copying the
        ``.db`` file itself would miss those. It is checked (``quick_check``) and written
        atomically, so ``target`` is complete or absent.

        Raises:
            StudyError: the copy cannot be made; ExportError if ``target`` exists (without
                ``overwrite``) or cannot be written.
        """
        from engine.atomic import atomic_path

        target = Path(target)
        if target.resolve() == self.path.resolve():
            raise StudyError(f"{target} is the study database itself; choose another file for the backup")
        with self._lock, self._sql_errors():
            self._check_open()
            with atomic_path(target, overwrite=overwrite) as tmp:
                copy = sqlite3.connect(tmp)
                try:
                    self._conn.backup(copy)
                    check = copy.execute("PRAGMA quick_check").fetchone()[0]
                finally:
                    copy.close()
                if check != "ok":
                    raise StudyError(f"the backup of {self.path} failed its check ({_one_line(check)})")
        return target

    def close(self) -> None:
        """Close the connection (all answers are already committed)."""
        with self._lock:
            self._conn.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- plumbing

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise StudyError(f"{path} is a folder; the study database must be a file")
        wal = path.with_name(path.name + "-wal")
        if path.is_file() and path.stat().st_size == 0 and not (wal.is_file() and wal.stat().st_size > 0):
            # SQLite would silently make a new, empty database of it and every study would seem gone.
            raise StudyError(
                f"{path} is an empty file (0 bytes), not a study database (a crash or an interrupted copy "
                "leaves one); restore it from a backup, or delete it to start a new database"
            )
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudyError(
                    f"cannot create the folder for the study database {path}: {exc.strerror or exc}"
                ) from exc
        try:
            return self._connect(read_only=False)
        except _CannotWriteError as exc:
            if not path.is_file():
                raise StudyError(
                    f"cannot create the study database {path}: its folder is read-only ({exc}); "
                    "point --db at a file in a folder you can write to"
                ) from None
        self.read_only = True
        try:
            return self._connect(read_only=True)
        except _CannotWriteError:
            # SQLite reads a WAL database read-only only where it can make the -shm file, or
            # when told the file is immutable. Immutable is right when no -wal file holds
            # answers (nothing can change in a read-only folder), wrong otherwise.
            if wal.is_file() and wal.stat().st_size > 0:
                raise StudyError(
                    f"the study database {path} is read-only and has answers in {wal.name} that SQLite can only "
                    "read with write access to the folder; copy the folder to a place you can write to"
                ) from None
            return self._connect(read_only=True, immutable=True)

    def _connect(self, *, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
        path = self.path
        target: str | Path = path
        if read_only:
            target = path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
        try:
            conn = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=read_only
            )
        except sqlite3.Error as exc:
            if not immutable and _is_read_only_error(exc):
                raise _CannotWriteError(str(exc)) from None
            raise StudyError(f"cannot open the study database {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if not read_only:
                # FULL: a committed answer survives a power cut too, not only a killed process.
                conn.execute("PRAGMA synchronous = FULL")
            # The file is checked before its journal mode is set: a journal mode is stored in the
            # file, and another kind of file (a study pack opened as a database, or the other way
            # round) must be refused untouched.
            self._check_or_create_schema(conn, create=not read_only)
            if not read_only:
                mode = conn.execute(f"PRAGMA journal_mode = {self.JOURNAL_MODE}").fetchone()[0]
                if str(mode).lower() != self.JOURNAL_MODE:
                    raise StudyError(
                        f"the {self.FILE_NOUN} {path} cannot use journal mode {self.JOURNAL_MODE} (it has {mode}); "
                        "keep it on a local disk, not a network share"
                    )
        except StudyError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not immutable and _is_read_only_error(exc):
                raise _CannotWriteError(str(exc)) from None
            raise StudyError(
                f"{path} is not a BrainSynth {self.FILE_NOUN} or is damaged ({_one_line(exc)}); "
                f"restore it from a backup, or point --db at another file"
            ) from exc
        return conn

    def _read_only_message(self) -> str:
        return (
            f"the study database {self.path} is read-only (the file or its folder cannot be written): "
            "studies can be listed and reported, not changed; copy it to a folder you can write to "
            "(brainsynth-cli study backup) or ask for write access"
        )

    def _check_or_create_schema(self, conn: sqlite3.Connection, *, create: bool = True) -> None:
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise StudyError(
                f"the {self.FILE_NOUN} {self.path} is damaged ({_one_line(integrity)}); restore it from a backup"
            )
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables and not create:
            raise StudyError(f"the study database {self.path} is read-only and holds no studies yet")
        if version == 0 and not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # executescript would commit first; run the statements one by one instead.
                for statement in self.SCHEMA_SQL.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (self.FORMAT,))
                conn.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (now_iso(),))
                conn.execute(f"PRAGMA user_version = {self.VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return
        fmt = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            fmt = row[0] if row else None
        if fmt != self.FORMAT:
            raise StudyError(
                f"{self.path} is an SQLite file but not a BrainSynth {self.FILE_NOUN}; point --db at another file"
                if self.FORMAT == DB_FORMAT
                else f"{self.path} is an SQLite file but not a BrainSynth {self.FILE_NOUN}"
            )
        if version > self.VERSION:
            raise StudyError(
                f"the {self.FILE_NOUN} {self.path} was written by a newer BrainSynth (schema {version}, "
                f"this version reads {self.VERSION}); update BrainSynth"
            )
        if version < self.VERSION:  # no older layouts exist yet
            raise StudyError(f"the {self.FILE_NOUN} {self.path} has an unknown schema version {version}")

    @contextlib.contextmanager
    def _sql_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if _is_read_only_error(exc):
                raise StudyError(self._read_only_message()) from exc
            if "locked" in str(exc) or "busy" in str(exc):
                raise StudyError(
                    f"the study database {self.path} is busy (another program kept it locked for "
                    f"{BUSY_TIMEOUT_S:g} s); try again"
                ) from exc
            raise StudyError(f"the study database {self.path} cannot be used: {_one_line(exc)}") from exc
        except sqlite3.DatabaseError as exc:
            raise StudyError(
                f"the {self.FILE_NOUN} {self.path} is damaged ({_one_line(exc)}); restore it from a backup"
            ) from exc

    def _check_open(self) -> None:
        # sqlite3 reports use after close as a DatabaseError, which would read as "damaged".
        if self._closed:
            raise StudyError(f"the study database {self.path} was closed; open it again to go on")


class _CannotWriteError(Exception):
    """The database file or its folder cannot be written (opened read-only instead)."""


def _is_read_only_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open database file" in text


def _one_line(text: object, *, limit: int = 160) -> str:
    """SQLite's report (``quick_check`` lists one line per damaged page) as one short line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip() and not line.startswith("***")]
    first = lines[0] if lines else str(text).strip()
    more = f" (+{len(lines) - 1} more problems)" if len(lines) > 1 else ""
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return first + more
