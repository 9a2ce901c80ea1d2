"""Start-up time to first window: the frozen bundle against ``brainsynth`` from the venv, as a ratio.

    python packaging/desktop/measure_startup.py            # 7 runs each, after one warm-up run each
    python packaging/desktop/measure_startup.py --runs 15

One run is the wall time of ``brainsynth --screenshot FILE`` under QT_QPA_PLATFORM=offscreen,
from process start until it exits after saving the PNG of its first window: imports, Qt
start-up, the window, the default model (the bundled demo model and demo scans when
present; otherwise the empty window) and the app's fixed 0.4 s settle delay before the
screenshot, which both sides pay. Runs alternate between the two programs so that load from
other processes on the machine falls on both alike; the figure reported is the ratio of the
medians (frozen / venv), with each median and its spread. A warm-up run of each fills the
page cache first, so this is warm start-up; a first start after boot reads more from disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def one_run(cmd: list[str], shot: Path, env: dict[str, str]) -> float:
    shot.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--screenshot", str(shot)], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or not shot.is_file():
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each program (default 7)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "brainsynth" / "brainsynth")
    parser.add_argument("--venv-app", type=Path, default=Path(sys.prefix) / "bin" / "brainsynth")
    args = parser.parse_args()
    for exe in (args.bundle, args.venv_app):
        if not exe.is_file():
            raise SystemExit(f"{exe} not found (make bundle builds the bundle; the venv needs pip install -e .)")

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    # The frozen app must not see the development environment.
    frozen_env = {k: v for k, v in env.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    programs = {"frozen": ([str(args.bundle)], frozen_env), "venv": ([str(args.venv_app)], env)}
    times: dict[str, list[float]] = {name: [] for name in programs}
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        for cmd, run_env in programs.values():  # warm-up: page cache, font cache, __pycache__
            one_run(cmd, shot, run_env)
        for i in range(args.runs):
            order = list(programs) if i % 2 == 0 else list(reversed(programs))
            for name in order:
                cmd, run_env = programs[name]
                times[name].append(one_run(cmd, shot, run_env))
                print(f"run {i + 1}/{args.runs} {name:6s} {times[name][-1]:.2f} s", flush=True)

    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:6s} median {medians[name]:.2f} s (min {min(t):.2f}, max {max(t):.2f}, n={len(t)})")
    print(f"start-up to first window, frozen / venv = {medians['frozen'] / medians['venv']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
