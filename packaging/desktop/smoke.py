"""Smoke test of the built desktop bundle (``make bundle-smoke``), run by the venv's Python.

Runs the frozen executables in dist/brainsynth/ with an almost empty environment (no
PYTHONPATH, no virtual environment, PATH=/usr/bin:/bin), so nothing can come from the
development install:

1. ``brainsynth-cli --version`` and ``brainsynth --version`` print this source tree's version;
2. the model: the bundled demo model when the bundle has one (then also the bundled demo
   scans), else a tiny random checkpoint this script makes, so the test still runs torch and
   MONAI frozen end to end;
3. ``brainsynth-cli info`` and ``brainsynth-cli sample`` (2 DPM-Solver++ steps) write a
   NIfTI whose shape is the model grid and whose values are finite;
4. ``brainsynth --generate 1 --steps 2 --screenshot`` under QT_QPA_PLATFORM=offscreen exits
   0, prints no traceback and saves a window PNG that is not blank;
5. ``brainsynth-cli train`` runs one epoch of the tiny preset (on the bundled demo scans, or on
   phantom volumes this script writes) and saves a checkpoint;
6. the bundle holds the licence texts, and no CUDA libraries when torch is a CPU build.

Exit status 0 when all of that holds; each failure is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine import __version__  # noqa: E402


def clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for key in ("TMPDIR", "XDG_RUNTIME_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def run(cmd: list[str], *, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(
        [str(c) for c in cmd], env=clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str, detail: str = "") -> None:
        print(("  ok   " if ok else "  FAIL ") + what, flush=True)
        if not ok:
            self.failures.append(what)
            if detail:
                print("       " + detail.strip().replace("\n", "\n       ")[-3000:], flush=True)


def make_tiny_checkpoint(folder: Path) -> Path:
    import torch

    from engine.checkpoint import save_checkpoint
    from engine.specs import PRESETS

    torch.manual_seed(0)
    spec = PRESETS["tiny"]
    path = folder / "tiny.safetensors"
    save_checkpoint(
        path, spec=spec, weights=spec.build_random_model(seed=0).state_dict(), provenance={"source": "bundle smoke"}
    )
    return path


def write_phantom_scans(folder: Path, count: int = 6) -> Path:
    """Brain-like ellipsoids with noise on the tiny preset's grid (MNI152, RAS+), as NIfTI."""
    import nibabel as nib
    import numpy as np

    from engine.specs import PRESETS

    grid = PRESETS["tiny"].grid
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centre = (np.array(grid.shape) - 1) / 2
    idx = np.indices(grid.shape).transpose(1, 2, 3, 0)
    for i in range(count):
        radii = np.array(grid.shape) * rng.uniform(0.3, 0.42, size=3)
        inside = (((idx - centre) / radii) ** 2).sum(-1) <= 1
        data = np.where(inside, 600 + 200 * rng.random(grid.shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, grid.affine), folder / f"phantom_{i}.nii.gz")
    return folder


def image_is_not_blank(path: Path) -> tuple[bool, str]:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        n = len(colours) if colours is not None else 1 << 20
        return n > 50, f"{rgb.size[0]}x{rgb.size[1]} px, {n} colours"


