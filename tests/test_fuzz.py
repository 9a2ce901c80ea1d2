"""A small seeded fuzz run: damaged copies of the bundled checkpoint and of a demo scan.

Every outcome must be a clean BrainSynth error (one line) or a valid result; damaged
compressed bytes must never be accepted as other voxels. Cases run in this process, under a
guard: the process's data segment may grow by at most 3 GiB while they run (RLIMIT_DATA), so
a loader that tried to allocate what a hostile header asks for fails here instead of
exhausting the machine. Longer runs (thousands of cases, each in its own process) use the
same cases (tests/fuzz_cases.py).
"""

from __future__ import annotations

import contextlib
import resource
import sys

import numpy as np
import pytest

from engine.errors import BrainSynthError
from tests.fuzz_cases import DEMO_SCAN, checkpoint_mutations, load_checkpoint_case, load_scan_case, scan_mutations

GUARD_BYTES = 3 * 2**30


@contextlib.contextmanager
def _memory_guard():
    """Cap further growth of this process's data segment (Linux counts private mappings)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    with open("/proc/self/status") as fh:
        data_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmData:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_kb * 1024 + GUARD_BYTES
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _outcomes(cases, run):
    outcomes: dict[str, list[str]] = {}
    with _memory_guard():
        for case in cases:
            try:
                outcome = run(case)
            except BrainSynthError as exc:
                message = str(exc)
                outcome = "clean" if message and "\n" not in message and "Traceback" not in message else "multi-line"
            except MemoryError:
                outcome = "memory"
            except Exception as exc:  # what the fuzz run is for: report it, do not stop
                outcome = f"traceback {type(exc).__name__}: {str(exc)[:80]}"
            outcomes.setdefault(outcome, []).append(case.name)
    return outcomes


def test_damaged_checkpoints_are_clean_errors_or_valid(tmp_path):
    path = tmp_path / "fuzzed.safetensors"

    def run(case):
        path.write_bytes(case.data)
        return load_checkpoint_case(path)

    outcomes = _outcomes(list(checkpoint_mutations(seed=15, count=100)), run)
    bad = {k: v[:5] for k, v in outcomes.items() if k not in ("clean", "valid")}
    assert not bad, bad
    assert len(outcomes.get("clean", [])) > 40  # the cases do damage things


@pytest.mark.parametrize("seed", [15])
def test_damaged_scans_are_clean_errors_or_valid(tmp_path, seed):
    from engine.volumes import load_volume

    original = load_volume(DEMO_SCAN).data

    def run(case):
        path = tmp_path / f"fuzzed{case.suffix}"
        path.write_bytes(case.data)
        try:
            return load_scan_case(path, original=original, same_voxels_if_valid=case.same_voxels_if_valid)
        finally:
            path.unlink()

    outcomes = _outcomes(list(scan_mutations(seed=seed, count=200)), run)
    bad = {k: v[:5] for k, v in outcomes.items() if k not in ("clean", "valid")}
    assert not bad, bad
    assert len(outcomes.get("clean", [])) > 60
    assert len(outcomes.get("valid", [])) > 10


def test_the_mgz_variant_of_the_demo_scan_is_a_valid_scan(tmp_path):
    import gzip

    from engine.volumes import load_volume
    from tests.fuzz_cases import _mgz_of

    path = tmp_path / "demo.mgz"
    path.write_bytes(_mgz_of(gzip.decompress(DEMO_SCAN.read_bytes())))
    volume = load_volume(path)
    assert volume.shape == (40, 48, 40)
    assert np.isfinite(volume.data).all()
