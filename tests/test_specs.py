"""Model specs, presets and grid geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import BrainSynthError
from engine.geometry import MNI_BOX_SHAPE, GridGeometry, mni_box_affine
from engine.intensity import IntensityMapping
from engine.specs import PREDICTION_TYPES, PRESETS, ModelSpec, SamplerSettings, ScheduleSpec, UNetSpec, get_preset


def test_paper_preset_parameter_count_and_output_shape():
    spec = PRESETS["paper"]
    model = spec.build_model().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 47_475_969  # "about 47.5 M", the reference study's network
    # The full 84 x 128 x 84 grid is too slow on CPU: any size divisible by 4 exercises every layer.
    x = torch.randn(1, 1, 12, 16, 12)
    with torch.inference_mode():
        out = model(x, timesteps=torch.tensor([999.0]))
    assert out.shape == x.shape
    assert all(n % spec.unet.downsampling_factor == 0 for n in spec.grid.shape)


def test_paper_schedule_matches_monai():
    from monai.networks.schedulers import DDPMScheduler

    spec = PRESETS["paper"]
    monai = DDPMScheduler(**spec.schedule.monai_kwargs())
    assert torch.allclose(spec.schedule.betas().float(), monai.betas)
    assert torch.allclose(spec.schedule.alphas_cumprod().float(), monai.alphas_cumprod, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_spec_round_trips_through_json_dict(name):
    spec = PRESETS[name]
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(BrainSynthError, match="paper, demo, tiny"):
        get_preset("big")


def test_grid_must_fit_the_unet_depth():
    with pytest.raises(BrainSynthError, match="divisible by 4"):
        ModelSpec(name="x", unet=UNetSpec(), grid=GridGeometry.over_mni_box((42, 64, 42)))


def test_paper_grid_lies_over_the_mni_box_without_half_voxel_shift():
    grid = PRESETS["paper"].grid
    np.testing.assert_allclose(grid.spacing_mm, (181 / 84, 217 / 128, 181 / 84))
    # Outer edges (centre ∓ half a voxel) coincide with the 1 mm box's edges.
    box = mni_box_affine()
    box_low = box[:3, 3] - 0.5
    box_high = box[:3, 3] + np.array(MNI_BOX_SHAPE) - 0.5
    low = np.array(grid.origin_mm) - np.array(grid.spacing_mm) / 2
    high = grid.voxel_to_mm(np.array(grid.shape) - 1) + np.array(grid.spacing_mm) / 2
    np.testing.assert_allclose(low, box_low)
    np.testing.assert_allclose(high, box_high)
    np.testing.assert_allclose(grid.mm_to_voxel(grid.voxel_to_mm([3, 4, 5])), [3, 4, 5])
    np.testing.assert_allclose(grid.affine @ [1, 2, 3, 1], [*grid.voxel_to_mm([1, 2, 3]), 1])


def test_intensity_mapping_is_invertible_and_bounded():
    mapping = IntensityMapping()
    rng = np.random.default_rng(0)
    data = rng.uniform(10, 500, size=(10, 10, 10)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    standard = mapping.scanner_to_standard(data, mask)
    assert standard[~mask].max() == 0
    assert standard.max() <= mapping.scale
    assert np.isclose(np.percentile(standard[mask], 99.5), mapping.scale, rtol=1e-3)
    model = mapping.standard_to_model(standard)
    assert model.min() >= -1
    assert model.max() <= 1
    np.testing.assert_allclose(mapping.model_to_standard(model), standard, atol=1e-3)
    assert torch.allclose(mapping.model_to_standard(torch.tensor([2.0, -3.0])), torch.tensor([1000.0, 0.0]))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_prediction_target_and_its_reading_are_inverse(prediction_type):
    """What the trainer asks the network to output is read back as the same x_0 and noise."""
    schedule = ScheduleSpec(prediction_type=prediction_type)
    abar = schedule.alphas_cumprod()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((1, 1, 4, 4, 4), generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    for t in (0, 10, 500, 999):
        a = float(abar[t])
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        root_a, root_1a = (torch.tensor(math.sqrt(v), dtype=torch.float64) for v in (a, 1 - a))
        target = schedule.training_target(x0, eps, root_a, root_1a)
        x0_read, eps_read = schedule.split_prediction(target, x_t, a)
        torch.testing.assert_close(x0_read, x0, atol=1e-9, rtol=0)
        torch.testing.assert_close(eps_read, eps, atol=1e-9, rtol=0)


def test_v_target_is_monais_velocity():
    from monai.networks.schedulers import DDPMScheduler

    schedule = ScheduleSpec(prediction_type="v_prediction")
    monai = DDPMScheduler(**schedule.monai_kwargs())
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand((3, 1, 4, 4, 4), generator=generator) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 400, 999])
    abar = schedule.alphas_cumprod()[t].float().view(3, 1, 1, 1, 1)
    ours = schedule.training_target(x0, eps, abar.sqrt(), (1 - abar).sqrt())
    torch.testing.assert_close(ours, monai.get_velocity(x0, eps, t), atol=1e-6, rtol=1e-5)


def test_forward_noising_matches_monai():
    """``add_noise`` is MONAI's ``DDPMScheduler.add_noise``, and its tables follow the timesteps' device."""
    from monai.networks.schedulers import DDPMScheduler

    schedule = PRESETS["tiny"].schedule
    monai = DDPMScheduler(**schedule.monai_kwargs())
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 1, 6, 8, 6), generator=generator) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    ours = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(ours, monai.add_noise(x0, eps, t), atol=1e-6, rtol=1e-5)
    # The coefficients the trainer scales the training target with are the same ones.
    sqrt_abar, sqrt_one_minus_abar = schedule.noise_coefficients(t, ndim=x0.ndim)
    assert sqrt_abar.shape == (4, 1, 1, 1, 1)
    assert sqrt_abar.dtype == torch.float32
    torch.testing.assert_close(sqrt_abar**2 + sqrt_one_minus_abar**2, torch.ones_like(sqrt_abar))
    assert torch.equal(ours, sqrt_abar * x0 + sqrt_one_minus_abar * eps)
    # An equal schedule (as read back from a checkpoint) gives the same result.
    assert torch.equal(ScheduleSpec(**schedule.monai_kwargs()).add_noise(x0, eps, t), ours)
    assert ScheduleSpec(**schedule.monai_kwargs()) == schedule


def test_unknown_prediction_type_is_refused_with_the_valid_ones():
    with pytest.raises(BrainSynthError, match="epsilon, v_prediction, sample"):
        ScheduleSpec(prediction_type="velocity")
    spec = PRESETS["tiny"].to_dict()
    spec["schedule"]["prediction_type"] = "flow"
    with pytest.raises(BrainSynthError, match="unknown prediction type 'flow'"):
        ModelSpec.from_dict(spec)


def test_default_sampler_travels_with_the_spec_and_older_specs_have_none():
    from dataclasses import replace

    from engine.sampler_registry import DEFAULT_SAMPLER, SAMPLERS
    from engine.samplers import default_settings, default_steps

    default_steps_of = {name: info.default_steps for name, info in SAMPLERS.items()}

    spec = replace(PRESETS["tiny"], default_sampler=SamplerSettings("ddim", 7))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    older = PRESETS["tiny"].to_dict()
    del older["default_sampler"]  # a checkpoint written before models named their sampler
    assert ModelSpec.from_dict(older).default_sampler is None
    assert (default_settings(spec).name, default_settings(spec).steps) == ("ddim", 7)
    assert default_steps(spec, "dpmpp-2m") == default_steps_of["dpmpp-2m"]  # another sampler: its usual count
    assert default_settings(spec, sampler="dpmpp-2m") == SamplerSettings("dpmpp-2m", default_steps_of["dpmpp-2m"])
    assert default_settings(spec, steps=3, eta=0.5) == SamplerSettings("ddim", 3, 0.5)  # the user's values win
    paper = default_settings(PRESETS["paper"])
    assert (paper.name, paper.steps) == (DEFAULT_SAMPLER, default_steps_of[DEFAULT_SAMPLER])
    demo = default_settings(PRESETS["demo"])
    assert (demo.name, demo.steps) == ("ddpm", 100)


@pytest.mark.parametrize(
    ("name", "steps", "message"),
    [("euler", 10, "unknown sampler 'euler'; choose one of: ddpm, ddim, dpmpp-2m"), ("ddpm", 0, "at least 1")],
)
def test_bad_default_sampler_is_refused(name, steps, message):
    data = PRESETS["tiny"].to_dict()
    data["default_sampler"] = {"name": name, "steps": steps}
    with pytest.raises(BrainSynthError, match=message):
        ModelSpec.from_dict(data)


def test_default_sampler_cannot_take_more_steps_than_the_schedule():
    from dataclasses import replace

    with pytest.raises(BrainSynthError, match="1001 sampling steps asked for, but the model was trained with 1000"):
        replace(PRESETS["tiny"], default_sampler=SamplerSettings("ddpm", 1001))
