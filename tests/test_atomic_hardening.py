"""Writes that survive crashes and fail in one line: folder fsync, orphaned temporary files,
no umask race, groups of files that appear together, full disks and read-only folders."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import (
    TEMP_MARKER,
    atomic_group,
    atomic_path,
    atomic_write_text,
    remove_orphaned_temporaries,
    temporary_path,
)
from engine.errors import BrainSynthError, WriteError

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    real_replace = os.replace

    def recording_replace(src, dst):
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    atomic_write_text(tmp_path / "out.txt", "x")
    assert synced == ["file", "rename", "folder"]


def test_temporary_files_are_recognisable_and_keep_the_suffix(tmp_path):
    tmp = temporary_path(tmp_path / "sub-01.nii.gz")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".sub-01" + TEMP_MARKER)
    assert tmp.name.endswith(".nii.gz")
    assert str(os.getpid()) in tmp.name


def test_orphaned_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    host = temporary_path(tmp_path / "x").name.split("_")[1]
    orphan = tmp_path / f".last{TEMP_MARKER}{host}_{dead}_0123abcd.safetensors"
    nested = tmp_path / "resume"
    nested.mkdir()
    orphan_nested = nested / f".state{TEMP_MARKER}{host}_{dead}_89abcdef.pt"
    mine = tmp_path / f".live{TEMP_MARKER}{host}_{os.getpid()}_00000000.pt"  # still being written
    foreign_new = tmp_path / f".a{TEMP_MARKER}otherhost_{dead}_11111111.pt"
    foreign_old = tmp_path / f".b{TEMP_MARKER}otherhost_{dead}_22222222.pt"
    unrelated = tmp_path / ".hidden.tmp"
    for p in (orphan, orphan_nested, mine, foreign_new, foreign_old, unrelated):
        p.write_bytes(b"half")
    old = time.time() - 2 * 24 * 3600
    os.utime(foreign_old, (old, old))
    assert set(remove_orphaned_temporaries(tmp_path)) == {orphan, foreign_old}
    assert remove_orphaned_temporaries(tmp_path, recursive=True) == [orphan_nested]
    assert {p.name for p in tmp_path.iterdir()} == {"resume", mine.name, foreign_new.name, unrelated.name}


def test_no_process_wide_umask_change(tmp_path, monkeypatch):
    def forbidden(_mask):
        raise AssertionError("os.umask changes the mask of every thread")

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", forbidden)
        errors: list[BaseException] = []

        def write(i):
            try:
                atomic_write_text(tmp_path / f"f{i}.txt", "x")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert errors == []
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o640}


def test_a_group_appears_together(tmp_path):
    image, sidecar = tmp_path / "a.nii", tmp_path / "a.json"
    with atomic_group() as group:
        group.path(image).write_bytes(b"image")
        assert not image.exists()
        group.path(sidecar).write_text("{}")
        assert not image.exists()
        assert not sidecar.exists()
    assert image.read_bytes() == b"image"
    assert sidecar.read_text() == "{}"


def test_a_failing_group_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_group() as group:  # noqa: PT012 - the failure is raised inside the write
        group.path(tmp_path / "a.nii").write_bytes(b"image")
        raise RuntimeError("the sidecar could not be made")
    assert list(tmp_path.iterdir()) == []


def test_a_rename_failing_midway_takes_back_the_first_file(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(WriteError, match=r"cannot write .*a\.json: the disk is full"), atomic_group() as group:  # noqa: PT012 - the failure is raised inside the write
        group.path(tmp_path / "a.nii").write_bytes(b"image")
        group.path(tmp_path / "a.json").write_text("{}")
    assert list(tmp_path.iterdir()) == []


def _refuse_writes_in(monkeypatch, folder: Path, exc: OSError) -> None:
    """Make creating a file in ``folder`` fail as a read-only folder or a full disk does.

    (Tests may run as root, for whom chmod does not make a folder read-only.)"""
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & os.O_CREAT:
            raise exc
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (PermissionError(13, "Permission denied"), "permission denied; choose a folder you can write to"),
        (OSError(30, "Read-only file system"), "the file system is read-only"),
        (OSError(28, "No space left on device"), "the disk is full; free some space"),
    ],
)
def test_write_failures_are_one_line(tmp_path, monkeypatch, exc, says):
    _refuse_writes_in(monkeypatch, tmp_path, exc)
    with pytest.raises(WriteError) as info, atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'out.txt'}: {says}")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_save_on_a_read_only_folder_is_one_line(tmp_path, monkeypatch, tiny_spec, tiny_weights):
    from engine.checkpoint import save_checkpoint

    _refuse_writes_in(monkeypatch, tmp_path, PermissionError(13, "Permission denied"))
    with pytest.raises(WriteError, match=r"^cannot write .*last\.safetensors: permission denied"):
        save_checkpoint(tmp_path / "last.safetensors", spec=tiny_spec, weights=tiny_weights)


def _limited_file_size(limit: int):
    """For a child process: files may not grow past ``limit`` bytes (EFBIG, like a full disk)."""

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us

    return apply


def _cli_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "training_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        preexec_fn=_limited_file_size(limit),
        timeout=300,
    )


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_sample_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = _cli_with_file_size_limit(
        ["sample", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--steps", "2", "--num-samples", "2"],
        limit=4096,  # smaller than one exported volume
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip().splitlines()[-1]  # after the progress lines
    assert err.startswith("brainsynth-cli sample: error: cannot write"), err
    assert "synthetic_0000" in err, err
    assert not out.exists() or [p.name for p in out.iterdir()] == []


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_prepare_onto_a_full_disk_is_one_line(tmp_path):
    scans = REPO / "resources" / "demo_scans"
    out = tmp_path / "prepared"
    result = _cli_with_file_size_limit(["prepare", str(scans), "--out", str(out), "--preset", "demo"], limit=4096)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("brainsynth-cli prepare: error: cannot write"), err
    assert not out.exists() or [p.name for p in out.iterdir()] == []


def test_export_to_a_read_only_folder_is_one_line_and_rolls_back(tmp_path, monkeypatch, tiny_spec):
    from engine.export import ExportVolume, export_batch

    volumes = [
        ExportVolume(number=i, array=np.zeros(tiny_spec.grid.shape, np.float32), provenance={"seed": i})
        for i in range(2)
    ]
    out = tmp_path / "out"
    out.mkdir()
    real_replace = os.replace
    calls = []

    def fail_on_third(src, dst):  # the second volume's image: the first pair must go again
        calls.append(dst)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_third)
    with pytest.raises(BrainSynthError, match=r"^cannot write .*synthetic_0001.*permission denied") as info:
        export_batch(volumes, spec=tiny_spec, out_dir=out)
    assert "\n" not in str(info.value)
    assert list(out.iterdir()) == []


def test_the_cache_writes_array_and_metadata_together(tmp_path, monkeypatch):
    from engine.specs import PRESETS
    from engine.training.data import DataItem, PreparationCache
    from tests.training_data import write_volumes

    data = tmp_path / "data"
    data.mkdir()
    write_volumes(data, PRESETS["tiny"], 1)
    scan = next(p for p in data.iterdir() if p.name.endswith(".nii.gz"))
    cache = PreparationCache(tmp_path / "cache", PRESETS["tiny"])
    real_replace = os.replace

    def json_only(src, dst):
        if str(dst).endswith(".npy"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", json_only)
    with pytest.raises(WriteError, match="the disk is full"):
        cache.prepare(DataItem(path=scan))
    assert list(cache.root.iterdir()) == []
    monkeypatch.undo()
    item = cache.prepare(DataItem(path=scan))
    assert item.ok
    assert item.array_path.exists()
    assert item.array_path.with_suffix(".json").exists()


def test_orphans_are_removed_when_a_cache_is_opened(tmp_path):
    from engine.specs import PRESETS
    from engine.training.data import PreparationCache

    root = PreparationCache(tmp_path / "cache", PRESETS["tiny"]).root
    root.mkdir(parents=True)
    host_orphan = temporary_path(root / "abc.npy")
    host_orphan = host_orphan.with_name(host_orphan.name.replace(f"_{os.getpid()}_", f"_{_dead_pid()}_"))
    host_orphan.write_bytes(b"half")
    PreparationCache(tmp_path / "cache", PRESETS["tiny"])
    assert not host_orphan.exists()
