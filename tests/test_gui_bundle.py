"""The app with an imported MONAI bundle: covariates in real units, and which DDIM layout runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.bundle import documented_conditions
from engine.checkpoint import Checkpoint
from engine.sampler_registry import SamplerSettings
from engine.specs import PRESETS, bundle_conditions


def _bundle_like_spec():
    tiny = PRESETS["ldm-tiny"]
    return replace(
        tiny,
        name="ldm-tiny-context",
        unet=replace(tiny.unet, in_channels=7, with_conditioning=True, cross_attention_dim=4, upcast_attention=True),
        conditions=documented_conditions(bundle_conditions()),
        default_sampler=SamplerSettings("ddim", 50, spacing="leading"),
    )


def test_the_panel_shows_the_bundle_s_covariates_in_real_units(qtbot):
    from brainsynth_gui.generation_panel import GenerationPanel

    spec = _bundle_like_spec()
    panel = GenerationPanel(["cpu"])
    qtbot.addWidget(panel)
    panel.set_model(spec)
    age = panel.covariate_controls["age"]
    assert panel.conditions_form.labelForField(age).text() == "age (44–82 years)"
    assert panel.conditions_form.labelForField(panel.covariate_controls["brain_vol"]).text() == (
        "brain_vol (1144.24–1793.91 mL)"
    )
    assert panel.conditions_form.labelForField(panel.covariate_controls["sex"]).text() == "sex (0–1)"
    assert "UKB field 25004" in panel.covariate_controls["ventricular_vol"].field.toolTip()
    age.any.setChecked(False)
    age.field.setValue(63.0)
    checkpoint = Checkpoint(spec=spec, weights=spec.build_model().state_dict())
    request = panel.choices().to_request(checkpoint)
    assert request.conditions == ({"age": 63.0},)
    assert request.settings.spacing == "leading"  # the model's own DDIM layout
    # what the network is given: the bundle's [0, 1] (63 years is half way from 44 to 82)
    encoded = spec.conditions.encode([spec.conditions.check(request.conditions[0])])
    np.testing.assert_allclose(encoded.numpy(), [[0.0, 0.5, 0.2, 0.4]], rtol=1e-6, atol=1e-7)


def test_the_app_says_which_timestep_layout_runs():
    from brainsynth_gui.checkpoint_info import describe_checkpoint
    from brainsynth_gui.volume_library import SyntheticEntry
    from engine.generation import GeneratedVolume

    spec = _bundle_like_spec()
    checkpoint = Checkpoint(spec=spec, weights=spec.build_model().state_dict())
    assert "ddim, 50 steps, leading timesteps" in describe_checkpoint(checkpoint)
    base = {"seed": 3, "sampler": "ddim", "steps": 50, "weights": "raw"}
    settings = SamplerSettings("ddim", 50, spacing="leading")
    volume = GeneratedVolume(0, 3, settings, np.zeros((2, 2, 2), np.float32), provenance={**base, "spacing": "leading"})
    assert "ddim 50 steps (leading timesteps)" in SyntheticEntry(1, volume, spec).label
    # BrainSynth's own trailing layout (and records from before it was recorded) read as before
    plain = GeneratedVolume(0, 3, SamplerSettings("ddim", 50), np.zeros((2, 2, 2), np.float32), provenance=base)
    assert "ddim 50 steps  ·  raw weights" in SyntheticEntry(1, plain, PRESETS["tiny"]).label
