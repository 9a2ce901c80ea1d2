"""Merging readers' study packs back into the organiser's database.

:func:`verify_pack` checks a pack against the organiser's database before anything is read
into it: the pack must be one this database issued (``pack_issued:<pack id>``) for this study
and reader, its study id and pack key must be this study's, its seal (HMAC over everything
fixed in it, :func:`engine.study.pack.seal`) must hold, every case's data must match its hash,
and its answer store must be consistent: the chain of answer saves intact
(:func:`engine.study.pack.history_mac`), every answer valid for the study's questions, every
current answer the last save of its case, no change where the study allows none. Any failure
refuses the whole pack with one message.

:func:`merge_pack` then imports, in one transaction, what the database does not have yet:

* every save (``answer_history``), identified by reader, case, time and values, so merging the
  same pack twice adds nothing and a pack with more answers adds only the new ones;
* the current answer of each touched case, recomputed from all its saves in time order: the
  first is revision 1 ("answer"), every later one a "change", the latest wins (only where the
  study allows changes; otherwise a second, different answer to a case is refused);
* the reader's visits (``views``, with their times) and skip counts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine.study.database import now_iso
from engine.study.errors import StudyError
from engine.study.organiser import StudyDatabase
from engine.study.pack import (
    PACK_READER_ID,
    PackFile,
    decode_case,
    history_mac,
    pack_key,
    pack_study_info,
    seal,
    study_secret,
)
from engine.study.questions import validate_answer


@dataclass(frozen=True)
class VerifiedPack:
    """A pack that passed :func:`verify_pack`, with what is to be imported.

    Attributes:
        path: the pack file.
        pack_id: the pack's random id.
        reader: its reader.
        history: every save, oldest first: (case number, values JSON, seconds, recorded_at).
        views: every visit: (case number, opened_at, closed_at, seconds, outcome).
        skips: case number → how often it was skipped.
        n_answered: cases answered in the pack.
        n_cases: cases in the pack.
    """

    path: Path
    pack_id: str
    reader: str
    history: list[tuple[int, str, float | None, str]]
    views: list[tuple[int, float, float | None, float | None, str | None]]
    skips: dict[int, int]
    n_answered: int
    n_cases: int


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge_pack` imported from one pack.

    Attributes:
        path: the pack file.
        reader: its reader.
        new_answers: cases that had no answer of this reader before.
        changed_answers: cases whose current answer changed (a later save won).
        new_saves: saves (first answers and changes) added to the history.
        new_views: visits added.
        answered: cases answered in the pack.
        n_cases: cases in the pack.
    """

    path: Path
    reader: str
    new_answers: int
    changed_answers: int
    new_saves: int
    new_views: int
    answered: int
    n_cases: int
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        return not (self.new_saves or self.new_views or self.changed_answers)

    def summary(self) -> str:
        """One line: ``ana.bsstudy (ana): 12 new answers, 1 changed, 14 saves, 15 visits; 12 of 40 answered``."""
        if self.nothing_new:
            what = "nothing new (already merged)"
        else:
            what = (
                f"{self.new_answers} new answer{'s' if self.new_answers != 1 else ''}, "
                f"{self.changed_answers} changed, {self.new_saves} save{'s' if self.new_saves != 1 else ''}, "
                f"{self.new_views} visit{'s' if self.new_views != 1 else ''}"
            )
        return f"{self.path.name} ({self.reader}): {what}; {self.answered} of {self.n_cases} answered in the pack"


