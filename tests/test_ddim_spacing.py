"""DDIM on MONAI's timestep layouts: the MONAI brain LDM bundle samples here exactly as under MONAI."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import SamplingError
from engine.sampler_registry import SamplerSettings
from engine.samplers import (
    default_settings,
    denoise,
    initial_noise,
    leading_timesteps,
    linspace_timesteps,
    timestep_layout,
    trailing_timesteps,
)
from engine.specs import PRESETS, ModelSpec

BUNDLE_SCHEDULE = PRESETS["ldm-1mm"].schedule  # scaled_linear_beta 0.0015 -> 0.0205, T = 1000, no clipping
SHAPE = (3, 4, 6, 4)


def _model(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """A fixed non-linear "noise prediction" of x and t (so a wrong timestep changes the output)."""
    t = timesteps.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.tanh(0.8 * x + torch.sin(t / 97.0)) * (0.5 + t / 2000.0)


def _monai_loop(scheduler, noise: torch.Tensor):
    """MONAI's loop as the bundle's scripts/sampler.py runs it: for t in scheduler.timesteps: step."""
    x, samples, x0s = noise.clone(), [], []
    for t in scheduler.timesteps:
        x, x0 = scheduler.step(_model(x, torch.tensor([float(t)])), t, x)
        samples.append(x)
        x0s.append(x0)
    return [int(t) for t in scheduler.timesteps], samples, x0s


def _ours(settings: SamplerSettings, noise: torch.Tensor):
    generators = [torch.Generator().manual_seed(0)]
    steps = list(
        denoise(
            lambda x, *, timesteps: _model(x, timesteps),
            BUNDLE_SCHEDULE,
            noise.clone(),
            generators,
            settings,
            want_frames=True,
        )
    )
    return [s.timestep for s in steps], [s.x_t for s in steps], [s.x0_pred for s in steps]


def _bundle_scheduler():
    from monai.networks.schedulers import DDIMScheduler

    # configs/inference.json's scheduler; set_alpha_to_one and steps_offset at MONAI's defaults there
    return DDIMScheduler(
        num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0205, clip_sample=False
    )


def _assert_same(ours, theirs) -> None:
    ts_ours, x_ours, x0_ours = ours
    ts_theirs, x_theirs, x0_theirs = theirs
    assert ts_ours == ts_theirs
    for i, (a, b, c, d) in enumerate(zip(x_ours, x_theirs, x0_ours, x0_theirs, strict=True)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5, msg=f"x after step {i}")
        torch.testing.assert_close(c, d, atol=2e-5, rtol=1e-5, msg=f"x0 at step {i}")


@pytest.mark.parametrize("steps", [50, 30])
def test_linspace_ddim_is_the_installed_monai_loop(steps):
    """set_timesteps(N) + step of the installed MONAI (>= 1.6: linspace, step to t - T//N), every step."""
    import monai

    scheduler = _bundle_scheduler()
    scheduler.set_timesteps(steps)
    if tuple(int(v) for v in monai.__version__.split(".")[:2]) < (1, 6):
        pytest.skip("the installed MONAI lays DDIM timesteps leading")
    noise, _ = initial_noise(SHAPE, [3])
    theirs = _monai_loop(scheduler, noise)
    ours = _ours(SamplerSettings("ddim", steps, spacing="linspace"), noise)
    _assert_same(ours, theirs)
    if steps == 50:
        assert theirs[0][:4] == [999, 979, 958, 938]
        assert theirs[0][-1] == 0
    # and not BrainSynth's trailing DDIM: the layouts differ, so do the samples
    trailing = _ours(SamplerSettings("ddim", steps), noise)
    assert trailing[0] != theirs[0]
    assert not torch.allclose(trailing[1][-1], theirs[1][-1], atol=1e-3)


@pytest.mark.parametrize(("steps", "offset"), [(50, 0), (50, 1), (30, 0)])
def test_leading_ddim_is_monai_1_4_loop(steps, offset):
    """MONAI <= 1.5 (the bundle's 1.4.0): set_timesteps laid ``arange(N)[::-1] * (T//N) + steps_offset``
    (MONAI pull request 8623 shows the line it replaced); its step, unchanged since, on that layout."""
    ratio = 1000 // steps
    expected = [i * ratio + offset for i in range(steps)][::-1]
    assert leading_timesteps(1000, steps, steps_offset=offset) == expected
    if (steps, offset) == (50, 0):
        assert expected[:3] == [980, 960, 940]
        assert expected[-1] == 0
    scheduler = _bundle_scheduler()
    scheduler.set_timesteps(steps)
    scheduler.timesteps = torch.tensor(expected)  # what MONAI 1.4.0's set_timesteps left there
    noise, _ = initial_noise(SHAPE, [4])
    ours = _ours(SamplerSettings("ddim", steps, spacing="leading", steps_offset=offset), noise)
    _assert_same(ours, _monai_loop(scheduler, noise))


def test_layouts_and_their_targets():
    assert linspace_timesteps(1000, 50)[:4] == [999, 979, 958, 938]
    timesteps, targets = timestep_layout(1000, SamplerSettings("ddim", 50, spacing="linspace"))
    assert targets[:3] == [979, 959, 938]  # MONAI's t - 20, not the next of its own layout (958)
    assert targets[-1] == -1
    timesteps, targets = timestep_layout(1000, SamplerSettings("ddim", 50, spacing="leading"))
    assert targets == [*timesteps[1:], -1]
    timesteps, targets = timestep_layout(1000, SamplerSettings("ddim", 50))
    assert timesteps == trailing_timesteps(1000, 50)
    assert targets == [*timesteps[1:], -1]


def test_pixel_models_keep_the_trailing_layout_and_their_stored_form():
    spec = PRESETS["tiny"] if "tiny" in PRESETS else next(s for s in PRESETS.values() if s.latent is None)
    assert default_settings(spec, sampler="ddim", steps=10).spacing == "trailing"
    record = SamplerSettings("ddim", 50).to_dict()
    assert record == {"name": "ddim", "steps": 50, "eta": 0.0}  # no new keys in their checkpoints
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_model_s_spacing_goes_with_its_own_sampler_only():
    base = PRESETS["ldm-1mm"]
    spec = replace(base, default_sampler=SamplerSettings("ddim", 50, spacing="leading"))
    assert ModelSpec.from_dict(spec.to_dict()).default_sampler.spacing == "leading"
    assert default_settings(spec).spacing == "leading"
    assert default_settings(spec, steps=20).spacing == "leading"
    assert default_settings(spec, sampler="dpmpp-2m").spacing == "trailing"


def test_bad_spacings_are_refused():
    with pytest.raises(SamplingError, match="unknown timestep spacing 'even'"):
        SamplerSettings("ddim", 50, spacing="even")
    with pytest.raises(SamplingError, match="applies to 'ddim' only"):
        SamplerSettings("ddpm", 50, spacing="linspace")
    with pytest.raises(SamplingError, match="steps_offset applies"):
        SamplerSettings("ddim", 50, steps_offset=1)
    with pytest.raises(SamplingError, match="beyond the model's last"):
        SamplerSettings("ddim", 50, spacing="leading", steps_offset=20).validate(BUNDLE_SCHEDULE)
