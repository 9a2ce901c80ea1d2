"""Reader-study storage: orders, resume, skips, changes and history, timing, crash safety, bad inputs."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest

from engine.errors import BrainSynthError
from engine.study import DEFAULT_QUESTIONS, StudyDatabase, StudyError, reader_order
from engine.study import database as database_module
from engine.study import reader_session as reader_session_module
from tests.helpers_study import GOOD, dummy_files

ROOT = Path(__file__).resolve().parents[1]


def _create(db: StudyDatabase, tmp_path: Path, *, name="pilot", n_real=4, n_synthetic=4, **kwargs):
    real = dummy_files(tmp_path / "real", "r", n_real)
    synthetic = dummy_files(tmp_path / "synthetic", "s", n_synthetic)
    kwargs.setdefault("readers", ["ana", "ben"])
    kwargs.setdefault("seed", 7)
    return db.create_study(name=name, real=real, synthetic=synthetic, preset="tiny", validate=False, **kwargs)


@pytest.fixture
def db(tmp_path):
    with StudyDatabase(tmp_path / "studies.sqlite") as database:
        yield database


def test_create_stores_anonymous_cases_and_hides_truth(db, tmp_path):
    info = _create(db, tmp_path)
    assert info.n_cases == 8
    assert info.readers == ("ana", "ben")
    assert not info.allow_changes
    assert [q.key for q in info.questions] == [q.key for q in DEFAULT_QUESTIONS]
    session = db.session("pilot", "ana")
    assert sorted(session.order()) == list(range(1, 9))
    # nothing a reader's objects hold mentions truth or files
    reader_side = [dataclasses.replace(info, questions=()), session.progress(), *session.queue()]
    text = " ".join(repr(obj) for obj in reader_side)  # (the questions' own text says "real or synthetic")
    for forbidden in ("real", "synthetic", str(tmp_path), ".nii"):
        assert forbidden not in text
    assert not any(f.name in ("truth", "source") for f in dataclasses.fields(info))
    # case numbers are shuffled: the real pool is not simply cases 1..4
    truths = {r.case_number: r.truth for r in _answer_all(db, "pilot", "ana")}
    assert [truths[n] for n in range(1, 9)] != ["real"] * 4 + ["synthetic"] * 4
    summary = db.list_studies()[0]
    assert (summary.n_real, summary.n_synthetic, summary.answered) == (4, 4, {"ana": 8, "ben": 0})


def _answer_all(db, study, reader):
    session = db.session(study, reader)
    while (n := session.next_case()) is not None:
        session.answer(n, GOOD)
    return [r for r in db.answer_records(study) if r.reader == reader]


def test_orders_are_reproducible_per_reader_and_differ_between_readers(tmp_path):
    orders = []
    for run in range(2):
        with StudyDatabase(tmp_path / f"db{run}.sqlite") as db:
            _create(db, tmp_path / f"pool{run}", n_real=10, n_synthetic=10, readers=["ana", "ben", "cy"])
            orders.append({r: db.session("pilot", r).order() for r in ("ana", "ben", "cy")})
    assert orders[0] == orders[1]  # same study seed → same orders
    ana, ben, cy = orders[0]["ana"], orders[0]["ben"], orders[0]["cy"]
    assert len({tuple(ana), tuple(ben), tuple(cy)}) == 3
    assert ana == reader_order(7, "ana", range(1, 21))
    assert reader_order(8, "ana", range(1, 21)) != ana  # and the study seed matters


def test_added_reader_gets_the_seeded_order(db, tmp_path):
    _create(db, tmp_path)
    db.add_reader("pilot", "cy")
    assert db.session("pilot", "cy").order() == reader_order(7, "cy", range(1, 9))
    with pytest.raises(StudyError, match="already has a reader named 'cy'"):
        db.add_reader("pilot", "cy")


def test_resume_at_first_unanswered_case_after_reopening(tmp_path):
    path = tmp_path / "studies.sqlite"
    with StudyDatabase(path) as db:
        _create(db, tmp_path)
        session = db.session("pilot", "ana")
        order = session.order()
        for n in order[:3]:
            assert session.next_case() == n
            session.answer(n, GOOD)
    with StudyDatabase(path) as db:
        session = db.session("pilot", "ana")
        assert session.next_case() == order[3]
        assert session.progress().answered == 3
        assert db.session("pilot", "ben").next_case() == db.session("pilot", "ben").order()[0]


def test_skip_for_later_returns_the_case_at_the_end(db, tmp_path):
    _create(db, tmp_path)
    session = db.session("pilot", "ana")
    order = session.order()
    session.skip(order[0])
    session.skip(order[1])
    assert session.next_case() == order[2]
    assert [e.case_number for e in session.queue()] == order[2:] + order[:2]
    assert [e.status for e in session.queue()][-2:] == ["skipped", "skipped"]
    assert session.progress().skipped == 2
    for n in order[2:]:
        session.answer(n, GOOD)
    assert session.next_case() == order[0]  # skipped cases come back in the order they were skipped
    session.answer(order[0], GOOD)
    session.answer(order[1], GOOD)
    assert session.next_case() is None
    assert session.progress().done
    with pytest.raises(StudyError, match="already answered"):
        session.skip(order[0])
    skips = {r.case_number: r.skips for r in db.answer_records("pilot")}
    assert skips[order[0]] == 1
    assert skips[order[2]] == 0


def test_a_closed_database_says_closed_not_damaged(tmp_path):
    db = StudyDatabase(tmp_path / "studies.sqlite")
    _create(db, tmp_path)
    session = db.session("pilot", "ana")
    first = session.order()[0]
    db.close()
    with pytest.raises(StudyError, match="was closed; open it again") as caught:
        session.answer(first, GOOD)
    assert "damaged" not in str(caught.value)
    with pytest.raises(StudyError, match="was closed"):
        db.list_studies()
    with StudyDatabase(tmp_path / "studies.sqlite") as reopened:
        assert reopened.session("pilot", "ana").progress().answered == 0


def test_changes_refused_unless_allowed(db, tmp_path):
    _create(db, tmp_path)
    session = db.session("pilot", "ana")
    n = session.next_case()
    session.answer(n, GOOD)
    with pytest.raises(StudyError, match="does not allow changing answers"):
        session.answer(n, {**GOOD, "confidence": 1})
    assert session.answer_of(n).values["confidence"] == 4
    assert len(session.history(n)) == 1


def test_changes_kept_in_history_when_allowed(db, tmp_path):
    _create(db, tmp_path, allow_changes=True)
    session = db.session("pilot", "ana")
    n = session.next_case()
    first = session.answer(n, GOOD)
    second = session.answer(n, {**GOOD, "confidence": 2, "notes": "  vessels look wrong "})
    assert (first.revision, second.revision) == (1, 2)
    assert second.answered_at == first.answered_at
    assert second.updated_at >= first.updated_at
    history = session.history(n)
    assert [(h.action, h.revision, h.values["confidence"]) for h in history] == [("answer", 1, 4), ("change", 2, 2)]
    assert history[1].values["notes"] == "vessels look wrong"
    assert all(h.recorded_at for h in history)
    (record,) = db.answer_records("pilot")
    assert record.values["confidence"] == 2
    assert record.revision == 2
    assert [h.action for h in db.history_records("pilot")] == ["answer", "change"]


def test_answers_are_validated(db, tmp_path):
    _create(db, tmp_path)
    session = db.session("pilot", "ana")
    n = session.next_case()
    with pytest.raises(StudyError, match=r"required answer missing: Overall realism \(realism\)"):
        session.answer(n, {"confidence": 4, "plausibility": 4, "consistency": 3})
    with pytest.raises(StudyError, match="not a whole number from 1 to 5"):
        session.answer(n, {**GOOD, "realism": 6})
    with pytest.raises(StudyError, match="not a whole number"):
        session.answer(n, {**GOOD, "realism": "good"})
    with pytest.raises(StudyError, match="unknown question colour"):
        session.answer(n, {**GOOD, "colour": 3})
    with pytest.raises(StudyError, match="no case 99"):
        session.answer(99, GOOD)
    assert session.next_case() == n
    assert session.progress().answered == 0
    from engine.study import missing_required

    assert missing_required(session.questions, {"confidence": 4, "realism": 9}) == [
        "realism",
        "plausibility",
        "consistency",
    ]
    assert missing_required(session.questions, GOOD) == []
    saved = session.answer(n, {"confidence": "5", "realism": "2", "plausibility": 2, "consistency": 1, "notes": ""})
    assert saved.values == {"confidence": 5, "realism": 2, "plausibility": 2, "consistency": 1}


def test_time_per_case_sums_visits_including_before_a_skip(db, tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(reader_session_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    _create(db, tmp_path)
    session = db.session("pilot", "ana")
    a, b = session.order()[:2]
    session.open_case(a)
    clock[0] += 12.0
    session.skip(a)
    session.open_case(b)
    clock[0] += 5.0
    assert session.answer(b, GOOD).seconds == pytest.approx(5.0)
    session.open_case(a)
    session.open_case(a)  # reopening the same case keeps its clock running
    clock[0] += 8.0
    assert session.answer(a, GOOD).seconds == pytest.approx(20.0)
    # a visit abandoned for another case is not counted; an explicit time is used as is
    c, d = session.order()[2:4]
    session.open_case(c)
    clock[0] += 100.0
    session.open_case(d)
    clock[0] += 3.0
    assert session.answer(d, GOOD).seconds == pytest.approx(3.0)
    assert session.answer(c, GOOD, seconds=7.5).seconds == pytest.approx(7.5)
    # a visit left open for hours is unknown time, not hours of reading
    e = session.next_case()
    session.open_case(e)
    clock[0] += 2 * reader_session_module.STALE_VISIT_S
    assert session.answer(e, GOOD).seconds is None
    with pytest.raises(StudyError, match="non-negative"):
        session.answer(session.next_case(), GOOD, seconds=-1)


def test_database_is_wal_and_versioned(db, tmp_path):
    _create(db, tmp_path)
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == database_module.SCHEMA_VERSION
    finally:
        conn.close()


def _schema_sql(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        conn.close()


def test_a_schema_1_file_written_without_brainsynth_opens_and_resumes(db, tmp_path):
    """The on-disk format: the frozen version-1 layout is what a new file gets, and a file made from
    that text alone (no BrainSynth code) opens, resumes where its reader stopped and exports."""
    import json

    from engine.specs import get_preset
    from engine.study.display import DisplaySettings

    frozen = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(frozen)
    conn.executescript((ROOT / "tests" / "data" / "study_schema_v1.sql").read_text(encoding="utf-8"))
    display = json.dumps(DisplaySettings.from_spec(get_preset("tiny")).to_dict())
    questions = json.dumps([q.to_dict() for q in DEFAULT_QUESTIONS])
    t = "2025-01-31T14:02:11.123+01:00"
    conn.executescript(
        f"""
        INSERT INTO meta VALUES ('format', 'brainsynth-reader-studies'), ('created_at', '{t}');
        INSERT INTO studies VALUES (1, 'old', '{t}', 7, 0, '{display}', '{questions}', '0.1');
        INSERT INTO cases VALUES (1, 1, 2, 'real', '/gone/r.nii.gz', '{"a" * 64}'),
                                 (2, 1, 1, 'synthetic', '/gone/s.nii.gz', '{"b" * 64}');
        INSERT INTO readers VALUES (1, 1, 'ana', '{t}');
        INSERT INTO reader_cases VALUES (1, 1, 1, 1, 0), (1, 2, 2, 2, 0);
        INSERT INTO answers VALUES (1, 1, '{json.dumps(GOOD)}', 12.5, '{t}', '{t}', 1);
        INSERT INTO answer_history VALUES (1, 1, 1, 1, 'answer', '{json.dumps(GOOD)}', 12.5, '{t}');
        PRAGMA user_version = 1;
        """
    )
    conn.close()
    assert _schema_sql(frozen) == _schema_sql(db.path)  # a new file is laid out exactly so

    with StudyDatabase(frozen) as old:
        session = old.session("old", "ana")
        assert session.order() == [2, 1]
        assert session.answer_of(2).values == GOOD
        assert session.answer_of(2).seconds == 12.5
        assert session.next_case() == 1
        session.answer(1, GOOD)
        records = old.answer_records("old")
        assert [(r.case_number, r.truth, r.position) for r in records] == [(1, "synthetic", 2), (2, "real", 1)]
        assert [h.action for h in old.history_records("old")] == ["answer", "answer"]
        assert old.check_cases("old") == ["case 1: /gone/s.nii.gz is missing", "case 2: /gone/r.nii.gz is missing"]


def test_default_database_path(monkeypatch, tmp_path):
    monkeypatch.setenv(database_module.DB_ENV_VAR, str(tmp_path / "mine.sqlite"))
    assert database_module.default_database_path() == tmp_path / "mine.sqlite"
    monkeypatch.delenv(database_module.DB_ENV_VAR)
    import platformdirs

    path = database_module.default_database_path()
    assert path.parent == Path(platformdirs.user_data_dir("brainsynth", appauthor=False))
    assert path.name == "reader-studies.sqlite"


# --------------------------------------------------------------------------- crash safety

_CHILD = r"""
import sys, time
from engine.study.organiser import StudyDatabase

