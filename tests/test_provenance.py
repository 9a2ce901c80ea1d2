"""One provenance record: the same volume exported from the CLI, the app or a study has the same sidecar."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np

from brainsynth_gui.generation_request import GenerationChoices
from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles
from brainsynth_gui.study_dialogs import StudyRequest, create_study
from engine.export import ExportVolume
from tests.helpers_qt import wait_until
from tests.helpers_study import make_pools
from training_cli.main import main as cli

PROVENANCE_KEYS = {
    "checkpoint",
    "checkpoint_sha256",
    "weights",
    "sampler",
    "steps",
    "eta",
    "spacing",
    "seed",
    "precision",
    "device",
    "software_version",
    "created",
}


def _sidecar(folder, number: int, seed: int) -> dict:
    return json.loads((folder / f"synthetic_{number:04d}_seed{seed}.json").read_text())


def test_cli_app_and_study_write_the_same_sidecar(qapp, tmp_path, tiny_checkpoint):
    seed = 5
    real, _ = make_pools(tmp_path / "pools", n_real=2, n_synthetic=1)
    assert cli(["sample", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "cli"), "--seed", str(seed),
                "--sampler", "ddim", "--steps", "3", "--device", "cpu", "--precision", "fp32"]) == 0  # fmt: skip

    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        assert window.open_checkpoint(tiny_checkpoint, wait=True)
        choices = GenerationChoices(
            device="cpu", precision="fp32", sampler="ddim", steps=3, count=1, seed=seed, trajectory_frames=0
        )
        assert window.start_generation(choices)
        wait_until(lambda: not window.busy)
        assert not window.errors, window.errors
        (entry,) = window.library.entries
        assert window.export_nifti(tmp_path / "app") != []
        create_study(
            tmp_path / "study.sqlite",
            StudyRequest(
                name="provenance",
                real=[real],
                synthetic=[],
                readers=["A"],
                session_volumes=[
                    ExportVolume(number=entry.number, array=entry.volume.array, provenance=entry.provenance)
                ],
                export_dir=tmp_path / "study",
                spec=entry.spec,
            ),
        )
    finally:
        window.close()

    from_cli = _sidecar(tmp_path / "cli", 0, seed)
    from_app = _sidecar(tmp_path / "app", entry.number, seed)
    from_study = _sidecar(tmp_path / "study", entry.number, seed)
    assert set(from_cli) == set(from_app) == set(from_study)
    assert set(from_cli) >= PROVENANCE_KEYS
    same = PROVENANCE_KEYS - {"created"}
    assert {k: from_cli[k] for k in same} == {k: from_app[k] for k in same} == {k: from_study[k] for k in same}
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert (from_cli["checkpoint_sha256"], from_cli["weights"], from_cli["seed"]) == (digest, "ema", seed)
    assert (from_cli["sampler"], from_cli["steps"], from_cli["device"]) == ("ddim", 3, "cpu")
    # The app's list shows what the sidecar records.
    assert entry.label.startswith(f"#{entry.number}  seed {seed}  ·  ddim 3 steps  ·  ema weights")
    # And it is the same volume, up to float rounding (the app samples in a worker thread, where
    # reductions may split differently). The untrained tiny network leaves many voxels near the
    # background threshold, so a rounding-size change can move a few of them across the mask edge:
    # compare the voxels both exports keep, and bound how many change sides.
    a = np.asarray(nib.load(tmp_path / "cli" / f"synthetic_0000_seed{seed}.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "app" / f"synthetic_{entry.number:04d}_seed{seed}.nii.gz").dataobj)
    both = (a != 0) & (b != 0)
    assert both.sum() > 0.5 * max((a != 0).sum(), 1)
    np.testing.assert_allclose(a[both], b[both], atol=0.5)
    assert ((a != 0) != (b != 0)).mean() < 0.02
