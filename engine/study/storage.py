"""Reader studies in SQLite: studies, anonymous cases, readers, their case orders and answers.

One database file (by default in the user data directory, see :func:`default_database_path`)
holds any number of studies. Design choices:

* **Nothing answered is ever lost.** The database runs in WAL mode with ``synchronous=FULL``
  and every answer, change or skip is one ``BEGIN IMMEDIATE … COMMIT`` transaction that has
  finished before the call returns; a crash or ``kill -9`` afterwards cannot take it back.
  Several processes (two readers on one workstation, the CLI next to the app) may use one
  file: writers wait up to :data:`BUSY_TIMEOUT_S` for each other. WAL needs a local disk
  (not a network share).
* **Blind by construction.** The truth (real or synthetic) and the source path of each case
  live only in the ``cases`` table. What a reader's :class:`ReaderSession` hands out are
  anonymous case numbers, answers, and display arrays that went through
  :mod:`engine.study.display`. Case numbers are assigned in a seeded shuffled order, so
  number 1 is not "the first real scan".
* **Reproducible orders.** Each reader's order is a shuffle seeded by the study seed and the
  reader's name (:func:`reader_order`): the same every time, different between readers. It
  is computed from SHA-256 only, so no library update can change it.
* **Every change kept.** ``answers`` holds the current answer per reader and case;
  ``answer_history`` has one row per save (the first answer and every change), with its time.
  Changes are refused unless the study was created with ``allow_changes``.
* **Time per case.** Opening a case starts a visit (``views``); answering or skipping ends it.
  A case's time is the sum of its visits, so time spent before a "skip for later" counts too.
  A visit left open (the app closed, or the CLI's ``next`` never followed by ``answer``) for
  longer than :data:`STALE_VISIT_S` is not counted when the case is opened again.
* **Versioned schema.** ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; a database
  made by a newer BrainSynth is refused instead of being misread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import BrainSynthError
from engine.study.display import DisplayCase, DisplaySettings, display_array, make_display_case
from engine.study.errors import StudyError
from engine.study.questions import DEFAULT_QUESTIONS, Question, check_questions, validate_answer

#: Version of the database layout; bump it with a migration when tables change.
SCHEMA_VERSION = 1
#: Marker stored in the ``meta`` table so that a foreign SQLite file is not mistaken for ours.
DB_FORMAT = "brainsynth-reader-studies"
#: Environment variable that overrides the default database path (tests, shared setups).
DB_ENV_VAR = "BRAINSYNTH_STUDY_DB"
#: How long a writer waits for another process's transaction, in seconds.
BUSY_TIMEOUT_S = 10.0
#: A visit open for longer than this (seconds) is treated as abandoned when the case is reopened.
STALE_VISIT_S = 3600.0

TRUTHS = ("real", "synthetic")

ProgressCallback = Callable[[int, int], None]

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


def _now_iso() -> str:
    """Local time with milliseconds and UTC offset, e.g. ``2025-01-31T14:02:11.123+01:00``."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _hash_int(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def reader_order(study_seed: int, reader: str, case_numbers: Sequence[int]) -> list[int]:
    """A reader's shuffled case order, seeded by the study seed and the reader's name.

    Sorting by a SHA-256 of (seed, reader, case number) is a uniformly random permutation
    for every practical purpose, reproducible on any machine and Python or NumPy version,
    and unrelated between readers.

    Args:
        study_seed: the study's seed.
        reader: the reader's name (exactly as stored).
        case_numbers: the study's anonymous case numbers.

    Returns:
        The case numbers in the order this reader sees them.
    """
    return sorted(case_numbers, key=lambda n: _hash_int("order", study_seed, reader, n))


def anonymous_numbers(study_seed: int, count: int) -> list[int]:
    """Case numbers 1..count for the study's input list (reals then synthetics), shuffled with the seed,
    so a number says nothing about which pool a case came from."""
    order = sorted(range(count), key=lambda i: _hash_int("number", study_seed, i))
    numbers = [0] * count
    for number, index in enumerate(order, start=1):
        numbers[index] = number
    return numbers


@dataclass(frozen=True)
class StudyInfo:
    """A study as its readers' front end needs it (no truth, no paths, no pool sizes).

    Attributes:
        name: the study's unique name.
        created_at: ISO time of creation.
        allow_changes: whether readers may change a saved answer.
        questions: the rating panel, in order.
        display: grid, intensity mapping and window every case is shown with.
        readers: reader names, in the order they were added.
        n_cases: number of cases each reader rates.
    """

    name: str
    created_at: str
    allow_changes: bool
    questions: tuple[Question, ...]
    display: DisplaySettings
    readers: tuple[str, ...]
    n_cases: int


