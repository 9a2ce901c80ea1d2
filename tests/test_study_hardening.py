"""The study database when its file is read-only, empty, damaged or in use while copied."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from engine.study import StudyDatabase
from engine.study.errors import StudyError
from tests.helpers_study import make_pools
from training_cli.main import main


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pools"))


@pytest.fixture(autouse=True)
def _no_user_database(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env-default.sqlite"))  # never the real user dir


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _create(capsys, db: Path, pools) -> None:
    real, synthetic = pools
    code, _, err = run(
        capsys,
        "study", "create", "--name", "pilot", "--real", str(real), "--synthetic", str(synthetic),
        "--readers", "ana", "--seed", "3", "--db", str(db),
    )  # fmt: skip
    assert code == 0, err


def _answer_current(capsys, db: Path) -> None:
    run(capsys, "study", "next", "pilot", "--reader", "ana", "--db", str(db))
    code, _out, err = run(
        capsys,
        "study", "answer", "pilot", "--reader", "ana", "--db", str(db),
        "--confidence", "2", "--realism", "3", "--plausibility", "4", "--consistency", "5",
    )  # fmt: skip
    assert code == 0, err


class _ReadOnlyFolder:
    """A folder that really cannot be written: chmod for ordinary users; for root (who
    ignores permission bits) a small tmpfs remounted read-only, where that is allowed."""

    def __init__(self, root: Path) -> None:
        self.path = root / "ro"
        self.path.mkdir()
        self._mounted = False
        if os.geteuid() == 0:
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.path)]).returncode:
                pytest.skip("running as root without permission to mount a read-only file system")
            self._mounted = True

    def make_read_only(self) -> None:
        if self._mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        else:
            for p in self.path.iterdir():
                p.chmod(0o444)
            self.path.chmod(0o555)

    def cleanup(self) -> None:
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
        else:
            self.path.chmod(0o755)
            for p in self.path.iterdir():
                p.chmod(0o644)


@pytest.fixture
def read_only_folder(tmp_path):
    folder = _ReadOnlyFolder(tmp_path)
    yield folder
    folder.cleanup()


def test_a_read_only_database_can_be_read_but_not_changed(capsys, pools, tmp_path, read_only_folder):
    db = read_only_folder.path / "studies.sqlite"
    _create(capsys, db, pools)
    _answer_current(capsys, db)
    read_only_folder.make_read_only()

    code, out, err = run(capsys, "study", "list", "--db", str(db))
    assert code == 0, err
    assert out.startswith("pilot: 6 cases")
    assert "ana 1/6" in out
    code, out, err = run(capsys, "study", "status", "pilot", "--db", str(db))
    assert code == 0, err
    assert out.strip().startswith("ana: 1/6 answered"), err
    code, out, err = run(capsys, "study", "report", "pilot", "--out", str(tmp_path / "report"), "--db", str(db))
    assert code == 0, err
    assert (tmp_path / "report" / "report.md").is_file()

    code, out, err = run(
        capsys,
        "study", "answer", "pilot", "--reader", "ana", "--db", str(db),
        "--confidence", "2", "--realism", "3", "--plausibility", "4", "--consistency", "5",
    )  # fmt: skip
    assert code == 1
    line = err.strip()
    assert line.count("\n") == 0
    assert "is read-only" in line
    assert "damaged" not in line
    assert "backup" in line


def test_a_new_database_in_a_read_only_folder_says_so(capsys, read_only_folder):
    read_only_folder.make_read_only()
    code, _, err = run(capsys, "study", "list", "--db", str(read_only_folder.path / "new.sqlite"))
    assert code == 1
    assert "folder is read-only" in err
    assert err.strip().count("\n") == 0


def test_an_empty_file_is_refused_not_made_into_a_new_database(tmp_path, capsys):
    db = tmp_path / "studies.sqlite"
    db.write_bytes(b"")
    code, _, err = run(capsys, "study", "list", "--db", str(db))
    assert code == 1
    assert "is an empty file (0 bytes)" in err
    assert "restore it from a backup" in err
    assert db.stat().st_size == 0  # left as it was: perhaps the user can still recover the real one
    with pytest.raises(StudyError, match="empty file"):
        StudyDatabase(db)


def test_a_zeroed_page_is_one_short_line(capsys, pools, tmp_path):
    db = tmp_path / "studies.sqlite"
    _create(capsys, db, pools)
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    assert pages > 4
    data = bytearray(db.read_bytes())
    for page in (2, 3):  # table pages, after the schema page
        data[(page - 1) * page_size : page * page_size] = bytes(page_size)
    db.write_bytes(bytes(data))
    code, _, err = run(capsys, "study", "list", "--db", str(db))
    line = err.strip()
    assert code == 1, line
    assert line.count("\n") == 0, line
    assert len(line) < 400, line
    assert "damaged" in line
    assert "restore it from a backup" in line


def test_backup_of_a_live_database_includes_the_answers_in_the_wal(capsys, pools, tmp_path):
    db_path = tmp_path / "studies.sqlite"
    _create(capsys, db_path, pools)
    live = StudyDatabase(db_path)  # the app, still open: its answers sit in the -wal file
    with live.read() as conn:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    session = live.session("pilot", "ana")
    for _ in range(3):
        case = session.next_case()
        session.answer(case, {"confidence": 2, "realism": 3, "plausibility": 4, "consistency": 5})
    assert Path(f"{db_path}-wal").stat().st_size > 0

    copied = tmp_path / "copied.sqlite"
    shutil.copyfile(db_path, copied)  # what the issue saw: the answers are not in the main file yet
    with sqlite3.connect(copied) as conn:
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] < 3

    backup = tmp_path / "backup.sqlite"
    code, out, err = run(capsys, "study", "backup", "pilot", "--out", str(backup), "--db", str(db_path))
    assert code == 0, err
    assert out.startswith("backed up 'pilot' from")
    assert str(backup) in out
    live.close()
    copy = StudyDatabase(backup)
    assert copy.progress("pilot")["ana"].answered == 3
    copy.close()

    code, _, err = run(capsys, "study", "backup", "pilot", "--out", str(backup), "--db", str(db_path))
    assert code == 1
    assert "already exists" in err
    code, _, err = run(capsys, "study", "backup", "nope", "--out", str(tmp_path / "b2.sqlite"), "--db", str(db_path))
    assert code == 1
    assert not (tmp_path / "b2.sqlite").exists()
