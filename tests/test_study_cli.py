"""``brainsynth-cli study`` end to end, in process: create, rate, skip, change, report, export, errors."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from engine.study import StudyDatabase
from tests.helpers_study import make_pools
from training_cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pools"))


@pytest.fixture
def db_path(tmp_path, monkeypatch):
    path = tmp_path / "studies.sqlite"
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env-default.sqlite"))  # never the real user dir
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _create(capsys, db_path, pools, *extra):
    real, synthetic = pools
    code, out, err = run(
        capsys,
        "study", "create", "--name", "pilot", "--real", str(real), "--synthetic", str(synthetic),
        "--readers", "ana, ben", "--seed", "11", "--db", str(db_path), *extra,
    )  # fmt: skip
    assert code == 0, err
    return out


def _answer(capsys, db_path, reader, *values, case=None):
    argv = ["study", "answer", "pilot", "--reader", reader, "--db", str(db_path), *values]
    if case is not None:
        argv += ["--case", str(case)]
    return run(capsys, *argv)


def _rate_all(capsys, db_path, reader, confidence_of):
    while True:
        code, out, _ = run(capsys, "study", "next", "pilot", "--reader", reader, "--db", str(db_path))
        assert code == 0
        if out.startswith("all "):
            return
        number = int(out.split()[1])
        code, out, err = _answer(
            capsys, db_path, reader,
            "--confidence", str(confidence_of(number)), "--realism", "3", "--plausibility", "4", "--consistency", "2",
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith(f"case {number} saved")


def test_full_study_from_the_command_line(capsys, db_path, pools, tmp_path):
    out = _create(capsys, db_path, pools)
    assert "created study 'pilot': 6 cases (3 real, 3 synthetic) on the tiny grid (16 x 24 x 16)" in out
    assert "readers ana, ben" in out

    code, out, _ = run(capsys, "study", "list", "--db", str(db_path))
    assert out.strip() == "pilot: 6 cases (3 real, 3 synthetic), tiny grid, ana 0/6, ben 0/6"

    # ana: next writes an anonymous volume, skips it, and rates the rest
    volume = tmp_path / "view" / "current.nii.gz"
    code, out, _ = run(
        capsys, "study", "next", "pilot", "--reader", "ana", "--db", str(db_path), "--volume-out", str(volume)
    )
    first = int(out.split()[1])
    assert out.strip() == f"case {first} (0 of 6 answered)"
    img = nib.load(volume)
    assert img.shape == (16, 24, 16)
    assert img.header["descrip"].tobytes().strip(b"\0") == b""
    assert not (volume.parent / "current.json").exists()
    code, out, _ = run(capsys, "study", "skip", "pilot", "--reader", "ana", "--db", str(db_path))
    assert out.startswith(f"case {first} skipped for later; next: case ")

    # a reader who calls everything right: synthetic = 5, real = 1 (the test peeks at the truth in the database)
    conn = sqlite3.connect(db_path)
    truth = dict(conn.execute("SELECT number, truth FROM cases").fetchall())
    conn.close()
    _rate_all(capsys, db_path, "ana", lambda n: 5 if truth[n] == "synthetic" else 1)
    _rate_all(capsys, db_path, "ben", lambda n: 3 if n % 2 else 4)

    code, out, _ = run(capsys, "study", "status", "pilot", "--db", str(db_path))
    assert out.splitlines() == ["ana: 6/6 answered (done)", "ben: 6/6 answered (done)"]
    for line in out.splitlines():
        assert "real" not in line
        assert "synthetic" not in line

    report_dir = tmp_path / "report"
    code, out, err = run(capsys, "study", "report", "pilot", "--out", str(report_dir), "--db", str(db_path))
    assert code == 0, err
    markdown = (report_dir / "report.md").read_text()
    assert "# Reader study: pilot" in markdown
    assert "| ana | 6 | 100% (6/6; 54%–100%) | 0.031 |" in markdown  # 6/6 vs chance: p = 2/64
    assert "Cohen's kappa" in markdown
    assert "Clopper–Pearson" in markdown
    assert "![ROC" in markdown
    assert "not finished" not in markdown
    assert (report_dir / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((report_dir / "answers.csv").open()))
    assert len(rows) == 12
    assert {r["truth"] for r in rows} == {"real", "synthetic"}
    assert "source" not in rows[0]
    skipped = next(r for r in rows if r["reader"] == "ana" and int(r["case"]) == first)
    assert skipped["skips"] == "1"
    payload = json.loads((report_dir / "answers.json").read_text())
    assert payload["format"] == "brainsynth-reader-study-answers"
    assert len(payload["answers"]) == 12
    assert len(payload["history"]) == 12

    code, _, err = run(capsys, "study", "report", "pilot", "--out", str(report_dir), "--db", str(db_path))
    assert code == 1
    assert "already exists" in err

    export = tmp_path / "answers_with_sources.csv"
    code, out, _ = run(capsys, "study", "export", "pilot", "--out", str(export), "--with-sources", "--db", str(db_path))
    rows = list(csv.DictReader(export.open()))
    assert len(rows) == 12
    assert all(Path(r["source"]).is_file() for r in rows)
    code, _, _ = run(capsys, "study", "export", "pilot", "--out", str(tmp_path / "a.json"), "--db", str(db_path))
    assert code == 0
    assert json.loads((tmp_path / "a.json").read_text())["study"] == "pilot"

    code, out, _ = run(capsys, "study", "check", "pilot", "--db", str(db_path))
    assert code == 0
    assert "present and unchanged" in out


def test_changes_through_the_cli(capsys, db_path, pools):
    _create(capsys, db_path, pools, "--allow-changes")
    values = ["--confidence", "2", "--realism", "3", "--plausibility", "4", "--consistency", "5"]
    code, out, _ = _answer(capsys, db_path, "ana", *values, "--notes", "sharp", case=4)
    assert code == 0
    assert out.startswith("case 4 saved")
    code, out, _ = _answer(capsys, db_path, "ana", *values[:-1], "1", "--set", "notes=blurry", case=4)
    assert code == 0
    assert out.startswith("case 4 changed (revision 2)")
    with StudyDatabase(db_path) as db:
        history = db.session("pilot", "ana").history(4)
    assert [(h.values["consistency"], h.values["notes"]) for h in history] == [(5, "sharp"), (1, "blurry")]


def test_reader_errors_are_one_clear_line(capsys, db_path, pools):
    _create(capsys, db_path, pools)
    values = ["--confidence", "2", "--realism", "3", "--plausibility", "4", "--consistency", "5"]
    cases = [
        (["study", "next", "pilot", "--reader", "zoe"], "'zoe' is not a reader of study 'pilot'"),
        (["study", "next", "nope", "--reader", "ana"], "no study named 'nope'"),
        (["study", "answer", "pilot", "--reader", "ana", "--confidence", "9"], "not a whole number from 1 to 5"),
        (["study", "answer", "pilot", "--reader", "ana", "--confidence", "2"], "required answers missing"),
        (["study", "answer", "pilot", "--reader", "ana", "--set", "oops"], "write KEY=VALUE"),
        (["study", "export", "pilot", "--out", "x.txt"], "export to a .csv or .json file"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv, "--db", str(db_path))
        assert code == 1, argv
        assert err.startswith("brainsynth-cli study: error: ")
        assert message in err
        assert err.count("\n") == 1
    code, _, _ = _answer(capsys, db_path, "ana", *values, case=2)
    assert code == 0
    code, _, err = _answer(capsys, db_path, "ana", *values, case=2)
    assert code == 1
    assert "does not allow changing answers" in err
    code, _, err = run(
        capsys, "study", "create", "--name", "x", "--real", str(pools[0]), "--synthetic", str(pools[0] / "nothing"),
        "--readers", "a", "--db", str(db_path),
    )  # fmt: skip
    assert code == 1
    assert "1 of 4 volumes cannot be used: synthetic nothing" in err
    assert "does not exist" in err
    garbage = db_path.parent / "garbage.sqlite"
    garbage.write_text("not a database " * 100)
    code, _, err = run(capsys, "study", "list", "--db", str(garbage))
    assert code == 1
    assert "not a BrainSynth study database or is damaged" in err


def test_interactive_rating_in_the_terminal(capsys, db_path, pools, monkeypatch, tmp_path):
    _create(capsys, db_path, pools)
    # first case: an invalid answer, then s(kip); second: a full answer; third: q(uit)
    answers = iter(["7", "s", "4", "3", "5", "2", "", "q"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    code, out, _ = run(
        capsys, "study", "rate", "pilot", "--reader", "ben", "--db", str(db_path), "--volume-dir", str(tmp_path / "v")
    )
    assert code == 0
    assert "not a whole number from 1 to 5" in out
    assert "skipped for later" in out
    assert "saved" in out
    assert "stopped; 1 of 6 answered" in out
    assert len(list((tmp_path / "v").glob("case_*.nii.gz"))) == 3  # the third case was shown before q
    with StudyDatabase(db_path) as db:
        session = db.session("pilot", "ben")
        (record,) = db.answer_records("pilot")
        assert record.values == {"confidence": 4, "realism": 3, "plausibility": 5, "consistency": 2}
        assert session.progress().skipped == 1


def test_report_of_an_unfinished_study_and_engine_never_loads_pyplot(capsys, db_path, pools, tmp_path):
    _create(capsys, db_path, pools)
    code, _, err = run(capsys, "study", "report", "pilot", "--out", str(tmp_path / "empty"), "--db", str(db_path))
    assert code == 0, err
    assert "No answers yet." in (tmp_path / "empty" / "report.md").read_text()
    values = ["--confidence", "5", "--realism", "3", "--plausibility", "4", "--consistency", "5"]
    _answer(capsys, db_path, "ana", *values)
    code = (
        "import sys\n"
        "from engine.study import StudyDatabase\n"
        "from engine.study.report import write_report\n"
        f"write_report(StudyDatabase({str(db_path)!r}), 'pilot', {str(tmp_path / 'partial')!r})\n"
        "bad = [m for m in sys.modules if m.startswith(('matplotlib.pyplot', 'PySide6', 'torch'))]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""
    markdown = (tmp_path / "partial" / "report.md").read_text()
    assert "The study is not finished:** ana has 5 cases left, ben has 6 cases left" in markdown