@dataclass(frozen=True)
class StudySummary:
    """A study as ``study list`` shows it to the organiser."""

    name: str
    created_at: str
    n_real: int
    n_synthetic: int
    readers: tuple[str, ...]
    answered: dict[str, int]
    allow_changes: bool
    preset: str


@dataclass(frozen=True)
class Progress:
    """A reader's progress: ``answered`` of ``total`` cases, ``skipped`` of them waiting after a skip."""

    total: int
    answered: int
    skipped: int

    @property
    def remaining(self) -> int:
        return self.total - self.answered

    @property
    def done(self) -> bool:
        return self.answered >= self.total


@dataclass(frozen=True)
class QueueEntry:
    """One case in a reader's current order: ``status`` is "unanswered", "skipped" or "answered"."""

    case_number: int
    status: str


@dataclass(frozen=True)
class Answer:
    """A reader's current answer to one case.

    Attributes:
        case_number: the anonymous case number.
        values: question key → answer (validated; optional questions only when answered).
        seconds: total time spent on the case over all visits, or None if never timed.
        answered_at: ISO time of the first answer.
        updated_at: ISO time of the latest change (equal to ``answered_at`` if never changed).
        revision: 1 for the first answer, +1 per change.
    """

    case_number: int
    values: dict
    seconds: float | None
    answered_at: str
    updated_at: str
    revision: int


@dataclass(frozen=True)
class HistoryEntry:
    """One save of an answer: ``action`` is "answer" (the first) or "change"."""

    case_number: int
    revision: int
    action: str
    values: dict
    seconds: float | None
    recorded_at: str


@dataclass(frozen=True)
class AnswerRecord:
    """One answer with the hidden truth joined: for exports and statistics only, never for readers.

    Attributes:
        study: study name.
        reader: reader name.
        case_number: anonymous case number.
        truth: "real" or "synthetic".
        position: where the case came in the reader's shuffled order (1-based).
        skips: how often the reader skipped the case before answering.
        values: the answer (question key → value).
        seconds: total time on the case, or None.
        answered_at, updated_at, revision: as in :class:`Answer`.
        source: the case's file, only when asked for explicitly, else None.
    """

    study: str
    reader: str
    case_number: int
    truth: str
    position: int
    skips: int
    values: dict
    seconds: float | None
    answered_at: str
    updated_at: str
    revision: int
    source: str | None = None


@dataclass(frozen=True)
class HistoryRecord:
    """One row of the answer history with the truth joined (exports only)."""

    study: str
    reader: str
    case_number: int
    truth: str
    revision: int
    action: str
    values: dict
    seconds: float | None
    recorded_at: str