def _tampered(path: Path, what: str) -> StudyError:
    return StudyError(
        f"{path.name} was refused: {what}; it was changed outside BrainSynth or damaged in transit "
        "(ask the reader for the file again; nothing was imported)"
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def verify_pack(db: StudyDatabase, study: str, path: str | os.PathLike) -> VerifiedPack:
    """Check one pack against the organiser's database (nothing is written anywhere).

    Raises:
        StudyError: the file is not a pack or is damaged, belongs to another study or another
            database, names a reader it was not made for, or was changed (the message says
            which check failed; nothing is imported).
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path} does not exist or is not a file")
    info = db.study(study)
    study_id, study_uid, secret = study_secret(db, study)
    with PackFile(path) as pack:
        meta = pack.meta()
        with pack.read() as conn:
            cases = conn.execute("SELECT id, number, data, data_sha256 FROM cases ORDER BY number").fetchall()
            readers = conn.execute("SELECT id, name FROM readers").fetchall()
            order_rows = conn.execute(
                "SELECT reader_id, case_id, position, queue, skips FROM reader_cases ORDER BY position"
            ).fetchall()
            history = conn.execute(
                "SELECT id, reader_id, case_id, revision, action, values_json, seconds, recorded_at, mac "
                "FROM answer_history ORDER BY id"
            ).fetchall()
            answers = conn.execute(
                "SELECT reader_id, case_id, values_json, seconds, answered_at, updated_at, revision FROM answers"
            ).fetchall()
            views = conn.execute(
                "SELECT reader_id, case_id, opened_at, closed_at, seconds, outcome FROM views ORDER BY id"
            ).fetchall()

    # Whose pack is it?
    if meta.get("study_uid") != study_uid:
        other = meta.get("study_name", "?")
        raise StudyError(
            f"{path.name} was refused: it is a pack of study {other!r} from another study database, not of "
            f"study {study!r} here; merge it into the study it was made for"
        )
    pack_id = meta.get("pack_id", "")
    with db.read() as conn:
        issued = conn.execute("SELECT value FROM meta WHERE key = ?", (f"pack_issued:{pack_id}",)).fetchone()
    reader = meta.get("reader", "")
    if issued is None:
        raise _tampered(path, "this database never issued a pack with its id")
    record = json.loads(issued[0])
    if int(record.get("study_id", -1)) != study_id or record.get("reader") != reader:
        raise _tampered(path, f"it was issued for reader {record.get('reader')!r}, but names {reader!r}")
    if reader not in info.readers:
        raise StudyError(f"{path.name} was refused: {reader!r} is no longer a reader of study {study!r}")

    # Is everything fixed in it what the organiser sealed?
    if not _equal(meta.get("pack_key", ""), pack_key(secret, pack_id)):
        raise _tampered(path, "its key does not belong to it")
    shape = tuple(info.display.grid.shape)
    by_id: dict[int, int] = {}
    case_digests = []
    for case_id, number, blob, digest in cases:
        try:
            decode_case(bytes(blob), str(digest), shape)
        except (StudyError, TypeError) as exc:
            raise _tampered(path, f"the image of case {number} does not match its hash ({exc})") from None
        by_id[int(case_id)] = int(number)
        case_digests.append((int(number), str(digest)))
    if readers != [(PACK_READER_ID, reader)]:
        raise _tampered(path, "its reader table was changed")
    if any(int(r[0]) != PACK_READER_ID or int(r[1]) not in by_id for r in order_rows):
        raise _tampered(path, "its case order was changed")
    order = [by_id[int(r[1])] for r in order_rows]
    if not _equal(meta.get("seal", ""), seal(secret, meta, case_digests, order)):
        raise _tampered(path, "its seal does not match its contents")
    pack_info = pack_study_info(meta)
    if pack_info.questions != info.questions or pack_info.allow_changes != info.allow_changes:
        raise _tampered(path, "its questions or settings differ from the study's")
    numbers = set(by_id.values())
    if set(order) != numbers or len(order) != len(numbers):
        raise _tampered(path, "its case order was changed")

    # Is its answer store one BrainSynth wrote?
    key_hex = meta["pack_key"]
    previous = pack_id
    saves: list[tuple[int, str, float | None, str]] = []
    per_case: dict[int, list[tuple]] = {}
    for row_id, reader_id, case_id, revision, action, values_json, seconds, recorded_at, mac in history:
        if reader_id != PACK_READER_ID or case_id not in by_id:
            raise _tampered(path, f"answer save {row_id} names no case of the pack")
        number = by_id[case_id]
        expected = history_mac(key_hex, previous, (number, revision, action, values_json, seconds, recorded_at))
        if not _equal(str(mac), expected):
            raise _tampered(path, f"the answer saved for case {number} (save {row_id}) was changed or a save is gone")
        previous = str(mac)
        _check_save(path, info.questions, number, values_json, seconds, recorded_at)
        earlier = per_case.setdefault(number, [])
        if int(revision) != len(earlier) + 1 or action != ("answer" if not earlier else "change"):
            raise _tampered(path, f"the saves of case {number} are out of order")
        if earlier and not info.allow_changes:
            raise _tampered(path, f"case {number} was answered twice, and the study does not allow changes")
        earlier.append((values_json, seconds, recorded_at))
        saves.append((number, str(values_json), seconds, str(recorded_at)))
    current = {}
    for reader_id, case_id, values_json, seconds, answered_at, updated_at, revision in answers:
        number = by_id.get(case_id)
        if reader_id != PACK_READER_ID or number is None or number not in per_case:
            raise _tampered(path, "an answer has no saved history")
        kept = per_case[number]
        if (values_json, seconds, updated_at) != kept[-1] or answered_at != kept[0][2] or revision != len(kept):
            raise _tampered(path, f"the current answer of case {number} is not its last save")
        current[number] = values_json
    if set(current) != set(per_case):
        raise _tampered(path, "a saved answer is missing from the answers")
    visits = []
    for reader_id, case_id, opened, closed, seconds, outcome in views:
        if reader_id != PACK_READER_ID or case_id not in by_id:
            raise _tampered(path, "a visit names no case of the pack")
        if outcome not in (None, "answered", "changed", "skipped", "abandoned"):
            raise _tampered(path, "a visit has an unknown outcome")
        for value in (opened, closed, seconds):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
                raise _tampered(path, "a visit has an impossible time")
        visits.append((by_id[case_id], float(opened), closed, seconds, outcome))
    skips = {by_id[int(r[1])]: int(r[4]) for r in order_rows}
    return VerifiedPack(
        path=path,
        pack_id=pack_id,
        reader=reader,
        history=saves,
        views=visits,
        skips=skips,
        n_answered=len(current),
        n_cases=len(numbers),
    )


def _equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(str(a).encode(), str(b).encode())


def _check_save(path: Path, questions, number: int, values_json, seconds, recorded_at) -> None:
    try:
        values = json.loads(values_json)
        if validate_answer(questions, values) != values:
            raise ValueError("not in the form BrainSynth saves")
        _time(str(recorded_at))
    except (ValueError, TypeError, StudyError) as exc:
        raise _tampered(path, f"the answer saved for case {number} is not valid ({exc})") from None
    if seconds is not None and (not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0):
        raise _tampered(path, f"the time saved for case {number} is impossible")


def merge_pack(db: StudyDatabase, study: str, path: str | os.PathLike) -> MergeReport:
    """Verify one pack and import what the database does not have yet (one transaction).

    Raises:
        StudyError: the pack is refused (:func:`verify_pack`), or it holds an answer that
            contradicts one already merged where the study allows no changes.
    """
    verified = verify_pack(db, study, path)
    info = db.study(study)
    reader = verified.reader
    with db.transaction() as conn:
        study_id = conn.execute("SELECT id FROM studies WHERE name = ?", (study,)).fetchone()[0]
        reader_id = conn.execute(
            "SELECT id FROM readers WHERE study_id = ? AND name = ?", (study_id, reader)
        ).fetchone()[0]
        case_ids = dict(conn.execute("SELECT number, id FROM cases WHERE study_id = ?", (study_id,)).fetchall())
        if set(verified.skips) != set(case_ids):
            raise _tampered(verified.path, "its cases are not the study's")
        before = {
            int(c): v
            for c, v in conn.execute("SELECT case_id, values_json FROM answers WHERE reader_id = ?", (reader_id,))
        }
        new_saves = 0
        touched: set[int] = set()
        for number, values_json, seconds, recorded_at in verified.history:
            case_id = case_ids[number]
            if conn.execute(
                "SELECT 1 FROM answer_history WHERE reader_id = ? AND case_id = ? AND recorded_at = ? "
                "AND values_json = ?",
                (reader_id, case_id, recorded_at, values_json),
            ).fetchone():
                continue
            conn.execute(
                "INSERT INTO answer_history (reader_id, case_id, revision, action, values_json, seconds, recorded_at) "
                "VALUES (?, ?, 0, 'answer', ?, ?, ?)",
                (reader_id, case_id, values_json, seconds, recorded_at),
            )
            new_saves += 1
            touched.add(case_id)
        new_answers = changed = 0
        for case_id in sorted(touched):
            rows = conn.execute(
                "SELECT id, values_json, seconds, recorded_at FROM answer_history WHERE reader_id = ? AND case_id = ?",
                (reader_id, case_id),
            ).fetchall()
            rows.sort(key=lambda r: (_time(r[3]), r[0]))
            if not info.allow_changes and len({r[1] for r in rows}) > 1:
                number = next(n for n, c in case_ids.items() if c == case_id)
                raise StudyError(
                    f"{Path(path).name} was refused: {reader} answered case {number} differently before (in another "
                    f"pack or in this database), and study {study!r} does not allow changing answers; nothing "
                    "was imported"
                )
            for revision, (row_id, *_rest) in enumerate(rows, start=1):
                conn.execute(
                    "UPDATE answer_history SET revision = ?, action = ? WHERE id = ?",
                    (revision, "answer" if revision == 1 else "change", row_id),
                )
            _, values_json, seconds, updated_at = rows[-1]
            answered_at = rows[0][3]
            conn.execute(
                "INSERT OR REPLACE INTO answers (reader_id, case_id, values_json, seconds, answered_at, updated_at, "
                "revision) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (reader_id, case_id, values_json, seconds, answered_at, updated_at, len(rows)),
            )
            if case_id not in before:
                new_answers += 1
            elif before[case_id] != values_json:
                changed += 1
        new_views = 0
        for number, opened, closed, seconds, outcome in verified.views:
            case_id = case_ids[number]
            if conn.execute(
                "SELECT 1 FROM views WHERE reader_id = ? AND case_id = ? AND opened_at = ?",
                (reader_id, case_id, opened),
            ).fetchone():
                if closed is not None:  # a visit open at the last merge may have closed since
                    conn.execute(
                        "UPDATE views SET closed_at = ?, seconds = ?, outcome = ? "
                        "WHERE reader_id = ? AND case_id = ? AND opened_at = ? AND closed_at IS NULL",
                        (closed, seconds, outcome, reader_id, case_id, opened),
                    )
                continue
            conn.execute(
                "INSERT INTO views (reader_id, case_id, opened_at, closed_at, seconds, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (reader_id, case_id, opened, closed, seconds, outcome),
            )
            new_views += 1
        for number, skips in verified.skips.items():
            conn.execute(
                "UPDATE reader_cases SET skips = MAX(skips, ?) WHERE reader_id = ? AND case_id = ?",
                (skips, reader_id, case_ids[number]),
            )
        merged = {
            "reader": reader,
            "merged_at": now_iso(),
            "answered": verified.n_answered,
            "n_cases": verified.n_cases,
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (f"pack_merged:{verified.pack_id}", json.dumps(merged)),
        )
    return MergeReport(
        path=verified.path,
        reader=reader,
        new_answers=new_answers,
        changed_answers=changed,
        new_saves=new_saves,
        new_views=new_views,
        answered=verified.n_answered,
        n_cases=verified.n_cases,
    )


@dataclass(frozen=True)
class PackRecord:
    """A pack issued for a study, as ``study status`` shows it.

    Attributes:
        pack_id: the pack's id (its first 8 characters identify it to people).
        reader: its reader.
        made_at: when it was made.
        merged_at: when it was last merged, or None.
        answered: cases answered in the pack at its last merge (None before one).
    """

    pack_id: str
    reader: str
    made_at: str
    merged_at: str | None
    answered: int | None


def pack_records(db: StudyDatabase, study: str) -> list[PackRecord]:
    """Every pack issued for ``study``, oldest first, with its last merge.

    Raises:
        StudyError: no such study.
    """
    db.study(study)
    with db.read() as conn:
        study_id = conn.execute("SELECT id FROM studies WHERE name = ?", (study,)).fetchone()[0]
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'pack_%'").fetchall())
    out = []
    for key, value in rows.items():
        if not key.startswith("pack_issued:"):
            continue
        issued = json.loads(value)
        if int(issued.get("study_id", -1)) != study_id:
            continue
        pack_id = key.split(":", 1)[1]
        merged = json.loads(rows.get(f"pack_merged:{pack_id}", "null"))
        out.append(
            PackRecord(
                pack_id=pack_id,
                reader=str(issued.get("reader")),
                made_at=str(issued.get("made_at")),
                merged_at=merged.get("merged_at") if merged else None,
                answered=int(merged["answered"]) if merged else None,
            )
        )
    return sorted(out, key=lambda r: r.made_at)
