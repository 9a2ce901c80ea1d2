"""Study packs: one self-contained file per reader, rated at their own workstation and merged back.

A study lives in the organiser's database, whose cases point at files on the organiser's disk
and whose WAL must not sit on a network share. A *pack* (``R.bsstudy``) is what one reader
takes away instead: an SQLite file in rollback-journal mode (``journal_mode=DELETE``,
``synchronous=FULL``), so that between answers it is one complete file that can be copied,
mailed or put on a share, and every answer is on disk before the call returns.

What a pack holds:

* the reader's cases **already through the display pipeline** (:func:`engine.study.display.display_array`),
  each stored alike: zlib-compressed little-endian float32 on the study's display grid, with
  the SHA-256 of the uncompressed bytes; the anonymous case numbers (the study's own, the same
  for every reader) and the reader's order;
* the study's questions, display settings (grid, intensity mapping, window), name and whether
  answers may be changed;
* an empty answer store laid out like the organiser's (``reader_cases``, ``answers``,
  ``answer_history``, ``views``), driven by the same :class:`~engine.study.reader_session.ReaderSession`
  code, so skips, changes, history and time per case behave exactly as in the organiser's file.

What it never holds: source paths, file names, file hashes, conditions, provenance, the other
readers, the seed or the truth. The tables have no column for them.

**Binding and integrity.** The organiser's database keeps, per study, a random study id and a
random secret (``meta`` table: no layout change). A pack carries the study id, its own random
pack id, a *pack key* = HMAC-SHA256(secret, pack id), and a *seal* = HMAC-SHA256(secret, the
canonical JSON of everything fixed in the pack: study id, reader, settings, questions, order,
every case's number and data hash, the pack key). Only the organiser can make or check a seal.
Every save of an answer is chained with the pack key (``mac`` of each ``answer_history`` row
over the previous row's ``mac`` and the save), so edits of the answer store made outside
BrainSynth, removed or reordered saves and answers spliced in from another pack are found at
merge (:mod:`engine.study.merge`). The pack key is inside the pack, so this authenticates
answers "as far as possible": it does not stop a reader who runs their own code on the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.study.database import DatabaseConnection, now_iso
from engine.study.display import DisplayCase, DisplaySettings, display_array, make_display_case
from engine.study.errors import StudyError
from engine.study.questions import Question
from engine.study.reader_session import ReaderSession
from engine.study.records import StudyInfo

#: The ``meta`` format marker of a pack.
PACK_FORMAT = "brainsynth-study-pack"
#: Layout version of a pack (frozen in ``tests/data/study_pack_schema_v1.sql``).
PACK_SCHEMA_VERSION = 1
#: The usual file name ending of a pack.
PACK_SUFFIX = ".bsstudy"
#: zlib level of the case arrays (a fixed level: every case is compressed alike).
ZLIB_LEVEL = 6
#: The one reader of a pack, as its ``readers`` row.
PACK_READER_ID = 1

#: The tables of a new pack (the on-disk format: change only with a new version).
_PACK_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    data BLOB NOT NULL,
    data_sha256 TEXT NOT NULL
);
CREATE TABLE readers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
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
    recorded_at TEXT NOT NULL,
    mac TEXT NOT NULL
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

#: The pack's ``meta`` entries covered by its seal (besides the cases and the order).
SEALED_KEYS = (
    "pack_id",
    "study_uid",
    "study_name",
    "study_created_at",
    "reader",
    "allow_changes",
    "display_json",
    "questions_json",
    "n_cases",
    "pack_key",
    "made_at",
    "software_version",
)

#: ``progress(done, total)`` while a pack's cases go through the display pipeline.
ProgressCallback = Callable[[int, int], None]


class PackFile(DatabaseConnection):
    """A study pack's SQLite file: the study database's connection, checks and transactions, with the
    pack's own layout and a rollback journal (one file between transactions, safe on a share)."""

    FORMAT = PACK_FORMAT
    SCHEMA_SQL = _PACK_SCHEMA
    VERSION = PACK_SCHEMA_VERSION
    JOURNAL_MODE = "delete"
    FILE_NOUN = "study pack"

    def _read_only_message(self) -> str:
        return (
            f"the study pack {self.path} is read-only (the file or its folder cannot be written), so answers cannot "
            "be saved in it; copy it to a folder you can write to and open the copy"
        )

    def meta(self) -> dict[str, str]:
        """The pack's ``meta`` table as a dict."""
        with self.read() as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())


