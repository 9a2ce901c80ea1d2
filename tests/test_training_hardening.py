"""Training after a crash and on a failing disk: a damaged last log row, orphaned temporary
files, logs on disk with each saved state, and one line when the run folder cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.atomic import TEMP_MARKER, temporary_path
from engine.errors import WriteError
from engine.training.logging import STEP_COLUMNS, CsvLog, read_csv
from engine.training.resume import resume_config
from engine.training.trainer import train
from tests.training_data import tiny_run_config, write_volumes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from engine.specs import PRESETS

    folder = tmp_path_factory.mktemp("train-data")
    write_volumes(folder, PRESETS["tiny"], 8)
    return folder


def _config(tmp_path, data_dir, **overrides):
    return tiny_run_config(tmp_path, data_dir, **{"epochs": 2, **overrides})


def _orphan_of_a_dead_process(folder: Path, name: str) -> Path:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tmp = temporary_path(folder / name)
    orphan = tmp.with_name(tmp.name.replace(f"_{os.getpid()}_", f"_{proc.pid}_"))
    orphan.write_bytes(b"half a file")
    return orphan


def test_resume_repairs_a_cut_last_row_and_removes_orphans(tmp_path, data_dir):
    polls = iter(range(100))
    result = train(_config(tmp_path, data_dir), stop_requested=lambda: next(polls) >= 1)
    assert result.stopped_early
    assert result.global_step == 2
    run = tmp_path / "run"
    steps_csv = run / "logs" / "steps.csv"
    # What a power cut leaves: a row cut short with no newline (and NULs the disk never wrote).
    with open(steps_csv, "ab") as fh:
        fh.write(b"1,3")  # cut inside the global_step column
    orphans = [
        _orphan_of_a_dead_process(run / "checkpoints", "last.safetensors"),
        _orphan_of_a_dead_process(run / "resume", "state.pt"),
        _orphan_of_a_dead_process(run, "config.toml"),
    ]
    finished = train(resume_config(run), resume=True)
    assert finished.global_step == 6
    assert finished.epochs_done == 2
    assert [int(r["global_step"]) for r in read_csv(steps_csv)] == [1, 2, 3, 4, 5, 6]
    assert all(len(r) == len(STEP_COLUMNS) and None not in r.values() for r in read_csv(steps_csv))
    assert not any(p.exists() for p in orphans)
    assert not list(run.rglob(f"*{TEMP_MARKER}*"))


@pytest.mark.parametrize(
    "damage",
    [b"1,3,3,0.01", b"1,3,3,0.01,5e-05\n", b"\x00\x00\x00\x00\n", b"1,3,3,0.01,5e-05,0.5,1.0,1.0,extra\n"],
)
def test_a_damaged_log_keeps_every_complete_row(tmp_path, damage):
    path = tmp_path / "steps.csv"
    log = CsvLog(path, STEP_COLUMNS)
    for step in (1, 2):
        log.write({"epoch": 1, "step_in_epoch": step, "global_step": step, "loss": 0.1})
    log.close()
    with open(path, "ab") as fh:
        fh.write(damage)
    log = CsvLog(path, STEP_COLUMNS)
    log.write({"epoch": 1, "step_in_epoch": 3, "global_step": 3, "loss": 0.1})
    log.close()
    assert [r["global_step"] for r in read_csv(path)] == ["1", "2", "3"]


def test_logs_are_fsynced_with_every_saved_state(tmp_path, data_dir, monkeypatch):
    import engine.training.logging as logging_module

    synced: list[str] = []
    real_sync = logging_module.sync_logs

    def recording(folder):
        synced.append(Path(folder).name)
        real_sync(folder)

    monkeypatch.setattr(logging_module, "sync_logs", recording)
    train(_config(tmp_path, data_dir, epochs=1))
    assert synced
    assert set(synced) == {"logs"}


def test_a_run_folder_that_becomes_read_only_is_one_line(tmp_path, data_dir, monkeypatch):
    checkpoints = tmp_path / "run" / "checkpoints"
    real_open = os.open

    def read_only_checkpoints(path, flags, *args, **kwargs):
        if Path(path).parent == checkpoints and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_checkpoints)
    with pytest.raises(WriteError) as info:
        train(_config(tmp_path, data_dir, epochs=1))
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"cannot write {checkpoints}")
    assert "permission denied" in text