def main() -> int:
    parser = argparse.ArgumentParser(description="Smoke test of dist/brainsynth/")
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "brainsynth")
    parser.add_argument("--keep", type=Path, help="also copy the screenshot here")
    args = parser.parse_args()
    gui, cli = args.bundle / "brainsynth", args.bundle / "brainsynth-cli"
    internal = args.bundle / "_internal"
    checks = Checks()
    if not (gui.is_file() and cli.is_file()):
        print(f"no bundle at {args.bundle}: run `make bundle` first")
        return 2

    for exe in (cli, gui):
        out = run([exe, "--version"])
        checks.expect(
            out.returncode == 0 and out.stdout.strip() == f"brainsynth {__version__}",
            f"{exe.name} --version prints 'brainsynth {__version__}'",
            out.stdout + out.stderr,
        )

    with tempfile.TemporaryDirectory(prefix="brainsynth-smoke-") as tmp:
        tmp = Path(tmp)
        demo = internal / "resources" / "demo_model.safetensors"
        if demo.is_file():
            print(f"model: the bundled demo model ({demo.stat().st_size / 1e6:.1f} MB)")
            ckpt_args: list[str] = []
            info_target: list[str] = [str(demo)]
        else:
            ckpt = make_tiny_checkpoint(tmp)
            print(f"model: no bundled demo model yet; a tiny random checkpoint {ckpt}")
            ckpt_args = ["--checkpoint", str(ckpt)]
            info_target = [str(ckpt)]

        out = run([cli, "info", *info_target])
        checks.expect(out.returncode == 0, "brainsynth-cli info", out.stdout + out.stderr)

        samples = tmp / "samples"
        out = run(
            [cli, "sample", *ckpt_args, "--num-samples", "1", "--steps", "2", "--device", "cpu", "--out", samples]
        )
        written = sorted(samples.glob("*.nii.gz"))
        checks.expect(out.returncode == 0 and len(written) == 1, "brainsynth-cli sample writes one NIfTI", out.stderr)
        if written:
            import nibabel as nib
            import numpy as np

            from engine.checkpoint import load_checkpoint

            data = np.asarray(nib.load(written[0]).dataobj)
            grid = load_checkpoint(info_target[0]).spec.grid.shape
            checks.expect(
                tuple(data.shape) == tuple(grid) and bool(np.isfinite(data).all()),
                f"the sample is finite, shape {data.shape} = model grid {tuple(grid)}",
            )

        shot = tmp / "screenshot.png"
        out = run(
            [gui, *ckpt_args, "--generate", "1", "--steps", "2", "--device", "cpu", "--screenshot", shot],
            QT_QPA_PLATFORM="offscreen",
        )
        checks.expect(out.returncode == 0, "brainsynth --screenshot exits 0", out.stdout + out.stderr)
        checks.expect("Traceback" not in out.stderr, "no traceback from the app", out.stderr)
        if shot.is_file():
            ok, detail = image_is_not_blank(shot)
            checks.expect(ok, f"the screenshot is not blank ({detail})")
            if args.keep:
                args.keep.write_bytes(shot.read_bytes())
        else:
            checks.expect(False, "the screenshot was saved")

        scans = internal / "resources" / "demo_scans"
        data = scans if any(scans.glob("*.nii*")) else write_phantom_scans(tmp / "phantoms")
        run_dir = tmp / "run"
        out = run(
            [cli, "train", "--preset", "tiny", "--data", data, "--out", run_dir, "--epochs", "1", "--batch-size", "2",
             "--device", "cpu", "--cache-dir", tmp / "cache", "--no-tensorboard"],
        )  # fmt: skip
        checks.expect(
            out.returncode == 0 and (run_dir / "checkpoints" / "last.safetensors").is_file(),
            f"brainsynth-cli train: one epoch on {data.name} writes a checkpoint",
            out.stdout[-1500:] + out.stderr,
        )

    for name in ("LICENSE", "NOTICE", "LGPL-3.0.txt", "GPL-3.0.txt"):
        checks.expect((internal / "licenses" / name).is_file(), f"_internal/licenses/{name} is in the bundle")
    checks.expect((internal / "resources" / "icons" / "brainsynth.png").is_file(), "the icon is in the bundle")
    import torch

    if torch.version.cuda is None:
        cuda = [p.name for p in internal.rglob("*") if p.name.startswith(("libcudnn", "libcublas", "libnccl"))]
        checks.expect(not cuda, "no CUDA libraries next to a CPU build of torch", ", ".join(cuda))

    if checks.failures:
        print(f"bundle smoke test: {len(checks.failures)} failed: {'; '.join(checks.failures)}")
        return 1
    print("bundle smoke test: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