db = StudyDatabase(sys.argv[1])
session = db.session(sys.argv[2], sys.argv[3])
stop_after = int(sys.argv[4])
count = 0
while (n := session.next_case()) is not None:
    session.open_case(n)
    session.answer(n, {"confidence": 1 + n % 5, "realism": 3, "plausibility": 3, "consistency": 3})
    print(n, flush=True)  # only after the answer is committed
    count += 1
    if count == stop_after:
        print("idle", flush=True)
        time.sleep(120)
print("done", flush=True)
time.sleep(120)
"""


def _run_and_kill(db_path: Path, *, stop_after: int, kill_after_lines: int) -> list[int]:
    """Answer cases in a child process; SIGKILL it; return the case numbers it reported as saved."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path), "pilot", "ana", str(stop_after)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reported: list[int] = []
    try:
        while True:
            line = child.stdout.readline().strip()
            if line == "idle" or not line:
                break
            reported.append(int(line))
            if len(reported) == kill_after_lines:
                break
        assert reported, f"the child saved nothing: {child.stderr.read() if child.poll() is not None else ''}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    return reported


def test_sigkill_while_idle_loses_nothing(tmp_path):
    path = tmp_path / "studies.sqlite"
    with StudyDatabase(path) as db:
        _create(db, tmp_path)
        order = db.session("pilot", "ana").order()
    reported = _run_and_kill(path, stop_after=3, kill_after_lines=-1)
    assert reported == order[:3]
    with StudyDatabase(path) as db:
        session = db.session("pilot", "ana")
        assert [r.case_number for r in db.answer_records("pilot")] == sorted(order[:3])
        assert session.next_case() == order[3]
        assert session.answer_of(order[0]).values["confidence"] == 1 + order[0] % 5