# --------------------------------------------------------------------------- keys and seals


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def pack_key(secret: bytes, pack_id: str) -> str:
    """The key a pack seals its answers with (hex): HMAC-SHA256(study secret, pack id)."""
    return _mac(secret, f"brainsynth-pack-key\x1f{pack_id}".encode())


def seal(secret: bytes, meta: dict[str, str], cases: list[tuple[int, str]], order: list[int]) -> str:
    """The organiser's HMAC-SHA256 over everything fixed in a pack (hex).

    Args:
        secret: the study's pack secret (only in the organiser's database).
        meta: the pack's ``meta`` entries (:data:`SEALED_KEYS` are used).
        cases: (case number, SHA-256 of its uncompressed data) for every case.
        order: the reader's case numbers by position.
    """
    content = {
        "format": PACK_FORMAT,
        "version": PACK_SCHEMA_VERSION,
        "meta": {k: meta.get(k) for k in SEALED_KEYS},
        "cases": sorted([int(n), str(d)] for n, d in cases),
        "order": [int(n) for n in order],
    }
    return _mac(secret, json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


def history_mac(key_hex: str, previous: str, row: tuple) -> str:
    """The chained MAC of one answer save: HMAC(pack key, previous MAC + the save).

    Args:
        key_hex: the pack key (hex).
        previous: the previous save's MAC, or the pack id for the first save.
        row: (case number, revision, action, values JSON, seconds or None, recorded_at).
    """
    number, revision, action, values_json, seconds, recorded_at = row
    body = json.dumps(
        [previous, int(number), int(revision), str(action), str(values_json), seconds, str(recorded_at)],
        separators=(",", ":"),
    )
    return _mac(bytes.fromhex(key_hex), body.encode())


def study_secret(db: DatabaseConnection, study: str) -> tuple[int, str, bytes]:
    """The study's row id, its random study id and its pack secret, made on first use.

    Both live in the organiser database's ``meta`` table (``study_uid:<id>``,
    ``pack_secret:<id>``), so the database layout is unchanged.

    Raises:
        StudyError: no such study.
    """
    with db.read() as conn:
        row = conn.execute("SELECT id FROM studies WHERE name = ?", (study,)).fetchone()
    if row is None:
        from engine.study.organiser import StudyDatabase

        if isinstance(db, StudyDatabase):
            db.study(study)  # the message that lists the studies
        raise StudyError(f"no study named {study!r} in {db.path}")
    study_id = int(row[0])
    uid_key, secret_key = f"study_uid:{study_id}", f"pack_secret:{study_id}"
    with db.read() as conn:
        found = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (uid_key, secret_key)).fetchall())
    if len(found) < 2:
        with db.transaction() as conn:
            for key, value in ((uid_key, secrets.token_hex(16)), (secret_key, secrets.token_hex(32))):
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            found = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (uid_key, secret_key)).fetchall()
            )
    return study_id, found[uid_key], bytes.fromhex(found[secret_key])


# ------------------------------------------------------------------------------- making one


@dataclass(frozen=True)
class PackInfo:
    """What :func:`make_pack` wrote."""

    path: Path
    study: str
    reader: str
    pack_id: str
    n_cases: int


def encode_case(data: np.ndarray) -> tuple[bytes, str]:
    """A display array as stored in a pack: (zlib-compressed little-endian float32, SHA-256 of the raw bytes)."""
    raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
    return zlib.compress(raw, ZLIB_LEVEL), hashlib.sha256(raw).hexdigest()


