"""Study packs: one file per reader, rated elsewhere, merged back; nothing in them gives the truth away.

Real parts throughout: real SQLite files, real NIfTI pools through the display pipeline, the
real merge; the crash test kills a real child process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.study import StudyDatabase, StudyError
from engine.study.display import display_array
from engine.study.merge import merge_pack, pack_records, verify_pack
from engine.study.pack import PACK_FORMAT, make_pack, open_pack
from engine.study.report import markdown_report
from engine.study.results import study_results
from tests.helpers_study import make_pools
from training_cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pack_pools"))


@pytest.fixture(autouse=True)
def _no_user_database(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env-default.sqlite"))  # never the real user dir


def _create(path: Path, pools, *, allow_changes: bool = False, readers=("ana", "ben")) -> StudyDatabase:
    real, synthetic = pools
    db = StudyDatabase(path)
    db.create_study(
        name="pilot", real=[real], synthetic=[synthetic], readers=list(readers), seed=5, allow_changes=allow_changes
    )
    return db


def _values(number: int, reader: str, *, version: int = 0) -> dict:
    """A different, reproducible answer for every case, reader and version."""
    k = number + 2 * len(reader) + version
    return {"confidence": 1 + k % 5, "realism": 1 + (k + 1) % 5, "plausibility": 1 + (k + 3) % 5, "consistency": 3}


def _rate(session, *, skip_first: bool = True, limit: int | None = None) -> list[int]:
    """Rate like a reader: skip the first case once, then answer in order with fixed times."""
    done = []
    skipped = False
    while (number := session.next_case()) is not None and (limit is None or len(done) < limit):
        session.open_case(number)
        if skip_first and not skipped:
            session.skip(number, seconds=1.5)
            skipped = True
            continue
        session.answer(number, _values(number, session.reader), seconds=2.0 + number)
        done.append(number)
    return done


def _comparable(records):
    return [dataclasses.replace(r, answered_at="", updated_at="") for r in records]


def _report_text(db, study: str) -> str:
    return re.sub(r"Generated [^.]*\.", "Generated", markdown_report(study_results(db, study)))


def test_pack_answer_merge_report_equals_answering_directly(tmp_path, pools):
    with (
        _create(tmp_path / "organiser.sqlite", pools) as via_packs,
        _create(tmp_path / "direct.sqlite", pools) as direct,
    ):
        for reader in ("ana", "ben"):
            pack_path = make_pack(via_packs, "pilot", reader, tmp_path / f"{reader}.bsstudy").path
            with open_pack(pack_path) as session:
                assert session.order() == via_packs.session("pilot", reader).order()
                assert session.load_case(session.next_case()).data.shape == tuple(session.study.display.grid.shape)
                _rate(session)
            report = merge_pack(via_packs, "pilot", pack_path)
            assert (report.new_answers, report.changed_answers, report.answered) == (6, 0, 6)
            assert report.new_saves == 6
            _rate(direct.session("pilot", reader))
        assert _comparable(via_packs.answer_records("pilot")) == _comparable(direct.answer_records("pilot"))
        assert [dataclasses.replace(h, recorded_at="") for h in via_packs.history_records("pilot")] == [
            dataclasses.replace(h, recorded_at="") for h in direct.history_records("pilot")
        ]
        assert _report_text(via_packs, "pilot") == _report_text(direct, "pilot")
        assert via_packs.progress("pilot") == direct.progress("pilot")


def test_pack_cases_are_the_display_pipeline_output(tmp_path, pools):
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        pack_path = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
        with db.read() as conn:
            sources = dict(conn.execute("SELECT number, source_path FROM cases").fetchall())
        settings = db.study("pilot").display
    with open_pack(pack_path) as session:
        for number, source in sources.items():
            case = session.load_case(number)
            np.testing.assert_array_equal(case.data, display_array(source, settings))
            assert case.data.dtype == np.float32
            assert not case.data.flags.writeable


def test_remerge_adds_nothing_and_more_answers_add_only_new_ones(tmp_path, pools):
    with _create(tmp_path / "organiser.sqlite", pools, allow_changes=True) as db:
        pack_path = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
        with open_pack(pack_path) as session:
            first = _rate(session, skip_first=False, limit=2)
        assert merge_pack(db, "pilot", pack_path).new_answers == 2
        again = merge_pack(db, "pilot", pack_path)
        assert again.nothing_new
        assert "nothing new" in again.summary()
        assert len(db.history_records("pilot")) == 2
        with open_pack(pack_path) as session:  # more answers, and a change of the first one
            more = _rate(session, skip_first=False, limit=2)
            session.open_case(first[0])
            session.answer(first[0], _values(first[0], "ana", version=1), seconds=4.0)
        report = merge_pack(db, "pilot", pack_path)
        assert (report.new_answers, report.changed_answers, report.new_saves) == (2, 1, 3)
        records = {r.case_number: r for r in db.answer_records("pilot")}
        assert set(records) == set(first + more)
        assert records[first[0]].values == _values(first[0], "ana", version=1)  # the later answer wins
        assert records[first[0]].revision == 2
        versions = [(h.revision, h.action, h.values) for h in db.history_records("pilot") if h.case_number == first[0]]
        assert versions == [  # every version kept
            (1, "answer", _values(first[0], "ana")),
            (2, "change", _values(first[0], "ana", version=1)),
        ]
        assert merge_pack(db, "pilot", pack_path).nothing_new
        [record] = pack_records(db, "pilot")
        assert record.reader == "ana"
        assert record.answered == 4
        assert record.merged_at


def test_a_second_different_answer_is_refused_when_changes_are_not_allowed(tmp_path, pools):
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        first = make_pack(db, "pilot", "ana", tmp_path / "a1.bsstudy").path
        second = make_pack(db, "pilot", "ana", tmp_path / "a2.bsstudy").path  # e.g. a replacement laptop
        for path, version in ((first, 0), (second, 1)):
            with open_pack(path) as session:
                number = session.next_case()
                session.answer(number, _values(number, "ana", version=version))
        merge_pack(db, "pilot", first)
        with pytest.raises(StudyError, match="does not allow changing answers; nothing was imported"):
            merge_pack(db, "pilot", second)
        assert len(db.history_records("pilot")) == 1


def _edit(path: Path, sql: str, params=()) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def test_tampered_and_foreign_packs_are_refused(tmp_path, pools):
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        good = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
        with open_pack(good) as session:
            _rate(session, skip_first=False, limit=3)

        def refused(path: Path, match: str) -> None:
            with pytest.raises(StudyError, match=match):
                merge_pack(db, "pilot", path)

        def variant(name: str) -> Path:
            copy = tmp_path / f"{name}.bsstudy"
            shutil.copyfile(good, copy)
            return copy

        # A flipped byte in a case image.
        with sqlite3.connect(good) as conn:
            blob = bytearray(conn.execute("SELECT data FROM cases ORDER BY number LIMIT 1").fetchone()[0])
        blob[len(blob) // 2] ^= 0x01
        path = variant("image")
        _edit(path, "UPDATE cases SET data = ? WHERE number = (SELECT MIN(number) FROM cases)", (bytes(blob),))
        refused(path, "the image of case .* does not match")
        # An answer edited with a generic SQLite tool (the current answer and its save alike).
        path = variant("answer")
        _edit(
            path,
            "UPDATE answer_history SET values_json = replace(values_json, '\"consistency\": 3', '\"consistency\": 5')",
        )
        _edit(path, "UPDATE answers SET values_json = replace(values_json, '\"consistency\": 3', '\"consistency\": 5')")
        refused(path, "was changed or a save is gone")
        # A save removed (the current answer stays).
        path = variant("removed")
        _edit(path, "DELETE FROM answer_history WHERE id = (SELECT MIN(id) FROM answer_history)")
        refused(path, "refused")
        # The reader renamed, the order changed, the questions changed.
        path = variant("reader")
        _edit(path, "UPDATE meta SET value = 'ben' WHERE key = 'reader'")
        _edit(path, "UPDATE readers SET name = 'ben'")
        refused(path, "issued for reader 'ana', but names 'ben'")
        path = variant("order")
        _edit(path, "UPDATE reader_cases SET position = 100 - position")
        refused(path, "seal does not match")
        path = variant("questions")
        _edit(path, "UPDATE meta SET value = replace(value, 'realism', 'realness') WHERE key = 'questions_json'")
        refused(path, "seal does not match")
        # Not a pack at all, and a pack of a study of the same name in another database.
        refused(db.path, "not a BrainSynth study pack")
        with sqlite3.connect(db.path) as conn:  # and refused untouched: still the organiser's WAL file
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with _create(tmp_path / "elsewhere.sqlite", pools) as other:
            foreign = make_pack(other, "pilot", "ana", tmp_path / "foreign.bsstudy").path
        refused(foreign, "from another study database")
        assert db.answer_records("pilot") == []  # nothing was imported from any of them
        assert merge_pack(db, "pilot", good).new_answers == 3


def test_any_flipped_byte_is_refused_or_changes_nothing(tmp_path, pools):
    """Flip one bit at a spread of positions over the whole file: every outcome is a clean refusal
    or, where the byte was unused space, exactly the import of the intact pack."""
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        good = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
        with open_pack(good) as session:
            _rate(session, skip_first=True, limit=2)
        expected = verify_pack(db, "pilot", good)
        raw = good.read_bytes()
        refusals: list[str] = []
        positions = sorted(set(range(0, len(raw), max(1, len(raw) // 150))) | {100, 4096 + 8, len(raw) - 1})
        for position in positions:
            flipped = bytearray(raw)
            flipped[position] ^= 0x10
            path = tmp_path / "flipped.bsstudy"
            path.write_bytes(bytes(flipped))
            try:
                got = verify_pack(db, "pilot", path)
            except StudyError as exc:
                refusals.append(str(exc))
                continue
            assert dataclasses.replace(got, path=good) == expected, position
        # Most of a small SQLite file is unused page space; the flips that land on content are refused.
        assert len(refusals) >= 10
        assert all("\n" not in message for message in refusals)


def test_nothing_in_a_pack_reveals_the_truth(tmp_path, pools):
    real, synthetic = pools
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        pack_path = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
        with db.read() as conn:
            cases = conn.execute("SELECT number, truth, source_path, source_sha256 FROM cases").fetchall()
            secret_rows = conn.execute("SELECT value FROM meta WHERE key LIKE 'pack_secret:%'").fetchall()
        questions = json.dumps([q.to_dict() for q in db.study("pilot").questions], sort_keys=True)
    with open_pack(pack_path) as session:
        _rate(session, limit=2)  # answered packs too
    data = pack_path.read_bytes()
    forbidden = [b"truth", b"source", b".nii", b"sub-", b"T1w", b"seed", b"sampler", b"checkpoint", b"provenance"]
    forbidden += [str(real).encode(), str(synthetic).encode(), str(tmp_path).encode(), b"ben"]
    for _number, _truth, source, digest in cases:
        forbidden += [Path(source).name.encode(), Path(source).name.split(".")[0].encode(), digest.encode()]
        forbidden.append(hashlib.sha256(Path(source).read_bytes()).digest())
    forbidden += [bytes.fromhex(v) for (v,) in secret_rows] + [v.encode() for (v,) in secret_rows]
    for needle in forbidden:
        assert needle not in data, needle
    # "real" and "synthetic" appear only where the questions ask "real or synthetic?" (and in the
    # answers' key "realism", the same in every answer).
    span = data.find(questions.encode())
    assert span >= 0
    outside_keys = data.replace(b'"realism"', b'"xxxxxxx"')
    for word in (b"real", b"synthetic", b"Real", b"Synthetic"):
        for match in re.finditer(re.escape(word), outside_keys):
            assert span <= match.start() < span + len(questions), (word, match.start())
    # No table or column of the pack can hold a truth or a path.
    with sqlite3.connect(pack_path) as conn:
        columns = {
            (t, c[1])
            for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for c in conn.execute(f"PRAGMA table_info({t})")
        }
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert not [c for c in columns if re.search("truth|source|path|file|label|kind|seed", c[1])]
    assert meta["format"] == PACK_FORMAT
    assert "seed" not in json.loads(meta["display_json"])


def test_the_pack_layout_is_frozen(tmp_path, pools):
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        pack_path = make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
    frozen = tmp_path / "frozen.sqlite"
    with sqlite3.connect(frozen) as conn:
        conn.executescript((ROOT / "tests" / "data" / "study_pack_schema_v1.sql").read_text(encoding="utf-8"))

    def schema(path: Path) -> list[str]:
        with sqlite3.connect(path) as conn:
            return sorted(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))

    assert schema(pack_path) == schema(frozen)
    with sqlite3.connect(pack_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file between answers
    assert not list(tmp_path.glob("ana.bsstudy-*"))


def test_a_missing_or_foreign_file_is_not_a_pack(tmp_path, pools):
    with pytest.raises(StudyError, match="does not exist"):
        open_pack(tmp_path / "nope.bsstudy")
    assert not (tmp_path / "nope.bsstudy").exists()
    with _create(tmp_path / "organiser.sqlite", pools) as db:
        path = db.path
    with pytest.raises(StudyError, match="not a BrainSynth study pack"):
        open_pack(path)
    with sqlite3.connect(path) as conn:  # refused untouched: still the organiser's WAL file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with StudyDatabase(path) as db, pytest.raises(StudyError, match="not a BrainSynth study database"):
        StudyDatabase(make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path)
    with sqlite3.connect(tmp_path / "ana.bsstudy") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


# --------------------------------------------------------------------------- crash safety

_CHILD = r"""
import sys, time
from engine.study.pack import open_pack