def test_sigkill_mid_study_keeps_every_committed_answer(tmp_path):
    path = tmp_path / "studies.sqlite"
    with StudyDatabase(path) as db:
        _create(db, tmp_path, n_real=200, n_synthetic=200)
        order = db.session("pilot", "ana").order()
    reported = _run_and_kill(path, stop_after=-1, kill_after_lines=5)  # killed while still answering
    with StudyDatabase(path) as db:  # opens cleanly: quick_check passes, WAL replayed
        answered = {r.case_number for r in db.answer_records("pilot")}
        assert set(reported) <= answered
        m = len(answered)
        assert 5 <= m < 400
        assert answered == set(order[:m])  # exactly a prefix: no gaps, no half-written answer
        assert db.session("pilot", "ana").next_case() == order[m]
        assert len(db.history_records("pilot")) == m


# ----------------------------------------------------------------------------- bad inputs


def test_bad_study_setups_are_refused(db, tmp_path):
    real = dummy_files(tmp_path / "real", "r", 2)
    synthetic = dummy_files(tmp_path / "synthetic", "s", 2)
    (tmp_path / "empty").mkdir()

    def create(**kwargs):
        args = {"name": "s", "real": real, "synthetic": synthetic, "readers": ["ana"], "preset": "tiny"}
        return db.create_study(**{**args, **kwargs}, validate=False)

    cases = [
        ({"real": []}, "the real pool is empty"),
        ({"synthetic": [tmp_path / "empty"]}, r"the synthetic pool is empty: no scans found in .*empty"),
        ({"readers": []}, "at least one reader"),
        ({"readers": ["ana", "ana"]}, "'ana' is listed twice"),
        ({"readers": ["ana", " "]}, "must not be empty"),
        ({"name": " "}, "needs a name"),
        ({"synthetic": [*synthetic, real[0]]}, "in both the real and the synthetic pool"),
        (
            {"real": [*real, tmp_path / "gone.nii.gz"]},
            r"1 of 5 volumes cannot be used: real gone.nii.gz: .* does not exist",
        ),
        ({"preset": "huge"}, "unknown preset 'huge'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BrainSynthError, match=message):
            create(**kwargs)
    copy = tmp_path / "real" / "copy.nii.gz"
    copy.write_bytes(real[0].read_bytes())
    with pytest.raises(StudyError, match="same content as"):
        create(real=[*real, copy])
    create()
    with pytest.raises(StudyError, match="a study named 's' already exists"):
        create()
    assert [s.name for s in db.list_studies()] == ["s"]


def test_unknown_study_and_reader(db, tmp_path):
    with pytest.raises(StudyError, match=r"no study named 'x'.*there are no studies yet"):
        db.session("x", "ana")
    _create(db, tmp_path)
    with pytest.raises(StudyError, match=r"no study named 'x'.*studies here: pilot"):
        db.study("x")
    with pytest.raises(StudyError, match=r"'zoe' is not a reader of study 'pilot' \(its readers: ana, ben\)"):
        db.session("pilot", "zoe")


def test_corrupt_foreign_and_newer_databases_are_refused(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(StudyError, match="not a BrainSynth study database or is damaged"):
        StudyDatabase(garbage)

    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StudyError, match="an SQLite file but not a BrainSynth study database"):
        StudyDatabase(foreign)

    newer = tmp_path / "newer.sqlite"
    StudyDatabase(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {database_module.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StudyError, match="written by a newer BrainSynth"):
        StudyDatabase(newer)

    with pytest.raises(StudyError, match="is a folder"):
        StudyDatabase(tmp_path)


def test_truncated_database_is_refused(tmp_path):
    path = tmp_path / "studies.sqlite"
    with StudyDatabase(path) as db:
        _create(db, tmp_path, n_real=30, n_synthetic=30)
    # checkpoint the WAL into the main file, then damage the main file's pages
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096
    path.write_bytes(bytes(data))
    with pytest.raises(StudyError, match="damaged"):
        StudyDatabase(path).study("pilot")