def decode_case(blob: bytes, digest: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array of a pack's case blob.

    Raises:
        StudyError: the blob does not decompress, has the wrong size or does not match its hash.
    """
    try:
        raw = zlib.decompress(blob)
    except zlib.error:
        raise StudyError("its image data is damaged") from None
    if len(raw) != 4 * int(np.prod(shape)) or hashlib.sha256(raw).hexdigest() != digest:
        raise StudyError("its image data is damaged or was changed")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def make_pack(
    db: DatabaseConnection,
    study: str,
    reader: str,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> PackInfo:
    """Write ``reader``'s study pack: every case through the display pipeline, no truth, no paths.

    The pack is written to a temporary file beside ``out`` and renamed when complete, so it is
    whole or absent. The pack is recorded in the organiser's database (``meta``
    ``pack_issued:<pack id>``), so merge knows it made it.

    Args:
        db: the organiser's study database (a :class:`~engine.study.organiser.StudyDatabase`).
        study: the study's name.
        reader: a reader of the study.
        out: the pack file (``.bsstudy`` by convention).
        overwrite: replace ``out`` if it exists.
        progress: called as ``progress(done, total)`` as cases are prepared.

    Raises:
        StudyError: unknown study or reader, or a case file missing, changed or unreadable (the
            message names the case and file: it is for the organiser).
        ExportError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    from engine import __version__
    from engine.atomic import atomic_path
    from engine.errors import BrainSynthError
    from engine.study.case_files import case_file_problem
    from engine.study.organiser import StudyDatabase

    if not isinstance(db, StudyDatabase):
        raise TypeError("make_pack needs the organiser's StudyDatabase")
    session = db.session(study, reader)  # checks study and reader with the usual messages
    info = session.study
    order = session.order()
    study_id, study_uid, secret = study_secret(db, study)
    with db.read() as conn:
        rows = conn.execute(
            "SELECT number, source_path, source_sha256 FROM cases WHERE study_id = ?", (study_id,)
        ).fetchall()
    sources = {int(n): (Path(p), d) for n, p, d in rows}
    out = Path(out)
    if out.is_dir():
        raise StudyError(f"{out} is a folder; give the pack's file name, e.g. {out / (reader + PACK_SUFFIX)}")

    pack_id = secrets.token_hex(16)
    meta = {
        "pack_id": pack_id,
        "study_uid": study_uid,
        "study_name": info.name,
        "study_created_at": info.created_at,
        "reader": reader,
        "allow_changes": "1" if info.allow_changes else "0",
        "display_json": json.dumps(info.display.to_dict(), sort_keys=True),
        "questions_json": json.dumps([q.to_dict() for q in info.questions], sort_keys=True),
        "n_cases": str(len(order)),
        "pack_key": pack_key(secret, pack_id),
        "made_at": now_iso(),
        "software_version": __version__,
    }
    encoded: list[tuple[int, bytes, str]] = []
    for done, number in enumerate(sorted(order), start=1):
        path, digest = sources[number]
        problem = case_file_problem(path, digest)
        if problem is not None:
            raise StudyError(f"case {number}: {path} is {problem}; the pack was not written")
        try:
            data = display_array(path, info.display)
        except BrainSynthError as exc:
            raise StudyError(f"case {number}: {exc}; the pack was not written") from exc
        blob, data_digest = encode_case(data)
        encoded.append((number, blob, data_digest))
        if progress is not None:
            progress(done, len(order))
    meta["seal"] = seal(secret, meta, [(n, d) for n, _, d in encoded], order)

    # Recorded before the file appears: a pack on disk is always one this database knows (a
    # record whose file was never finished is harmless, it matches nothing).
    record = json.dumps({"study_id": study_id, "reader": reader, "made_at": meta["made_at"]})
    with db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"pack_issued:{pack_id}", record))
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.unlink(missing_ok=True)  # the pack file creates its own layout in a new file
        with PackFile(tmp) as pack, pack.transaction() as conn:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            conn.execute("INSERT INTO readers (id, name) VALUES (?, ?)", (PACK_READER_ID, reader))
            conn.executemany(
                "INSERT INTO cases (id, number, data, data_sha256) VALUES (?, ?, ?, ?)",
                [(n, n, sqlite3.Binary(b), d) for n, b, d in encoded],
            )
            conn.executemany(
                "INSERT INTO reader_cases (reader_id, case_id, position, queue) VALUES (?, ?, ?, ?)",
                [(PACK_READER_ID, n, pos, pos) for pos, n in enumerate(order, start=1)],
            )
    return PackInfo(path=out, study=info.name, reader=reader, pack_id=pack_id, n_cases=len(order))


