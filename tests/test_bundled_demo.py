"""The bundled demo model and demo scans: present, loadable, and they generate a brain-shaped volume."""

from __future__ import annotations

import numpy as np

from engine.checkpoint import load_checkpoint
from engine.generation import GenerationRequest, generate
from engine.resources import bundled_checkpoint, bundled_demo_scans
from engine.samplers import SamplerSettings
from engine.specs import PRESETS
from engine.volumes import load_volume


def test_bundled_checkpoint_generates_a_finite_volume_on_the_demo_grid():
    path = bundled_checkpoint()
    assert path is not None, "resources/demo_model.safetensors is missing"
    assert path.stat().st_size < 25 * 2**20
    ckpt = load_checkpoint(path)
    assert ckpt.spec.name == "demo" and ckpt.has_ema
    assert ckpt.spec == PRESETS["demo"], "the bundled model is the current demo preset (network, schedule, grid)"
    assert ckpt.provenance.get("training"), "the demo model records how it was trained"
    model = ckpt.build_model()
    events = generate(
        model, GenerationRequest(spec=ckpt.spec, seeds=[0], settings=SamplerSettings("dpmpp-2m", 4), device="cpu")
    )
    (volume,) = [v for e in events for v in e.finished]
    assert volume.array.shape == ckpt.spec.grid.shape == (40, 48, 40)
    assert np.isfinite(volume.array).all()
    np.testing.assert_allclose(ckpt.spec.grid.affine[:3, 3], (-88.2375, -124.2396, -70.2375), atol=1e-3)


def test_bundled_demo_scans_lie_on_the_demo_grid():
    scans = bundled_demo_scans()
    assert len(scans) >= 8
    spec = load_checkpoint(bundled_checkpoint()).spec
    for path in scans:
        volume = load_volume(path)
        assert volume.shape == spec.grid.shape
        np.testing.assert_allclose(volume.affine, spec.grid.affine, atol=1e-4)
        assert volume.data.min() >= 0 and volume.data.max() <= spec.intensity.scale
