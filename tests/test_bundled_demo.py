"""The bundled demo model and demo scans: present, loadable, and they generate a brain-shaped volume."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.generation import GenerationRequest, generate
from engine.resources import bundled_checkpoint, bundled_demo_scans
from engine.samplers import SamplerSettings
from engine.specs import PRESETS
from engine.training.covariates import PARTICIPANTS_FILE, read_participants
from engine.utility.leakage import split_beside
from engine.volumes import load_volume


def test_bundled_checkpoint_generates_a_finite_volume_on_the_demo_grid():
    path = bundled_checkpoint()
    assert path is not None, "resources/demo_model.safetensors is missing"
    assert path.stat().st_size < 25 * 2**20
    ckpt = load_checkpoint(path)
    assert ckpt.spec.name == "demo"
    assert ckpt.has_ema
    assert dataclasses.replace(ckpt.spec, conditions=None) == PRESETS["demo"], (
        "the bundled model is the current demo preset (network, schedule, grid) with conditions"
    )
    conditions = ckpt.spec.conditions
    assert conditions is not None, "the bundled demo model is conditional"
    assert [c.name for c in conditions.covariates] == ["age", "sex", "group"]
    by_name = {c.name: c for c in conditions.covariates}
    assert by_name["group"].categories == ("control", "ftd")
    assert by_name["sex"].categories == ("F", "M")
    assert 40 <= by_name["age"].minimum < by_name["age"].maximum <= 90
    assert conditions.dropout > 0, "it learnt the null condition that classifier-free guidance needs"
    assert ckpt.provenance.get("training"), "the demo model records how it was trained"
    training = ckpt.provenance["training"]
    split_rows = split_beside(path).read_text().strip().splitlines()[1:]
    assert len(split_rows) == training["train_scans"] + training["val_scans"], "its run's split ships beside it"
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
        assert volume.data.min() >= 0
        assert volume.data.max() <= spec.intensity.scale


def test_bundled_demo_scans_are_labelled_with_both_groups():
    """Show a real scan of the same group and the utility dialog read these labels."""
    scans = bundled_demo_scans()
    rows = read_participants(scans[0].parent / PARTICIPANTS_FILE)
    names = {p.name.removesuffix(".nii.gz") for p in scans}
    assert names <= set(rows), "every bundled scan has a participants.tsv row"
    assert {rows[n]["group"] for n in names} == {"control", "ftd"}
    assert all(45 <= float(rows[n]["age"]) <= 85 and rows[n]["sex"] in ("F", "M") for n in names)


def test_bundled_model_with_its_own_sampler_makes_a_brain_like_the_demo_scans():
    """The model's default sampler (DDPM, 100 steps) gives a volume that looks like the demo scans:
    it correlates with their mean as the scans themselves do (a noise volume correlates ~0)."""
    from engine.samplers import default_settings

    ckpt = load_checkpoint(bundled_checkpoint())
    settings = default_settings(ckpt.spec)
    assert (settings.name, settings.steps) == ("ddpm", 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 100 steps of the demo UNet: the one test here that gains from both cores
    try:
        request = GenerationRequest(spec=ckpt.spec, seeds=[0], settings=settings, device="cpu")
        (volume,) = [v for e in generate(ckpt.build_model(), request) for v in e.finished]
    finally:
        torch.set_num_threads(threads)
    generated = ckpt.spec.intensity.model_to_standard(volume.array).ravel()
    scans = np.stack([load_volume(p).data for p in bundled_demo_scans()])
    mean = scans.mean(axis=0).ravel()
    scan_correlations = [np.corrcoef(s.ravel(), mean)[0, 1] for s in scans]
    correlation = np.corrcoef(generated, mean)[0, 1]
    assert correlation > 0.9, (correlation, scan_correlations)