# ------------------------------------------------------------------------------ reading one


def pack_study_info(meta: dict[str, str]) -> StudyInfo:
    """The study as a pack's reader knows it (their own name as the only reader).

    Raises:
        StudyError: the pack's settings cannot be read.
    """
    try:
        return StudyInfo(
            name=meta["study_name"],
            created_at=meta["study_created_at"],
            allow_changes=meta["allow_changes"] == "1",
            questions=tuple(Question.from_dict(q) for q in json.loads(meta["questions_json"])),
            display=DisplaySettings.from_dict(json.loads(meta["display_json"])),
            readers=(meta["reader"],),
            n_cases=int(meta["n_cases"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StudyError(f"the study pack's settings are damaged ({type(exc).__name__}: {exc})") from None


class PackSession(ReaderSession):
    """A reader's session on a study pack: everything :class:`ReaderSession` does, on the pack's file.

    Answers, skips, changes and visits are committed into the pack as they happen (one
    transaction each, rollback journal, ``synchronous=FULL``); reopening the pack resumes at
    the first unanswered case. Each save is sealed into the pack's MAC chain.

    Obtain it with :func:`open_pack`; close it (or use it as a context manager) when done.
    """

    def __init__(self, pack: PackFile, study: StudyInfo, reader: str, *, key_hex: str, pack_id: str) -> None:
        super().__init__(pack, study, reader, PACK_READER_ID)
        self.pack = pack
        self.pack_id = pack_id
        self._key_hex = key_hex

    @property
    def path(self) -> Path:
        """The pack file."""
        return self.pack.path

    def _record_history(
        self,
        conn: sqlite3.Connection,
        *,
        case_id: int,
        revision: int,
        action: str,
        payload: str,
        seconds: float | None,
        recorded_at: str,
    ) -> None:
        last = conn.execute("SELECT mac FROM answer_history ORDER BY id DESC LIMIT 1").fetchone()
        previous = last[0] if last else self.pack_id
        number = conn.execute("SELECT number FROM cases WHERE id = ?", (case_id,)).fetchone()[0]
        mac = history_mac(self._key_hex, previous, (number, revision, action, payload, seconds, recorded_at))
        conn.execute(
            "INSERT INTO answer_history (reader_id, case_id, revision, action, values_json, seconds, recorded_at, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (PACK_READER_ID, case_id, revision, action, payload, seconds, recorded_at, mac),
        )

    def load_case(self, number: int) -> DisplayCase:
        """The case as stored in the pack (already through the display pipeline; thread-safe).

        Raises:
            StudyError: unknown case, or its stored image is damaged.
        """
        with self._db.read() as conn:
            case_id = self._case_id(conn, number)
            blob, digest = conn.execute("SELECT data, data_sha256 FROM cases WHERE id = ?", (case_id,)).fetchone()
        try:
            data = decode_case(bytes(blob), digest, tuple(self.study.display.grid.shape))
        except StudyError as exc:
            raise StudyError(f"case {number} cannot be shown: {exc}; ask the study organiser for a new pack") from None
        return make_display_case(number, data, self.study.display)

    def close(self) -> None:
        """Close the pack file (every answer is already in it)."""
        self.pack.close()

    def __enter__(self) -> PackSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pack(path: str | os.PathLike) -> PackSession:
    """Open a study pack for rating.

    Raises:
        StudyError: the file is missing, not a study pack, damaged or made by a newer BrainSynth.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path} does not exist or is not a file; give the study pack (.bsstudy) you were sent")
    pack = PackFile(path)
    try:
        meta = pack.meta()
        info = pack_study_info(meta)
        if "pack_key" not in meta or "pack_id" not in meta:
            raise StudyError(f"the study pack {path} is damaged (its key is missing); ask for a new pack")
        return PackSession(pack, info, meta["reader"], key_hex=meta["pack_key"], pack_id=meta["pack_id"])
    except BaseException:
        pack.close()
        raise
