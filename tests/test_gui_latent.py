"""The app with a latent-diffusion checkpoint: open it, generate, scrub the decoded timeline, export."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from brainsynth_gui.generation_request import GenerationChoices
from brainsynth_gui.main_window import MainWindow
from brainsynth_gui.recent_files import RecentFiles
from engine.checkpoint import save_checkpoint
from engine.specs import PRESETS
from tests.helpers_qt import wait_until


def test_app_generates_from_a_latent_checkpoint(qapp, tmp_path):
    spec = PRESETS["ldm-tiny"]
    path = tmp_path / "ldm-tiny.safetensors"
    save_checkpoint(path, spec=spec, weights=spec.build_random_model(seed=0).state_dict())
    win = MainWindow(recent=RecentFiles(tmp_path / "recent.json"))
    win.resize(1200, 800)
    win.show()
    try:
        assert win.open_checkpoint(path, wait=True)
        assert "latent diffusion" in win.model_info.text()
        choices = GenerationChoices(device="cpu", sampler="ddim", steps=3, count=1, seed=4, trajectory_frames=3)
        assert win.start_generation(choices)
        wait_until(lambda: not win.busy)
        assert not win.errors, win.errors
        assert win.volume_list.count() == 1
        entry = win.library.entries[0]
        assert entry.volume.array.shape == spec.grid.shape  # the decoded grid, not the latent
        np.testing.assert_array_equal(win.state.layer("synthetic").data, entry.standard())
        # the timeline holds decoded frames on the same grid
        assert len(win.state.trajectory) >= 3
        win.state.trajectory.set_kind("x0")
        win.state.trajectory.set_index(1)
        assert win.state.layer("synthetic").data.shape == spec.grid.shape
        # export like any other volume
        written = win.export_nifti(tmp_path / "out", overwrite=False)
        image = nib.load(written[0])
        assert image.shape == spec.grid.shape
        np.testing.assert_allclose(image.affine, spec.grid.affine, atol=1e-5)
        # every preview and frame of a latent model is a decode: the app asks for a bounded number
        many = GenerationChoices(device="cpu", sampler="ddim", steps=50, trajectory_frames=20)
        request = many.to_request(win.checkpoint)
        assert (request.trajectory_frames, request.preview_every) == (8, 10)
    finally:
        win.close()
