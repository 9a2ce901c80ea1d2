"""``brainsynth-cli sample`` end to end on the tiny preset, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from engine.checkpoint import load_checkpoint
from engine.export import sha256_file
from training_cli.main import main as cli


def _sample(ckpt, out, *extra):
    return cli(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--steps", "3", *extra])


def test_sample_writes_volumes_with_affine_sidecar_and_trajectory(tmp_path, tiny_checkpoint):
    out = tmp_path / "synth"
    assert _sample(tiny_checkpoint, out, "--num-samples", "2", "--seed", "5", "--trajectory-frames", "2") == 0
    spec = load_checkpoint(tiny_checkpoint).spec
    files = sorted(out.glob("synthetic_*_seed*.nii.gz"))
    volumes = [f for f in files if "trajectory" not in f.name]
    assert [f.name for f in volumes] == ["synthetic_0000_seed5.nii.gz", "synthetic_0001_seed6.nii.gz"]
    image = nib.load(volumes[0])
    assert image.shape == spec.grid.shape
    np.testing.assert_allclose(image.affine, spec.grid.affine, atol=1e-5)
    assert int(image.header["sform_code"]) == 4
    assert int(image.header["qform_code"]) == 4
    data = np.asarray(image.dataobj)
    assert np.isfinite(data).all()
    assert data.min() >= 0
    assert data.max() <= spec.intensity.scale
    sidecar = json.loads(volumes[0].with_suffix("").with_suffix(".json").read_text())
    assert sidecar["seed"] == 5
    assert sidecar["sampler"] == "dpmpp-2m"
    assert sidecar["steps"] == 3
    assert sidecar["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert sidecar["weights"] == "ema"
    trajectory = nib.load(out / "synthetic_0000_seed5_trajectory_x0.nii.gz")
    assert trajectory.shape == (*spec.grid.shape, 2)


def test_same_seed_same_volume_whatever_the_batch_or_shard(tmp_path, damping_checkpoint):
    assert _sample(damping_checkpoint, tmp_path / "a", "--num-samples", "3", "--batch-size", "3") == 0
    for shard in ("0/2", "1/2"):
        assert _sample(damping_checkpoint, tmp_path / "b", "--num-samples", "3", "--shard", shard) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.nii.gz"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("*.nii.gz"))
    for name in names:
        a = np.asarray(nib.load(tmp_path / "a" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "b" / name).dataobj)
        # Batched convolutions round differently (~1e-6 per call, in model units [-1, 1]); the damping
        # model keeps that near 2e-6 (1e-3 standard units), so 0.1 of 1000 standard units holds by construction.
        np.testing.assert_allclose(a, b, atol=0.1)


def test_existing_output_is_refused_before_sampling(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "synth"
    assert _sample(tiny_checkpoint, out) == 0
    before = (out / "synthetic_0000_seed0.nii.gz").read_bytes()
    assert _sample(tiny_checkpoint, out) == 1
    err = capsys.readouterr().err
    assert "already exists" in err
    assert "Traceback" not in err
    assert (out / "synthetic_0000_seed0.nii.gz").read_bytes() == before
    assert _sample(tiny_checkpoint, out, "--overwrite") == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "5000"], "use at most 1000"),
        (["--device", "cuda"], "available devices: cpu"),
        (["--num-samples", "0"], "at least 1"),
        (["--shard", "3/2"], "need 0 <= I < N"),
        (["--sampler", "ddpm", "--eta", "0.5"], "eta applies to the 'ddim' sampler only"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, tiny_checkpoint, capsys, extra, message):
    assert _sample(tiny_checkpoint, tmp_path / "o", *extra) == 1
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "\n" not in err
    assert not list(tmp_path.glob("o/*.nii.gz"))


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training_cli",
            "--debug",
            "sample",
            "--checkpoint",
            str(tmp_path / "x.pt"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "does not exist" in result.stderr


def test_sample_uses_the_models_default_sampler_unless_told(tmp_path, tiny_checkpoint):
    from dataclasses import replace

    from engine.specs import SamplerSettings

    ckpt = load_checkpoint(tiny_checkpoint)
    own = tmp_path / "own.safetensors"
    replace(ckpt, spec=replace(ckpt.spec, default_sampler=SamplerSettings("ddim", 2))).save(own)

    def sidecar(out):
        return json.loads((out / "synthetic_0000_seed0.json").read_text())

    assert cli(["sample", "--checkpoint", str(own), "--out", str(tmp_path / "a")]) == 0
    assert (sidecar(tmp_path / "a")["sampler"], sidecar(tmp_path / "a")["steps"]) == ("ddim", 2)
    assert cli(["sample", "--checkpoint", str(own), "--out", str(tmp_path / "b"), "--sampler", "dpmpp-2m"]) == 0
    assert (sidecar(tmp_path / "b")["sampler"], sidecar(tmp_path / "b")["steps"]) == ("dpmpp-2m", 25)
