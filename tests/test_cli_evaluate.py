"""``brainsynth-cli evaluate`` end to end, in-process, on NIfTI files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.geometry import GridGeometry
from tests.helpers_metrics import SHAPE, brain, save_random_medicalnet
from training_cli.main import main

AFFINE = GridGeometry.over_mni_box(SHAPE).affine


def _write(folder: Path, volumes: list[np.ndarray], prefix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, vol in enumerate(volumes):
        nib.save(nib.Nifti1Image(vol, AFFINE), folder / f"{prefix}-{i:02d}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    train = [brain(s) for s in range(10, 14)]
    return {
        "real": _write(root / "real", [brain(s) for s in range(3)], "real"),
        "synthetic": _write(root / "synthetic", [train[0].copy(), brain(20, offset=30.0), brain(21)], "sample"),
        "train": _write(root / "train", train, "train"),
        "weights": save_random_medicalnet(root / "resnet_10_random.pth"),
        "root": root,
    }


def _run(real: Path, synthetic: Path, out: Path) -> int:
    return main(["evaluate", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out)])


def _args(f: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--real", str(f["real"]), "--synthetic", str(f["synthetic"]), "--out", str(out), *extra]


def test_end_to_end_writes_json_markdown_and_pngs(folders, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [*_args(folders, out), "--train", str(folders["train"]), "--fid-weights", str(folders["weights"])]
    assert main([*argv, "--fid-2d", "--pairs", "3", "--seed", "5"]) == 0
    stdout = capsys.readouterr().out
    assert "MMD (unbiased, linear kernel)" in stdout
    assert "near copies of training scans" in stdout

    data = json.loads((out / "evaluation.json").read_text())
    assert data["n_real"] == 3
    assert data["n_train"] == 4
    assert data["fid_3d"]["available"]
    assert data["fid_3d"]["feature_dim"] == 512
    assert data["fid_3d"]["parameters"]["weights_sha256"]
    assert data["fid_2d"]["available"]
    assert data["msssim"]["seed"] == 5
    assert data["msssim"]["within_real"]["n_pairs"] == 3
    assert data["sources"]["training"].endswith("train")
    assert data["brain_volume"]["voxel_volume_ml"] == pytest.approx(abs(np.linalg.det(AFFINE[:3, :3])) / 1000)
    flagged = data["memorisation"]["flagged"]
    assert [(n["label"], n["train_label"]) for n in flagged] == [("sample-00", "train-00")]

    md = (out / "report.md").read_text()
    assert "## Table 1" in md
    assert "Memorisation check" in md
    assert "sample-00" in md
    for png in ("intensity_histograms.png", "brain_volume.png", "msssim.png", "nearest_neighbours.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "closest_pairs.png").stat().st_size > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # scratch memmaps removed


def test_without_weights_fid_is_unavailable_and_rerun_needs_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([*_args(folders, out), "--pairs", "2"]) == 0
    assert "unavailable" in capsys.readouterr().out
    data = json.loads((out / "evaluation.json").read_text())
    assert data["fid_3d"]["available"] is False
    assert "huggingface.co/TencentMedicalNet" in data["fid_3d"]["reason"]
    assert data["memorisation"]["available"] is False
    assert main([*_args(folders, out), "--pairs", "2"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*_args(folders, out), "--pairs", "2", "--overwrite"]) == 0


def test_bad_inputs_exit_1_with_one_line(folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(folders["real"], empty, tmp_path / "a") == 1
    assert "synthetic folder" in capsys.readouterr().err

    small = _write(tmp_path / "small", [brain(0, shape=(32, 32, 30)), brain(1, shape=(32, 32, 30))], "s")
    assert _run(folders["real"], small, tmp_path / "b") == 1
    assert "32 x 32 x 30" in capsys.readouterr().err

    single = _write(tmp_path / "single", [brain(0)], "one")
    assert _run(single, folders["real"], tmp_path / "c") == 1
    assert "at least 2" in capsys.readouterr().err

    notes = tmp_path / "notes.pth"
    notes.write_text("not weights")
    assert main([*_args(folders, tmp_path / "d"), "--fid-weights", str(notes)]) == 1
    err = capsys.readouterr().err
    assert "cannot be read as PyTorch weights" in err
    assert err.count("\n") == 1


def test_the_fid_network_runs_in_the_precision_asked_and_records_it(folders, tmp_path, capsys, monkeypatch):
    import torch

    from engine.precision import bf16_support

    def fid_of(out: Path, *extra: str) -> dict:
        argv = [*_args(folders, out), "--fid-weights", str(folders["weights"]), "--pairs", "2", *extra]
        assert main(argv) == 0, capsys.readouterr().err
        return json.loads((out / "evaluation.json").read_text())["fid_3d"]

    fp32 = fid_of(tmp_path / "fp32")  # the default
    assert (fp32["parameters"]["precision"], fp32["parameters"]["precision_reason"]) == ("fp32", "fp32 (asked for)")
    assert "network in fp32 (asked for)" in capsys.readouterr().out
    if bf16_support(torch.device("cpu")) is not None:
        bf16 = fid_of(tmp_path / "bf16", "--precision", "bf16")
        assert bf16["parameters"]["precision"] == "bf16"
        assert bf16["value"] == pytest.approx(fp32["value"], rel=0.05, abs=1e-3)  # rounding, not another metric
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    auto = fid_of(tmp_path / "auto", "--precision", "auto")
    assert auto["parameters"]["precision_reason"] == "auto: fp32, no fast bf16 on this device"
    assert auto["value"] == fp32["value"]
    argv = [*_args(folders, tmp_path / "refused"), "--fid-weights", str(folders["weights"]), "--precision", "bf16"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "bf16 precision is not available here" in err
    assert err.count("\n") == 1