session = open_pack(sys.argv[1])
while (n := session.next_case()) is not None:
    session.open_case(n)
    session.answer(n, {"confidence": 1 + n % 5, "realism": 3, "plausibility": 3, "consistency": 3})
    print(n, flush=True)  # only after the answer is committed
print("done", flush=True)
time.sleep(120)
"""


def test_sigkill_while_answering_in_a_pack_loses_nothing(tmp_path):
    from tests.helpers_study import dummy_files

    # 300 cases answered as fast as the child can: the kill lands mid-answer.
    with StudyDatabase(tmp_path / "organiser.sqlite") as db:
        real = dummy_files(tmp_path / "r", "r", 150)
        synthetic = dummy_files(tmp_path / "s", "s", 150)
        db.create_study(name="pilot", real=real, synthetic=synthetic, readers=["ana"], preset="tiny", validate=False)
        order = db.session("pilot", "ana").order()
        pack_path = _pack_of_dummies(db, tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(pack_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    reported: list[int] = []
    try:
        while len(reported) < 5:
            line = child.stdout.readline().strip()
            assert line, child.stderr.read() if child.poll() is not None else "no output"
            assert line != "done", "the child answered everything before the kill"
            reported.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    with open_pack(pack_path) as session:  # opens cleanly; an interrupted save is rolled back
        answered = [h.case_number for h in session.history()]
        assert set(reported) <= set(answered)
        m = len(answered)
        assert 5 <= m < 300
        assert answered == order[:m]  # exactly a prefix: no gap, no half-written answer
        assert session.next_case() == order[m]
    with StudyDatabase(tmp_path / "organiser.sqlite") as db:
        assert merge_pack(db, "pilot", pack_path).new_answers == m  # and its seals still hold


def _pack_of_dummies(db: StudyDatabase, tmp_path: Path) -> Path:
    """A pack of a study whose case files are not images (storage tests): blank cases of the grid."""
    import engine.study.pack as pack_module

    real_display = pack_module.display_array
    shape = tuple(db.study("pilot").display.grid.shape)
    pack_module.display_array = lambda path, settings: np.zeros(shape, np.float32)
    try:
        return make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy").path
    finally:
        pack_module.display_array = real_display


# ------------------------------------------------------------------------------------ CLI


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_pack_rate_merge_status(tmp_path, pools, capsys):
    db_path = tmp_path / "organiser.sqlite"
    _create(db_path, pools).close()
    pack = str(tmp_path / "ana.bsstudy")
    code, out, err = run(capsys, "study", "pack", "pilot", "--reader", "ana", "--out", pack, "--db", str(db_path))
    assert code == 0, err
    assert "6 cases" in out
    code, out, err = run(capsys, "study", "next", "--pack", pack, "--volume-out", str(tmp_path / "case.nii.gz"))
    assert code == 0, err
    assert out.startswith("case ")
    assert (tmp_path / "case.nii.gz").is_file()
    ratings = ["--confidence", "2", "--realism", "3", "--plausibility", "4", "--consistency", "5"]
    code, out, err = run(capsys, "study", "answer", "--pack", pack, *ratings)
    assert code == 0, err
    assert "saved" in out
    code, out, err = run(capsys, "study", "skip", "--pack", pack)
    assert code == 0, err
    code, _out, err = run(capsys, "study", "answer", "pilot", "--reader", "ben", "--pack", pack, *ratings)
    assert code == 1
    assert "the pack of reader 'ana', not 'ben'" in err
    code, out, err = run(capsys, "study", "status", "pilot", "--db", str(db_path))
    assert "ana: 0/6 answered" in out
    assert "not merged yet" in out
    code, out, err = run(capsys, "study", "merge", "pilot", pack, pack, "--db", str(db_path))
    assert code == 0, err
    assert "1 new answer" in out
    assert "nothing new" in out
    code, out, err = run(capsys, "study", "status", "pilot", "--db", str(db_path))
    assert "ana: 1/6 answered" in out
    assert "last merged" in out
    assert "1 answered" in out
    bad = tmp_path / "bad.bsstudy"
    bad.write_bytes(b"not a pack" * 100)
    code, out, err = run(capsys, "study", "merge", "pilot", str(bad), pack, "--db", str(db_path))
    assert code == 1
    assert "1 of 2 packs refused" in err
    assert "Traceback" not in err
    code, _out, err = run(capsys, "study", "next")
    assert code == 1
    assert "--pack" in err


def test_cli_rate_in_a_pack(tmp_path, pools, capsys, monkeypatch):
    db_path = tmp_path / "organiser.sqlite"
    _create(db_path, pools).close()
    pack = str(tmp_path / "ben.bsstudy")
    assert run(capsys, "study", "pack", "pilot", "--reader", "ben", "--out", pack, "--db", str(db_path))[0] == 0
    answers = iter(["4", "3", "2", "5", "", "q"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    code, out, err = run(capsys, "study", "rate", "--pack", pack)
    assert code == 0, err
    assert "saved" in out
    with open_pack(pack) as session:
        assert session.progress().answered == 1


def test_bad_pack_requests_are_one_clear_error(tmp_path, pools):
    from engine.errors import ExportError

    with _create(tmp_path / "organiser.sqlite", pools) as db:
        with pytest.raises(StudyError, match="'cleo' is not a reader of study 'pilot'"):
            make_pack(db, "pilot", "cleo", tmp_path / "cleo.bsstudy")
        with pytest.raises(StudyError, match="no study named 'other'"):
            make_pack(db, "other", "ana", tmp_path / "ana.bsstudy")
        with pytest.raises(StudyError, match="is a folder"):
            make_pack(db, "pilot", "ana", tmp_path)
        make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy")
        with pytest.raises(ExportError, match="exists"):
            make_pack(db, "pilot", "ana", tmp_path / "ana.bsstudy")
        assert not (tmp_path / "cleo.bsstudy").exists()
        assert sorted(p.name for p in tmp_path.glob("*.bsstudy*")) == ["ana.bsstudy"]  # no temporaries left
        real, _ = pools
        moved = next(real.iterdir())
        backup = tmp_path / "moved.nii.gz"
        shutil.move(moved, backup)
        try:
            with pytest.raises(StudyError, match="is missing; the pack was not written"):
                make_pack(db, "pilot", "ben", tmp_path / "ben.bsstudy")
        finally:
            shutil.move(backup, moved)
        assert not (tmp_path / "ben.bsstudy").exists()


def test_a_read_only_pack_opens_and_says_why_it_cannot_save(tmp_path, pools):
    from tests.test_study_hardening import _ReadOnlyFolder

    folder = _ReadOnlyFolder(tmp_path)
    try:
        with _create(tmp_path / "organiser.sqlite", pools) as db:
            path = make_pack(db, "pilot", "ana", folder.path / "ana.bsstudy").path
        folder.make_read_only()
        with open_pack(path) as session:
            number = session.next_case()
            assert session.load_case(number).number == number
            with pytest.raises(StudyError, match="copy it to a folder you can write to"):
                session.answer(number, _values(number, "ana"))
    finally:
        folder.cleanup()
