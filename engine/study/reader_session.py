"""A reader's session: one reader working through one study, the object a review front end drives.

* **Blind by construction.** The truth (real or synthetic) and the source path of each case
  live only in the ``cases`` table. What a :class:`ReaderSession` hands out are anonymous
  case numbers, answers, and display arrays that went through :mod:`engine.study.display`.
* **Every change kept.** ``answers`` holds the current answer per reader and case;
  ``answer_history`` has one row per save (the first answer and every change), with its time.
  Changes are refused unless the study was created with ``allow_changes``.
* **Time per case.** Opening a case starts a visit (``views``); answering or skipping ends it.
  A case's time is the sum of its visits, so time spent before a "skip for later" counts too.
  A visit left open (the app closed, or the CLI's ``next`` never followed by ``answer``) for
  longer than :data:`STALE_VISIT_S` is not counted when the case is opened again.

The session uses the database only through its public
:meth:`~engine.study.database.DatabaseConnection.read` and
:meth:`~engine.study.database.DatabaseConnection.transaction`; each answer, change or skip is
one transaction.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from engine.errors import BrainSynthError
from engine.study.case_files import case_file_problem
from engine.study.database import DatabaseConnection, now_iso
from engine.study.display import DisplayCase, display_array, make_display_case
from engine.study.errors import StudyError
from engine.study.questions import Question, validate_answer
from engine.study.records import Answer, HistoryEntry, Progress, QueueEntry, StudyInfo

#: A visit open for longer than this (seconds) is treated as abandoned when the case is reopened.
STALE_VISIT_S = 3600.0


class ReaderSession:
    """One reader working through one study: everything a review front end calls.

    Obtain it with :meth:`engine.study.organiser.StudyDatabase.session`. It knows the reader's
    shuffled order, the questions, and the reader's own answers, and it loads case volumes
    through the display pipeline; it never reveals a case's truth or file. Each
    :meth:`answer` and :meth:`skip` is committed before it returns.

    Typical flow::

        number = session.next_case()          # first unanswered case (resumes after a crash)
        session.open_case(number)             # starts the clock for this case
        case = session.load_case(number)      # DisplayCase: .data, .window, .spacing_mm
        ...                                   # the reader rates
        session.answer(number, {"confidence": 4, "realism": 3, "plausibility": 4, "consistency": 5})
        # or session.skip(number): the case comes back after all the others

    Args:
        db: the open study database (only its public ``read`` and ``transaction`` are used).
        study: the study, as :meth:`~engine.study.organiser.StudyDatabase.study` gives it.
        reader: the reader's name, exactly as stored.
        reader_id: the reader's row in the ``readers`` table.
    """

    def __init__(self, db: DatabaseConnection, study: StudyInfo, reader: str, reader_id: int) -> None:
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
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT c.number FROM reader_cases rc JOIN cases c ON c.id = rc.case_id "
                "LEFT JOIN answers a ON a.reader_id = rc.reader_id AND a.case_id = rc.case_id "
                "WHERE rc.reader_id = ? AND a.case_id IS NULL ORDER BY rc.queue LIMIT 1",
                (self._reader_id,),
            ).fetchone()
        return int(row[0]) if row else None

    def queue(self) -> list[QueueEntry]:
        """Every case in this reader's current order, with its status."""
        with self._db.read() as conn:
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
        with self._db.read() as conn:
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
        with self._db.read() as conn:
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
        with self._db.read() as conn:
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
        with self._db.read() as conn:
            case_id = self._case_id(conn, number)
            source, digest = conn.execute(
                "SELECT source_path, source_sha256 FROM cases WHERE id = ?", (case_id,)
            ).fetchone()
        hint = "ask the study organiser to run 'brainsynth-cli study check'"
        path = Path(source)
        problem = case_file_problem(path, digest)
        if problem == "missing":
            raise StudyError(f"case {number} cannot be shown: its volume is missing; {hint}")
        if problem == "changed":
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
        with self._db.transaction() as conn:
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
        now = now_iso()
        payload = json.dumps(clean, ensure_ascii=False)
        with self._db.transaction() as conn:
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
            self._record_history(
                conn,
                case_id=case_id,
                revision=revision,
                action="change" if existing else "answer",
                payload=payload,
                seconds=total,
                recorded_at=now,
            )
        return Answer(int(number), clean, total, answered_at, now, revision)

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
        """Add one save to ``answer_history``, inside the answer's transaction (a study pack also
        seals it, :class:`engine.study.pack.PackSession`)."""
        conn.execute(
            "INSERT INTO answer_history (reader_id, case_id, revision, action, values_json, seconds, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self._reader_id, case_id, revision, action, payload, seconds, recorded_at),
        )

    def skip(self, number: int, *, seconds: float | None = None) -> None:
        """Put an unanswered case at the end of this reader's order ("skip for later"), committed at once.

        Args:
            number: the case number.
            seconds: time the reader spent on this visit, if the front end measured it (e.g.
                excluding time the review window was hidden); None for the time since
                :meth:`open_case`.

        Raises:
            StudyError: unknown case, the case is already answered, or a bad ``seconds``.
        """
        if seconds is not None and (not math.isfinite(seconds) or seconds < 0):
            raise StudyError(f"time spent must be a non-negative number of seconds, got {seconds!r}")
        with self._db.transaction() as conn:
            case_id = self._case_id(conn, number)
            if conn.execute(
                "SELECT 1 FROM answers WHERE reader_id = ? AND case_id = ?", (self._reader_id, case_id)
            ).fetchone():
                raise StudyError(f"case {number} is already answered; only unanswered cases can be skipped")
            self._close_visit(conn, case_id, "skipped", seconds)
            last = conn.execute(
                "SELECT MAX(queue) FROM reader_cases WHERE reader_id = ?", (self._reader_id,)
            ).fetchone()[0]
            conn.execute(
                "UPDATE reader_cases SET queue = ?, skips = skips + 1 WHERE reader_id = ? AND case_id = ?",
                (int(last) + 1, self._reader_id, case_id),
            )