class StudyDatabase:
    """All reader studies in one SQLite file.

    The object is safe to share between threads (one connection behind a lock), so a front
    end may load the next case's volume in a worker thread while the reader rates.

    Args:
        path: the database file; None for :func:`default_database_path`. Created (with its
            folder) if missing.

    Raises:
        StudyError: the file is not a BrainSynth study database, is damaged, was made by a
            newer BrainSynth, or cannot be created or opened.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_database_path()
        self._lock = threading.RLock()
        self._closed = False
        self._conn = self._open()

    # ----------------------------------------------------------------------------- plumbing

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise StudyError(f"{path} is a folder; the study database must be a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(f"cannot create the folder for the study database {path}: {exc.strerror or exc}") from exc
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StudyError(f"cannot open the study database {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StudyError(
                    f"the study database {path} cannot use write-ahead logging (journal mode {mode}); "
                    "keep it on a local disk, not a network share"
                )
            # FULL: a committed answer survives a power cut too, not only a killed process.
            conn.execute("PRAGMA synchronous = FULL")
            self._check_or_create_schema(conn)
        except StudyError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StudyError(
                f"{path} is not a BrainSynth study database or is damaged ({exc}); "
                f"restore it from a backup, or point --db at another file"
            ) from exc
        return conn

    def _check_or_create_schema(self, conn: sqlite3.Connection) -> None:
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise StudyError(f"the study database {self.path} is damaged ({integrity}); restore it from a backup")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # executescript would commit first; run the statements one by one instead.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (DB_FORMAT,))
                conn.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (_now_iso(),))
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return
        fmt = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            fmt = row[0] if row else None
        if fmt != DB_FORMAT:
            raise StudyError(
                f"{self.path} is an SQLite file but not a BrainSynth study database; point --db at another file"
            )
        if version > SCHEMA_VERSION:
            raise StudyError(
                f"the study database {self.path} was written by a newer BrainSynth (schema {version}, "
                f"this version reads {SCHEMA_VERSION}); update BrainSynth"
            )
        if version < SCHEMA_VERSION:  # no older layouts exist yet
            raise StudyError(f"the study database {self.path} has an unknown schema version {version}")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._sql_errors():
            self._check_open()
            yield self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; committed (and on disk) when the block ends without an exception."""
        with self._lock, self._sql_errors():
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _sql_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StudyError(
                    f"the study database {self.path} is busy (another program kept it locked for "
                    f"{BUSY_TIMEOUT_S:g} s); try again"
                ) from exc
            raise StudyError(f"the study database {self.path} cannot be used: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StudyError(f"the study database {self.path} is damaged ({exc}); restore it from a backup") from exc

    def _check_open(self) -> None:
        # sqlite3 reports use after close as a DatabaseError, which would read as "damaged".
        if self._closed:
            raise StudyError(f"the study database {self.path} was closed; open it again to go on")

    def close(self) -> None:
        """Close the connection (all answers are already committed)."""
        with self._lock:
            self._conn.close()
            self._closed = True

    def __enter__(self) -> StudyDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ studies

    def create_study(
        self,
        *,
        name: str,
        real: Sequence[str | os.PathLike],
        synthetic: Sequence[str | os.PathLike],
        readers: Sequence[str],
        preset: str | None = None,
        allow_changes: bool = False,
        seed: int | None = None,
        questions: Sequence[Question] = DEFAULT_QUESTIONS,
        validate: bool = True,
        progress: ProgressCallback | None = None,
    ) -> StudyInfo:
        """Create a study from pools of real and synthetic volumes.

        Every file is put through the display pipeline once here (with ``validate``), so a
        file that cannot be shown is reported to the organiser now, by name, and not to a
        reader mid-study. Each file's SHA-256 is stored, so a case file replaced later is
        refused instead of being shown under the old truth.

        Args:
            name: unique study name (shown to readers).
            real: real scans: files and/or folders (MNI-registered, any orientation).
            synthetic: synthetic volumes: files and/or folders (BrainSynth exports).
            readers: reader names (at least one, unique).
            preset: model preset whose grid cases are shown on; None to use the preset whose
                grid the synthetic volumes lie on (an error if they lie on none).
            allow_changes: readers may change saved answers (every change is kept).
            seed: seed of the case numbering and reader orders; None for a random one (stored).
            questions: the rating panel; must contain the 1..5 ``confidence`` question.
            validate: run every file through the display pipeline now (slow for big pools;
                tests of storage alone switch it off).
            progress: called as ``progress(done, total)`` while validating.

        Returns:
            The new study.

        Raises:
            StudyError: a bad name, no readers or duplicate readers, an empty pool, a file in
                both pools or twice, unusable files (all of them listed), a name that exists.
        """
        from engine import __version__
        from engine.volumes import find_volumes

        name = (name or "").strip()
        if not name:
            raise StudyError("a study needs a name")
        if len(name) > 200 or any(ch in name for ch in "\n\r\t"):
            raise StudyError("a study name must be one line of at most 200 characters")
        reader_names = _clean_readers(readers)
        questions = check_questions(questions)

        pools: dict[str, list[Path]] = {}
        for truth, paths in (("real", real), ("synthetic", synthetic)):
            if not paths:
                raise StudyError(f"the {truth} pool is empty; give at least one {truth} volume (file or folder)")
            try:
                pools[truth] = [p.resolve() for p in find_volumes(paths)]
            except BrainSynthError as exc:
                raise StudyError(f"the {truth} pool is empty: {exc}") from exc
        both = sorted(set(pools["real"]) & set(pools["synthetic"]))
        if both:
            raise StudyError(
                f"{both[0]} is in both the real and the synthetic pool"
                + (f" (and {len(both) - 1} more)" if len(both) > 1 else "")
            )
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise StudyError(f"a study named {name!r} already exists in {self.path}; choose another name")

        entries = [("real", p) for p in pools["real"]] + [("synthetic", p) for p in pools["synthetic"]]
        problems: list[str] = []
        hashes: dict[str, Path] = {}
        digests: list[str] = []
        for truth, path in entries:
            try:
                if not path.is_file():
                    raise StudyError(f"{path} does not exist or is not a file")
                digest = _sha256(path)
                if digest in hashes:
                    raise StudyError(f"{path} has the same content as {hashes[digest]}; each case must be shown once")
                hashes[digest] = path
                digests.append(digest)
            except BrainSynthError as exc:
                problems.append(f"{truth} {path.name}: {exc}")
        if not problems:
            settings = _display_settings(preset, pools["synthetic"])
            for done, (truth, path) in enumerate(entries, start=1):
                if validate:
                    try:
                        display_array(path, settings)
                    except BrainSynthError as exc:
                        problems.append(f"{truth} {path.name}: {exc}")
                if progress is not None:
                    progress(done, len(entries))
        if problems:
            listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise StudyError(f"{len(problems)} of {len(entries)} volumes cannot be used: {listed}")

        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        numbers = anonymous_numbers(seed, len(entries))
        created = _now_iso()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise StudyError(f"a study named {name!r} already exists in {self.path}; choose another name")
            study_id = conn.execute(
                "INSERT INTO studies (name, created_at, seed, allow_changes, display_json, questions_json, "
                "software_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    created,
                    seed,
                    int(bool(allow_changes)),
                    json.dumps(settings.to_dict()),
                    json.dumps([q.to_dict() for q in questions]),
                    __version__,
                ),
            ).lastrowid
            conn.executemany(
                "INSERT INTO cases (study_id, number, truth, source_path, source_sha256) VALUES (?, ?, ?, ?, ?)",
                [
                    (study_id, number, truth, str(path), digest)
                    for number, (truth, path), digest in zip(numbers, entries, digests, strict=True)
                ],
            )
            for reader in reader_names:
                self._insert_reader(conn, study_id, seed, reader)
        return self.study(name)

    @staticmethod
    def _insert_reader(conn: sqlite3.Connection, study_id: int, seed: int, reader: str) -> None:
        reader_id = conn.execute(
            "INSERT INTO readers (study_id, name, added_at) VALUES (?, ?, ?)", (study_id, reader, _now_iso())
        ).lastrowid
        cases = dict(conn.execute("SELECT number, id FROM cases WHERE study_id = ?", (study_id,)).fetchall())
        order = reader_order(seed, reader, list(cases))
        conn.executemany(
            "INSERT INTO reader_cases (reader_id, case_id, position, queue) VALUES (?, ?, ?, ?)",
            [(reader_id, cases[number], pos, pos) for pos, number in enumerate(order, start=1)],
        )

    def add_reader(self, study: str, reader: str) -> None:
        """Add a reader to an existing study (their order is seeded like everyone's).

        Raises:
            StudyError: unknown study, an empty name, or a reader of that name exists.
        """
        (reader,) = _clean_readers([reader])
        with self._write() as conn:
            study_id, seed = self._study_row(conn, study, "id, seed")
            if conn.execute("SELECT 1 FROM readers WHERE study_id = ? AND name = ?", (study_id, reader)).fetchone():
                raise StudyError(f"study {study!r} already has a reader named {reader!r}")
            self._insert_reader(conn, study_id, seed, reader)

    def _study_row(self, conn: sqlite3.Connection, study: str, columns: str) -> tuple:
        row = conn.execute(f"SELECT {columns} FROM studies WHERE name = ?", (study,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM studies ORDER BY created_at")]
            known = f"studies here: {', '.join(names)}" if names else "there are no studies yet"
            raise StudyError(f"no study named {study!r} in {self.path} ({known})")
        return tuple(row)

    def study(self, name: str) -> StudyInfo:
        """The study of that name (what its readers may know).

        Raises:
            StudyError: no such study (the message lists the existing ones).
        """
        with self._read() as conn:
            study_id, created, allow, display, questions = self._study_row(
                conn, name, "id, created_at, allow_changes, display_json, questions_json"
            )
            readers = tuple(
                r[0] for r in conn.execute("SELECT name FROM readers WHERE study_id = ? ORDER BY id", (study_id,))
            )
            n_cases = conn.execute("SELECT COUNT(*) FROM cases WHERE study_id = ?", (study_id,)).fetchone()[0]
        return StudyInfo(
            name=name,
            created_at=created,
            allow_changes=bool(allow),
            questions=tuple(Question.from_dict(q) for q in json.loads(questions)),
            display=DisplaySettings.from_dict(json.loads(display)),
            readers=readers,
            n_cases=int(n_cases),
        )

    def list_studies(self) -> list[StudySummary]:
        """Every study in the database, oldest first, with pool sizes and answers per reader."""
        out = []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at, allow_changes, display_json FROM studies ORDER BY id"
            ).fetchall()
            for study_id, name, created, allow, display in rows:
                counts = dict(
                    conn.execute(
                        "SELECT truth, COUNT(*) FROM cases WHERE study_id = ? GROUP BY truth", (study_id,)
                    ).fetchall()
                )
                answered = dict(
                    conn.execute(
                        "SELECT r.name, COUNT(a.case_id) FROM readers r LEFT JOIN answers a ON a.reader_id = r.id "
                        "WHERE r.study_id = ? GROUP BY r.id ORDER BY r.id",
                        (study_id,),
                    ).fetchall()
                )
                out.append(
                    StudySummary(
                        name=name,
                        created_at=created,
                        n_real=int(counts.get("real", 0)),
                        n_synthetic=int(counts.get("synthetic", 0)),
                        readers=tuple(answered),
                        answered={k: int(v) for k, v in answered.items()},
                        allow_changes=bool(allow),
                        preset=str(json.loads(display).get("preset", "")),
                    )
                )
        return out

    def session(self, study: str, reader: str) -> ReaderSession:
        """Open a reader's session: the only object a review front end needs.

        Raises:
            StudyError: unknown study, or the reader is not part of it (the message lists its readers).
        """
        info = self.study(study)
        with self._read() as conn:
            row = conn.execute(
                "SELECT r.id FROM readers r JOIN studies s ON s.id = r.study_id WHERE s.name = ? AND r.name = ?",
                (study, reader),
            ).fetchone()
        if row is None:
            raise StudyError(
                f"{reader!r} is not a reader of study {study!r} (its readers: {', '.join(info.readers)}); "
                f"check the spelling or add the reader first"
            )
        return ReaderSession(self, info, reader, int(row[0]))

    def progress(self, study: str) -> dict[str, Progress]:
        """Reader name → progress, for every reader of the study."""
        info = self.study(study)
        return {reader: self.session(study, reader).progress() for reader in info.readers}

    def check_cases(self, study: str) -> list[str]:
        """Problems with the study's case files (missing or changed since creation), for the organiser."""
        problems = []
        with self._read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            rows = conn.execute(
                "SELECT number, source_path, source_sha256 FROM cases WHERE study_id = ? ORDER BY number", (study_id,)
            ).fetchall()
        for number, source, digest in rows:
            path = Path(source)
            if not path.is_file():
                problems.append(f"case {number}: {path} is missing")
            elif _sha256(path) != digest:
                problems.append(f"case {number}: {path} has changed since the study was created")
        return problems

    # ------------------------------------------------------------------------------ exports

    def answer_records(self, study: str, *, include_sources: bool = False) -> list[AnswerRecord]:
        """Every current answer of the study with the truth joined, by reader then case number.

        Args:
            study: study name.
            include_sources: also give each case's file path (for the organiser's own analysis).
        """
        with self._read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            rows = conn.execute(
                "SELECT r.name, c.number, c.truth, rc.position, rc.skips, a.values_json, a.seconds, "
                "a.answered_at, a.updated_at, a.revision, c.source_path "
                "FROM answers a JOIN readers r ON r.id = a.reader_id JOIN cases c ON c.id = a.case_id "
                "JOIN reader_cases rc ON rc.reader_id = a.reader_id AND rc.case_id = a.case_id "
                "WHERE r.study_id = ? ORDER BY r.id, c.number",
                (study_id,),
            ).fetchall()
        return [
            AnswerRecord(
                study=study,
                reader=reader,
                case_number=int(number),
                truth=truth,
                position=int(position),
                skips=int(skips),
                values=json.loads(values),
                seconds=seconds,
                answered_at=answered,
                updated_at=updated,
                revision=int(revision),
                source=source if include_sources else None,
            )
            for reader, number, truth, position, skips, values, seconds, answered, updated, revision, source in rows
        ]

    def history_records(self, study: str) -> list[HistoryRecord]:
        """Every saved answer and change of the study, oldest first, with the truth joined."""
        with self._read() as conn:
            (study_id,) = self._study_row(conn, study, "id")
            rows = conn.execute(
                "SELECT r.name, c.number, c.truth, h.revision, h.action, h.values_json, h.seconds, h.recorded_at "
                "FROM answer_history h JOIN readers r ON r.id = h.reader_id JOIN cases c ON c.id = h.case_id "
                "WHERE r.study_id = ? ORDER BY h.id",
                (study_id,),
            ).fetchall()
        return [
            HistoryRecord(
                study=study,
                reader=reader,
                case_number=int(number),
                truth=truth,
                revision=int(revision),
                action=action,
                values=json.loads(values),
                seconds=seconds,
                recorded_at=recorded,
            )
            for reader, number, truth, revision, action, values, seconds, recorded in rows
        ]


class ReaderSession:
    """One reader working through one study: everything a review front end calls.

    Obtain it with :meth:`StudyDatabase.session`. It knows the reader's shuffled order, the
    questions, and the reader's own answers, and it loads case volumes through the display
    pipeline; it never reveals a case's truth or file. Each :meth:`answer` and :meth:`skip`
    is committed before it returns.

    Typical flow::

        number = session.next_case()          # first unanswered case (resumes after a crash)
        session.open_case(number)             # starts the clock for this case
        case = session.load_case(number)      # DisplayCase: .data, .window, .spacing_mm
        ...                                   # the reader rates
        session.answer(number, {"confidence": 4, "realism": 3, "plausibility": 4, "consistency": 5})
        # or session.skip(number): the case comes back after all the others
    """

    def __init__(self, db: StudyDatabase, study: StudyInfo, reader: str, reader_id: int) -> None:
        self._db = db
        self.study = study
        self.reader = reader
        self._reader_id = reader_id

    @property
    def questions(self) -> tuple[Question, ...]:
        """The rating panel, in order."""
        return self.study.questions

    @property
    def allow_changes(self) -> bool:
        """Whether a saved answer may be changed."""
        return self.study.allow_changes

    # ------------------------------------------------------------------------------ reading

    def _case_id(self, conn: sqlite3.Connection, number: int) -> int:
        row = conn.execute(
            "SELECT c.id FROM reader_cases rc JOIN cases c ON c.id = rc.case_id "
            "WHERE rc.reader_id = ? AND c.number = ?",
            (self._reader_id, int(number)),
        ).fetchone()
        if row is None:
            raise StudyError(f"study {self.study.name!r} has no case {number} (cases are 1 to {self.study.n_cases})")
        return int(row[0])

    def next_case(self) -> int | None:
        """The case to show now: the first unanswered one in this reader's current order
        (skipped cases come after all others), or None when every case is answered."""
        with self._db._read() as conn:
            row = conn.execute(
                "SELECT c.number FROM reader_cases rc JOIN cases c ON c.id = rc.case_id "
                "LEFT JOIN answers a ON a.reader_id = rc.reader_id AND a.case_id = rc.case_id "
                "WHERE rc.reader_id = ? AND a.case_id IS NULL ORDER BY rc.queue LIMIT 1",
                (self._reader_id,),
            ).fetchone()
        return int(row[0]) if row else None

    def queue(self) -> list[QueueEntry]:
        """Every case in this reader's current order, with its status."""
        with self._db._read() as conn:
            rows = conn.execute(
                "SELECT c.number, a.case_id IS NOT NULL, rc.skips "
                "FROM reader_cases rc JOIN cases c ON c.id = rc.case_id "
                "LEFT JOIN answers a ON a.reader_id = rc.reader_id AND a.case_id = rc.case_id "
                "WHERE rc.reader_id = ? ORDER BY rc.queue",
                (self._reader_id,),
            ).fetchall()
        return [
            QueueEntry(int(n), "answered" if answered else ("skipped" if skips else "unanswered"))
            for n, answered, skips in rows
        ]

    def order(self) -> list[int]:
        """This reader's original shuffled order of case numbers (before any skip)."""
        with self._db._read() as conn:
            rows = conn.execute(
                "SELECT c.number FROM reader_cases rc JOIN cases c ON c.id = rc.case_id "
                "WHERE rc.reader_id = ? ORDER BY rc.position",
                (self._reader_id,),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def progress(self) -> Progress:
        """How many cases this reader has answered, and how many skipped ones wait."""
        entries = self.queue()
        return Progress(
            total=len(entries),
            answered=sum(e.status == "answered" for e in entries),
            skipped=sum(e.status == "skipped" for e in entries),
        )

    def answer_of(self, number: int) -> Answer | None:
        """This reader's current answer to a case, or None if not answered yet."""
        with self._db._read() as conn:
            case_id = self._case_id(conn, number)
            row = conn.execute(
                "SELECT values_json, seconds, answered_at, updated_at, revision FROM answers "
                "WHERE reader_id = ? AND case_id = ?",
                (self._reader_id, case_id),
            ).fetchone()
        if row is None:
            return None
        values, seconds, answered, updated, revision = row
        return Answer(int(number), json.loads(values), seconds, answered, updated, int(revision))

    def history(self, number: int | None = None) -> list[HistoryEntry]:
        """This reader's saves (first answers and changes), oldest first; one case or all."""
        sql = (
            "SELECT c.number, h.revision, h.action, h.values_json, h.seconds, h.recorded_at "
            "FROM answer_history h JOIN cases c ON c.id = h.case_id WHERE h.reader_id = ?"
        )
        params: tuple = (self._reader_id,)
        with self._db._read() as conn:
            if number is not None:
                sql += " AND h.case_id = ?"
                params += (self._case_id(conn, number),)
            rows = conn.execute(sql + " ORDER BY h.id", params).fetchall()
        return [HistoryEntry(int(n), int(rev), act, json.loads(v), s, t) for n, rev, act, v, s, t in rows]

    def load_case(self, number: int) -> DisplayCase:
        """The case's volume through the study's display pipeline (may take a second; thread-safe).

        Raises:
            StudyError: unknown case, or its file is missing, changed or unreadable. The
                message names only the case number, never the file; the organiser finds the
                file with ``brainsynth-cli study check``.
        """
        with self._db._read() as conn:
            case_id = self._case_id(conn, number)
            source, digest = conn.execute(
                "SELECT source_path, source_sha256 FROM cases WHERE id = ?", (case_id,)
            ).fetchone()
        hint = "ask the study organiser to run 'brainsynth-cli study check'"
        path = Path(source)
        if not path.is_file():
            raise StudyError(f"case {number} cannot be shown: its volume is missing; {hint}")
        if _sha256(path) != digest:
            raise StudyError(f"case {number} cannot be shown: its volume changed after the study was created; {hint}")
        try:
            data = display_array(path, self.study.display)
        except BrainSynthError:
            raise StudyError(f"case {number} cannot be shown: its volume cannot be read; {hint}") from None
        return make_display_case(number, data, self.study.display)

    # ------------------------------------------------------------------------------ writing

    def open_case(self, number: int) -> None:
        """Start timing a visit to a case (call when it is shown).

        A visit to another case left open is closed as abandoned (not counted); reopening the
        same case keeps its running visit unless that is older than :data:`STALE_VISIT_S`.
        """
        now = time.time()
        with self._db._write() as conn:
            case_id = self._case_id(conn, number)
            kept = False
            for view_id, open_case, opened in conn.execute(
                "SELECT id, case_id, opened_at FROM views WHERE reader_id = ? AND closed_at IS NULL",
                (self._reader_id,),
            ).fetchall():
                if open_case == case_id and now - opened <= STALE_VISIT_S and not kept:
                    kept = True
                    continue
                conn.execute("UPDATE views SET closed_at = ?, outcome = 'abandoned' WHERE id = ?", (now, view_id))
            if not kept:
                conn.execute(
                    "INSERT INTO views (reader_id, case_id, opened_at) VALUES (?, ?, ?)",
                    (self._reader_id, case_id, now),
                )

    def _close_visit(self, conn: sqlite3.Connection, case_id: int, outcome: str, seconds: float | None) -> None:
        """End the open visit of this case (or record one of ``seconds`` if none was open)."""
        now = time.time()
        row = conn.execute(
            "SELECT id, opened_at FROM views WHERE reader_id = ? AND case_id = ? AND closed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (self._reader_id, case_id),
        ).fetchone()
        if row is not None:
            view_id, opened = row
            spent = seconds if seconds is not None else max(0.0, now - opened)
            if seconds is None and now - opened > STALE_VISIT_S:
                spent = None  # left open overnight: unknown, not a day of reading
            conn.execute(
                "UPDATE views SET closed_at = ?, seconds = ?, outcome = ? WHERE id = ?", (now, spent, outcome, view_id)
            )
        elif seconds is not None:
            conn.execute(
                "INSERT INTO views (reader_id, case_id, opened_at, closed_at, seconds, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self._reader_id, case_id, now - seconds, now, seconds, outcome),
            )

    def _time_on_case(self, conn: sqlite3.Connection, case_id: int) -> float | None:
        total = conn.execute(
            "SELECT SUM(seconds) FROM views WHERE reader_id = ? AND case_id = ? AND seconds IS NOT NULL "
            "AND outcome IN ('answered', 'changed', 'skipped')",
            (self._reader_id, case_id),
        ).fetchone()[0]
        return None if total is None else float(total)

    def answer(self, number: int, values: Mapping[str, object], *, seconds: float | None = None) -> Answer:
        """Validate and save this reader's answer to a case, committed before returning.

        Saving a case that already has an answer is a change: allowed only if the study
        allows changes, and kept in the history with its time either way it is allowed.

        Args:
            number: the case number.
            values: question key → answer; scale answers as int (or digit strings).
            seconds: time the reader spent on this visit, if the front end measured it
                (e.g. excluding idle time); None to use the time since :meth:`open_case`.

        Returns:
            The saved answer (``seconds`` is the total over all visits to the case).

        Raises:
            StudyError: unknown case, invalid or missing required answers, or a change the
                study does not allow.
        """
        clean = validate_answer(self.questions, values)
        if seconds is not None and (not math.isfinite(seconds) or seconds < 0):
            raise StudyError(f"time spent must be a non-negative number of seconds, got {seconds!r}")
        now = _now_iso()
        payload = json.dumps(clean, ensure_ascii=False)
        with self._db._write() as conn:
            case_id = self._case_id(conn, number)
            existing = conn.execute(
                "SELECT revision, answered_at FROM answers WHERE reader_id = ? AND case_id = ?",
                (self._reader_id, case_id),
            ).fetchone()
            if existing is not None and not self.allow_changes:
                raise StudyError(
                    f"case {number} is already answered and study {self.study.name!r} does not allow changing answers"
                )
            self._close_visit(conn, case_id, "changed" if existing else "answered", seconds)
            total = self._time_on_case(conn, case_id)
            if existing is None:
                revision, answered_at = 1, now
                conn.execute(
                    "INSERT INTO answers (reader_id, case_id, values_json, seconds, answered_at, updated_at, revision) "
                    "VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (self._reader_id, case_id, payload, total, now, now),
                )
            else:
                revision, answered_at = int(existing[0]) + 1, existing[1]
                conn.execute(
                    "UPDATE answers SET values_json = ?, seconds = ?, updated_at = ?, revision = ? "
                    "WHERE reader_id = ? AND case_id = ?",
                    (payload, total, now, revision, self._reader_id, case_id),
                )
            conn.execute(
                "INSERT INTO answer_history (reader_id, case_id, revision, action, values_json, seconds, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._reader_id, case_id, revision, "change" if existing else "answer", payload, total, now),
            )
        return Answer(int(number), clean, total, answered_at, now, revision)

    def skip(self, number: int) -> None:
        """Put an unanswered case at the end of this reader's order ("skip for later"), committed at once.

        Raises:
            StudyError: unknown case, or the case is already answered.
        """
        with self._db._write() as conn:
            case_id = self._case_id(conn, number)
            if conn.execute(
                "SELECT 1 FROM answers WHERE reader_id = ? AND case_id = ?", (self._reader_id, case_id)
            ).fetchone():
                raise StudyError(f"case {number} is already answered; only unanswered cases can be skipped")
            self._close_visit(conn, case_id, "skipped", None)
            last = conn.execute(
                "SELECT MAX(queue) FROM reader_cases WHERE reader_id = ?", (self._reader_id,)
            ).fetchone()[0]
            conn.execute(
                "UPDATE reader_cases SET queue = ?, skips = skips + 1 WHERE reader_id = ? AND case_id = ?",
                (int(last) + 1, self._reader_id, case_id),
            )


def _clean_readers(readers: Sequence[str]) -> list[str]:
    names = [str(r).strip() for r in readers]
    if not names or not any(names):
        raise StudyError("a study needs at least one reader name")
    if any(not n for n in names):
        raise StudyError("reader names must not be empty")
    if any(len(n) > 100 or any(ch in n for ch in "\n\r\t,") for n in names):
        raise StudyError("a reader name must be one line of at most 100 characters, without commas")
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise StudyError(f"reader {seen[0]!r} is listed twice")
    return names


def _sha256(path: Path) -> str:
    from engine.export import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise StudyError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _display_settings(preset: str | None, synthetic: Sequence[Path]) -> DisplaySettings:
    """The named preset's settings, or those of the preset whose grid the synthetic volumes lie on."""
    from engine.specs import PRESETS, get_preset

    if preset is not None:
        return DisplaySettings.from_spec(get_preset(preset))
    import nibabel as nib
    import numpy as np

    grids = set()
    for path in synthetic:
        try:
            img = nib.load(path)
            grids.add((tuple(int(n) for n in img.shape[:3]), tuple(np.round(img.affine, 3).ravel())))
        except Exception:
            grids.add(None)
    if len(grids) == 1 and None not in grids:
        ((shape, affine),) = grids
        for spec in PRESETS.values():
            if tuple(spec.grid.shape) == shape and np.allclose(
                np.asarray(affine).reshape(4, 4), spec.grid.affine, atol=1e-2
            ):
                return DisplaySettings.from_spec(spec)
    raise StudyError(
        "the synthetic volumes do not all lie on one preset's model grid, so the display grid is unclear; "
        f"choose one with --preset ({', '.join(PRESETS)}), normally the preset of the model that made them"
    )
