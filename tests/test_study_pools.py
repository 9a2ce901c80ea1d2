"""Study pools: a synthetic export in the real pool is refused (or allowed on purpose), unbalanced pools warn,
and the organiser passphrase is stored hashed and checked."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from engine.study import StudyDatabase, StudyError
from engine.study.case_files import pool_balance_warning, sidecar_kind, synthetic_files
from tests.helpers_study import make_pools
from training_cli.main import main


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pools"), n_real=2, n_synthetic=4)


@pytest.fixture
def mixed_real(tmp_path, pools):
    """A real pool holding one synthetic export (with its sidecar), as a careless copy would."""
    real, synthetic = pools
    folder = tmp_path / "real"
    shutil.copytree(real, folder)
    export = sorted(synthetic.glob("*.nii.gz"))[0]
    shutil.copy(export, folder / export.name)
    shutil.copy(export.with_name(export.name.replace(".nii.gz", ".json")), folder)
    return folder, export.name


def test_sidecars_say_what_a_file_is(pools, mixed_real):
    real, synthetic = pools
    assert {sidecar_kind(p) for p in synthetic.glob("*.nii.gz")} == {"synthetic"}
    assert {sidecar_kind(p) for p in real.glob("*.nii.gz")} == {None}
    folder, name = mixed_real
    assert [p.name for p in synthetic_files(sorted(folder.glob("*.nii.gz")))] == [name]


def test_a_synthetic_file_in_the_real_pool_is_refused_unless_allowed(tmp_path, pools, mixed_real):
    folder, name = mixed_real
    _real, synthetic = pools
    others = [p for p in sorted(synthetic.glob("*.nii.gz")) if p.name != name]
    with StudyDatabase(tmp_path / "s.sqlite") as db:
        with pytest.raises(StudyError, match=f"{name} is in the real pool but its sidecar says it is synthetic"):
            db.create_study(name="mixed", real=[folder], synthetic=others, readers=["ana"], validate=False)
        assert db.list_studies() == []
        info = db.create_study(
            name="mixed",
            real=[folder],
            synthetic=others,
            readers=["ana"],
            validate=False,
            allow_synthetic_in_real=True,
        )
        assert info.n_cases == 6


def test_cli_refuses_the_mixed_pool_and_warns_about_unbalanced_pools(tmp_path, capsys, pools, mixed_real, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env.sqlite"))
    folder, _name = mixed_real
    real, synthetic = pools
    db = str(tmp_path / "cli.sqlite")
    base = ["study", "create", "--readers", "ana", "--db", db]
    code = main([*base, "--name", "a", "--real", str(folder), "--synthetic", str(synthetic)])
    _out, err = capsys.readouterr()
    assert code != 0
    assert "sidecar says it is synthetic" in err
    assert "Traceback" not in err
    code = main(
        [*base, "--name", "b", "--real", str(real), "--synthetic", *map(str, sorted(synthetic.glob("*.nii.gz")))]
    )
    _out, err = capsys.readouterr()
    assert code == 0
    assert "warning: the pools are unbalanced: 2 real and 4 synthetic" in err


def test_pool_balance_warning():
    assert pool_balance_warning(10, 10) is None
    assert pool_balance_warning(10, 15) is None
    warning = pool_balance_warning(4, 12)
    assert "4 real and 12 synthetic" in warning
    assert "'synthetic' would be right 75%" in warning
    assert "'real' would be right 80%" in pool_balance_warning(8, 2)


def test_organiser_passphrase_is_hashed_checked_and_old_databases_open(tmp_path, pools):
    real, synthetic = pools
    path = tmp_path / "s.sqlite"
    with StudyDatabase(path) as db:
        db.create_study(name="pilot", real=[real], synthetic=[synthetic], readers=["ana"], validate=False)
        db.create_study(name="other", real=[real], synthetic=[synthetic], readers=["ana"], validate=False)
        # a study made before passphrases existed (or by an older BrainSynth) simply has none
        assert not db.has_organiser_passphrase("pilot")
        assert not db.check_organiser_passphrase("pilot", "anything")
        with pytest.raises(StudyError, match="at least 6 characters"):
            db.set_organiser_passphrase("pilot", "short")
        db.set_organiser_passphrase("pilot", "correct horse")
        assert db.has_organiser_passphrase("pilot")
        assert not db.has_organiser_passphrase("other")
        assert db.check_organiser_passphrase("pilot", "correct horse")
        assert not db.check_organiser_passphrase("pilot", "correct horsE")
        assert not db.check_organiser_passphrase("other", "correct horse")
        with pytest.raises(StudyError, match="current organiser passphrase"):
            db.set_organiser_passphrase("pilot", "battery staple")
        with pytest.raises(StudyError, match="current organiser passphrase"):
            db.set_organiser_passphrase("pilot", "battery staple", current="wrong one")
        db.set_organiser_passphrase("pilot", "battery staple", current="correct horse")
        assert db.check_organiser_passphrase("pilot", "battery staple")
        with pytest.raises(StudyError, match="no study named"):
            db.check_organiser_passphrase("nope", "battery staple")
    raw = sqlite3.connect(path)
    try:
        stored = "\n".join(v for (v,) in raw.execute("SELECT value FROM meta"))
        (version,) = raw.execute("PRAGMA user_version").fetchone()
    finally:
        raw.close()
    assert "battery staple" not in stored
    assert '"kdf": "scrypt"' in stored
    assert '"salt"' in stored
    assert version == 1  # no layout change: the frozen schema still describes the file
    with StudyDatabase(path) as db:  # reopens as before
        assert db.check_organiser_passphrase("pilot", "battery staple")


def test_cli_report_and_export_need_the_organiser_passphrase_once_set(tmp_path, capsys, pools, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STUDY_DB", str(tmp_path / "env.sqlite"))
    monkeypatch.delenv("BRAINSYNTH_ORGANISER_PASSPHRASE", raising=False)
    real, synthetic = pools
    db = tmp_path / "cli.sqlite"
    with StudyDatabase(db) as study_db:
        study_db.create_study(name="p", real=[real], synthetic=[synthetic], readers=["ana"], validate=False)
    out = tmp_path / "answers.csv"
    export = ["study", "export", "p", "--db", str(db), "--out", str(out)]
    assert main(export) == 0  # no passphrase set: as before
    with StudyDatabase(db) as study_db:
        study_db.set_organiser_passphrase("p", "organiser only")
    capsys.readouterr()
    assert main([*export, "--overwrite"]) != 0  # stdin is not a terminal under pytest
    assert "organiser passphrase" in capsys.readouterr().err
    monkeypatch.setenv("BRAINSYNTH_ORGANISER_PASSPHRASE", "a reader's guess")
    assert main([*export, "--overwrite"]) != 0
    assert "not the organiser passphrase" in capsys.readouterr().err
    monkeypatch.setenv("BRAINSYNTH_ORGANISER_PASSPHRASE", "organiser only")
    assert main([*export, "--overwrite"]) == 0
    report = ["study", "report", "p", "--db", str(db), "--out", str(tmp_path / "report")]
    assert main(report) == 0
