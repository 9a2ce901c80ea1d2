"""Our sampling loop against MONAI's schedulers, an independent DPM-Solver++ and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from engine.errors import SamplingError
from engine.sampler_registry import SAMPLER_NAMES
from engine.samplers import (
    SamplerSettings,
    SamplingStep,
    ddpm_coefficients,
    denoise,
    initial_noise,
    trailing_timesteps,
)
from engine.specs import PREDICTION_TYPES, PRESETS, ScheduleSpec, reinitialise_zero_layers

SHAPE = (1, 16, 16, 16)  # (C, D, H, W)
TINY_UNET = PRESETS["tiny"].unet  # any grid divisible by 4 fits it


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(1234)
    return reinitialise_zero_layers(TINY_UNET.build(), seed=1234).eval()


class GaussianDataEpsilon(torch.nn.Module):
    """The exact epsilon predictor for data x_0 ~ N(0, s^2 I) under a schedule.

    x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps has variance V = abar s^2 + 1 - abar, and
    E[eps | x_t] = sqrt(1 - abar) / V * x_t.
    """

    def __init__(self, schedule: ScheduleSpec, data_variance: float):
        super().__init__()
        self.abar = schedule.alphas_cumprod()
        self.s2 = data_variance
        self.calls = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: None = None) -> torch.Tensor:
        self.calls += 1
        a = float(self.abar[int(timesteps[0].item())])
        return x * (math.sqrt(1.0 - a) / (a * self.s2 + 1.0 - a))


class ReparametrisedPredictor(torch.nn.Module):
    """An epsilon predictor's output re-expressed as v or as x_0 (what such a network would output)."""

    def __init__(self, eps_model: torch.nn.Module, schedule: ScheduleSpec):
        super().__init__()
        self.eps_model, self.schedule = eps_model, schedule
        self.abar = schedule.alphas_cumprod()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: None = None) -> torch.Tensor:
        a = float(self.abar[int(timesteps[0].item())])
        eps = self.eps_model(x, timesteps)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        roots = torch.tensor(math.sqrt(a), dtype=x.dtype), torch.tensor(math.sqrt(1 - a), dtype=x.dtype)
        return self.schedule.training_target(x0, eps, *roots)


def _run(model, schedule, noise, generators, settings, **kwargs) -> torch.Tensor:
    *_, last = denoise(model, schedule, noise, generators, settings, **kwargs)
    return last.x_t


# --- timestep layout -------------------------------------------------------------------------


def test_trailing_timesteps_layout():
    assert trailing_timesteps(1000, 50)[:3] == [999, 979, 959]
    assert trailing_timesteps(1000, 50)[-1] == 19
    assert trailing_timesteps(10, 3) == [9, 6, 2]  # round(10), round(6.67), round(3.33), minus 1
    assert trailing_timesteps(7, 7) == [6, 5, 4, 3, 2, 1, 0]
    for n in range(1, 101):
        ts = trailing_timesteps(100, n)
        assert len(ts) == n
        assert ts[0] == 99
        assert ts[-1] >= 0
        assert ts == sorted(set(ts), reverse=True)


def test_monai_ddim_layout_disagrees_with_its_own_step():
    """Why we lay timesteps out ourselves: MONAI's set_timesteps and step() disagree."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    listed = scheduler.timesteps.tolist()
    stepped_to = [t - 1000 // 50 for t in listed]  # what step() takes as the previous timestep
    assert listed[1:] != stepped_to[:-1]
    assert listed[-1] == 0
    assert stepped_to[-1] == -20


# --- DDPM ------------------------------------------------------------------------------------


def _monai_in_float64(scheduler, schedule: ScheduleSpec):
    """Give a MONAI scheduler our float64 schedule (its own is float32).

    MONAI keeps alphas_cumprod in float32, where 1 - alphas_cumprod[t] at small t (≈ 5e-4)
    loses ~1e-4 of its value to cancellation; we compute the schedule in float64. With the
    float64 tables MONAI's arithmetic (still on float32 tensors) and ours agree bit for bit.
    """
    scheduler.betas = schedule.betas()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = schedule.alphas_cumprod()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("seed", [0, 7])
def test_ddpm_all_steps_matches_monai_inferer(unet, seed, prediction_type):
    schedule = ScheduleSpec(num_train_timesteps=50, prediction_type=prediction_type)
    noise, generators = initial_noise(SHAPE, [seed])
    ours = _run(unet, schedule, noise, generators, SamplerSettings("ddpm", 50))

    for wide, tolerance in ((False, 2e-4), (True, 1e-6)):
        # MONAI: x_T from the global RNG, then its step noise from the same global stream.
        torch.manual_seed(seed)
        x_t = torch.randn((1, *SHAPE))
        assert torch.equal(noise, x_t)
        scheduler = DDPMScheduler(**schedule.monai_kwargs())
        scheduler.set_timesteps(schedule.num_train_timesteps)
        if wide:
            _monai_in_float64(scheduler, schedule)
        with torch.no_grad():
            expected = DiffusionInferer(scheduler).sample(input_noise=x_t, diffusion_model=unet, verbose=False)
        assert expected.abs().max() > 0.1  # the comparison is not trivial
        torch.testing.assert_close(ours, expected, atol=tolerance, rtol=tolerance)


def test_ddpm_coefficients_equal_monai_for_consecutive_steps():
    schedule = ScheduleSpec()
    abar = schedule.alphas_cumprod()
    betas = schedule.betas()
    for t in (1, 10, 500, 999):
        x0_coef, xt_coef, variance = ddpm_coefficients(float(abar[t]), float(abar[t - 1]))
        # Ho et al. eq. 7 with the original betas, which MONAI uses.
        assert x0_coef == pytest.approx(float(abar[t - 1].sqrt() * betas[t] / (1 - abar[t])), rel=1e-6)
        assert xt_coef == pytest.approx(float((1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])), rel=1e-6)
        assert variance == pytest.approx(float((1 - abar[t - 1]) / (1 - abar[t]) * betas[t]), rel=1e-6)


def _predicted_final_variance(schedule: ScheduleSpec, timesteps: list[int], s2: float, *, monai: bool) -> float:
    """Var of the final sample for Gaussian data, propagated exactly through the linear chain.

    Each step is x_prev = c * x_t + sqrt(v) z with c and v scalars, so Var_prev = c^2 Var + v.
    ``monai=True`` uses MONAI's coefficients: alphas_cumprod[t-1] and betas[t], whatever the
    spacing.
    """
    abar = schedule.alphas_cumprod().tolist()
    betas = schedule.betas().tolist()
    var = 1.0
    for i, t in enumerate(timesteps):
        a = abar[t]
        if monai:
            a_prev, beta = (abar[t - 1] if t > 0 else 1.0), betas[t]
        else:
            a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
            beta = 1 - a / a_prev
        x0_gain = (1 - math.sqrt(1 - a) * math.sqrt(1 - a) / (a * s2 + 1 - a)) / math.sqrt(a)
        c = math.sqrt(a_prev) * beta / (1 - a) * x0_gain + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        noise_var = (1 - a_prev) / (1 - a) * beta if (t > 0 if monai else i + 1 < len(timesteps)) else 0.0
        var = c * c * var + noise_var
    return var


def test_respaced_ddpm_gets_the_marginal_right_where_monai_does_not():
    """DDPM with 100 of 1000 steps on data N(0, 0.25) with the exact epsilon predictor.

    Our respaced chain ends at variance ≈ 0.225 (the "fixed small" posterior variance ignores
    Var(x_0 | x_t), so with few steps it falls a little short of 0.25; at 1000 steps ≈ 0.246).
    MONAI's DDPMScheduler with set_timesteps(100) treats every jump of 10 timesteps as one,
    removes a tenth of the noise and ends at ≈ 0.77: mostly noise.
    """
    s2 = 0.25
    schedule = ScheduleSpec(clip_sample=False)
    model = GaussianDataEpsilon(schedule, s2)
    shape = (1, 32, 32, 32)  # 32768 independent voxels: variance known to ~1 %

    noise, generators = initial_noise(shape, [3])
    ours = _run(model, schedule, noise, generators, SamplerSettings("ddpm", 100))
    ours_var = float(ours.double().var())
    expected_ours = _predicted_final_variance(schedule, trailing_timesteps(1000, 100), s2, monai=False)
    assert expected_ours == pytest.approx(0.2248, abs=1e-3)
    assert ours_var == pytest.approx(expected_ours, rel=0.04)

    scheduler = DDPMScheduler(**schedule.monai_kwargs())
    scheduler.set_timesteps(100)
    torch.manual_seed(3)
    x_t = torch.randn((1, *shape))
    monai_out = DiffusionInferer(scheduler).sample(input_noise=x_t, diffusion_model=model, verbose=False)
    monai_var = float(monai_out.double().var())
    expected_monai = _predicted_final_variance(schedule, scheduler.timesteps.tolist(), s2, monai=True)
    assert expected_monai == pytest.approx(0.772, abs=2e-3)
    assert monai_var == pytest.approx(expected_monai, rel=0.04)

    assert abs(ours_var - s2) < 0.04 < 0.5 < abs(monai_var - s2)


def test_ddpm_all_steps_gets_the_marginal_nearly_exact():
    s2 = 0.25
    schedule = ScheduleSpec(clip_sample=False)
    noise, generators = initial_noise((1, 24, 24, 24), [5])
    out = _run(GaussianDataEpsilon(schedule, s2), schedule, noise, generators, SamplerSettings("ddpm", 1000))
    assert float(out.double().var()) == pytest.approx(s2, rel=0.04)


# --- DDIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_monai_step(unet, steps, eta, prediction_type):
    schedule = ScheduleSpec(num_train_timesteps=100, prediction_type=prediction_type)
    seed = 11
    scheduler = DDIMScheduler(**schedule.monai_kwargs())  # set_alpha_to_one=True by default
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *SHAPE), generator=generator)
    with torch.no_grad():
        for t in trailing_timesteps(100, steps):
            output = unet(x, timesteps=torch.full((1,), float(t)))
            x, _ = scheduler.step(output, t, x, eta=eta, generator=generator)

    noise, generators = initial_noise(SHAPE, [seed])
    ours = _run(unet, schedule, noise, generators, SamplerSettings("ddim", steps, eta=eta))
    assert x.abs().max() > 0.1
    # x_0-predicting models get epsilon by dividing by sqrt(1 - abar_t) (0.02 at t = 0), which
    # magnifies float32 rounding (MONAI's float32 tables against our float64 ones) twentyfold.
    tolerance = 1e-4 if prediction_type == "sample" else 1e-5
    torch.testing.assert_close(ours, x, atol=tolerance, rtol=tolerance)


# --- DPM-Solver++(2M) ------------------------------------------------------------------------


def _reference_dpmpp_2m(model, abar: np.ndarray, timesteps: list[int], x: torch.Tensor, clip: bool) -> torch.Tensor:
    """DPM-Solver++(2M) written from Lu et al. 2022, Algorithm 2, independently of engine.samplers.

    Noise-schedule quantities in float64 numpy; the final step goes to sigma = 0 with the
    first-order (DDIM) update, whose limit is x_0 itself.
    """
    alpha = np.sqrt(abar[timesteps])
    sigma = np.sqrt(1.0 - abar[timesteps])
    lam = np.log(alpha) - np.log(sigma)
    data_predictions = []
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            eps = model(x, timesteps=torch.full((x.shape[0],), float(t)))
        x0 = (x - sigma[i] * eps) / alpha[i]
        if clip:
            x0 = torch.clamp(x0, -1, 1)
        data_predictions.append(x0)
        if i == len(timesteps) - 1:
            return x0
        h = lam[i + 1] - lam[i]
        if i == 0:
            d = x0
        else:
            h_last = lam[i] - lam[i - 1]
            r = h_last / h
            d = (1 + 1 / (2 * r)) * data_predictions[-1] - 1 / (2 * r) * data_predictions[-2]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (np.exp(-h) - 1.0) * d
    raise AssertionError("unreachable")


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_dpmpp_2m_matches_reference_from_paper(unet, clip, steps):
    schedule = ScheduleSpec(num_train_timesteps=100, clip_sample=clip)
    noise, generators = initial_noise(SHAPE, [21])
    expected = _reference_dpmpp_2m(
        unet, schedule.alphas_cumprod().numpy(), trailing_timesteps(100, steps), noise.clone(), clip
    )
    ours = _run(unet, schedule, noise, generators, SamplerSettings("dpmpp-2m", steps))
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_dpmpp_is_second_order_and_beats_ddim_on_gaussian_data():
    """On Gaussian data the probability-flow ODE is linear and known: x_t = x_T sqrt(V_t / V_{T-1}).

    Compared at timestep 499 (half-way), doubling the steps divides DPM-Solver++'s error by
    about 4 (second order) and DDIM's by about 2 (first order). At 10 and 20 steps, compared
    one step before the end (the last step of both is x_0 itself), DPM-Solver++ is several
    times closer. Near t = 0 the trailing layout takes steps of O(1) in lambda whatever N
    (sigma_t ~ sqrt(t)), so there DPM-Solver++'s error falls only like 1/N: see benchmarks.
    """
    s2 = 0.25
    schedule = ScheduleSpec(clip_sample=False)
    abar = schedule.alphas_cumprod().tolist()
    model = GaussianDataEpsilon(schedule, s2)
    noise, generators = initial_noise((1, 4, 4, 4), [9], dtype=torch.float64)

    def error_at(name: str, steps: int, index: int) -> float:
        frames = list(denoise(model, schedule, noise, generators, SamplerSettings(name, steps), want_frames=True))
        t = trailing_timesteps(1000, steps)[index + 1]  # x_t after step ``index`` is at the next timestep
        exact = noise * math.sqrt((abar[t] * s2 + 1 - abar[t]) / (abar[-1] * s2 + 1 - abar[-1]))
        return float((frames[index].x_t - exact).pow(2).mean().sqrt())

    dpm_ratio = error_at("dpmpp-2m", 100, 49) / error_at("dpmpp-2m", 200, 99)
    ddim_ratio = error_at("ddim", 100, 49) / error_at("ddim", 200, 99)
    assert dpm_ratio == pytest.approx(4.0, rel=0.1)
    assert ddim_ratio == pytest.approx(2.0, rel=0.1)

    for steps in (10, 20):
        assert error_at("dpmpp-2m", steps, steps - 2) < error_at("ddim", steps, steps - 2) / 5


# --- streaming, frames, seeds, cancel --------------------------------------------------------


def test_yields_every_step_with_frames_on_request(unet):
    schedule = ScheduleSpec(num_train_timesteps=100)
    noise, generators = initial_noise(SHAPE, [1])
    steps = list(
        denoise(unet, schedule, noise, generators, SamplerSettings("ddim", 5), want_frames=lambda i: i in (0, 2))
    )
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    assert all(s.total == 5 for s in steps)
    assert [s.timestep for s in steps] == trailing_timesteps(100, 5)
    assert [s.x0_pred is not None for s in steps] == [True, False, True, False, False]
    assert [s.x_t is not None for s in steps] == [True, False, True, False, True]  # the final sample always
    assert steps[-1].is_last
    assert steps[-1].x_t.shape == (1, *SHAPE)
    # DDIM's last step lands on abar = 1, so the sample equals the clamped x_0 prediction.
    assert float(steps[2].x0_pred.abs().max()) <= 1.0


def test_consumer_code_does_not_run_in_inference_mode(unet):
    schedule = ScheduleSpec(num_train_timesteps=100)
    noise, generators = initial_noise(SHAPE, [1])
    for _ in denoise(unet, schedule, noise, generators, SamplerSettings("ddim", 3)):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()


def test_closing_stops_model_calls():
    schedule = ScheduleSpec(clip_sample=False)
    model = GaussianDataEpsilon(schedule, 0.25)
    noise, generators = initial_noise((1, 4, 4, 4), [1])
    run = denoise(model, schedule, noise, generators, SamplerSettings("ddpm", 50))
    for step in run:
        if step.index == 2:
            break
    run.close()
    assert model.calls == 3


@pytest.mark.parametrize("settings", [SamplerSettings("ddpm", 6), SamplerSettings("ddim", 6, eta=1.0)])
def test_sample_k_independent_of_batch(unet, settings):
    schedule = ScheduleSpec(num_train_timesteps=100)
    seeds = [5, 6, 7]
    noise, generators = initial_noise(SHAPE, seeds)
    batch = _run(unet, schedule, noise, generators, settings)
    for k, seed in enumerate(seeds):
        noise1, generators1 = initial_noise(SHAPE, [seed])
        single = _run(unet, schedule, noise1, generators1, settings)
        torch.testing.assert_close(batch[k : k + 1], single, atol=1e-5, rtol=1e-5)


def test_initial_noise_matches_global_rng():
    torch.manual_seed(99)
    expected = torch.randn((1, *SHAPE))
    noise, generators = initial_noise(SHAPE, [99, 100])
    assert noise.shape == (2, *SHAPE)
    assert torch.equal(noise[:1], expected)
    assert len(generators) == 2


# --- bad settings ----------------------------------------------------------------------------


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(SamplingError, match="choose one of: ddpm, ddim, dpmpp-2m"):
        SamplerSettings("euler", 10)
    assert SAMPLER_NAMES == ("ddpm", "ddim", "dpmpp-2m")


@pytest.mark.parametrize("steps", [0, -3])
def test_too_few_steps(steps):
    with pytest.raises(SamplingError, match="at least 1"):
        SamplerSettings("ddim", steps)


def test_non_integer_steps():
    with pytest.raises(SamplingError, match="whole number"):
        SamplerSettings("ddim", 10.5)


def test_more_steps_than_trained():
    settings = SamplerSettings("ddpm", 101)
    schedule = ScheduleSpec(num_train_timesteps=100)
    with pytest.raises(SamplingError, match="trained with 100 diffusion steps"):
        settings.validate(schedule)
    noise, generators = initial_noise((1, 4, 4, 4), [0])
    with pytest.raises(SamplingError, match="at most 100"):
        next(denoise(GaussianDataEpsilon(schedule, 1.0), schedule, noise, generators, settings))


def test_negative_eta():
    with pytest.raises(SamplingError, match="eta must be 0 or positive"):
        SamplerSettings("ddim", 10, eta=-0.1)


def test_eta_on_sampler_without_one():
    with pytest.raises(SamplingError, match="'ddim' sampler only"):
        SamplerSettings("dpmpp-2m", 10, eta=0.5)


@pytest.mark.parametrize("seeds", [[], [-1], [1.5], [2**63]])
def test_bad_seeds(seeds):
    with pytest.raises(SamplingError):
        initial_noise((1, 4, 4, 4), seeds)


def test_generator_count_must_match_batch():
    schedule = ScheduleSpec(num_train_timesteps=10)
    noise, generators = initial_noise((1, 4, 4, 4), [0, 1])
    with pytest.raises(SamplingError, match="one per sample"):
        next(denoise(GaussianDataEpsilon(schedule, 1.0), schedule, noise, generators[:1], SamplerSettings("ddpm", 5)))


def test_sampling_step_is_last():
    assert SamplingStep(index=4, total=5, timestep=0).is_last
    assert not SamplingStep(index=0, total=5, timestep=99).is_last


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize(
    "settings", [SamplerSettings("ddpm", 20), SamplerSettings("ddim", 20, eta=0.5), SamplerSettings("dpmpp-2m", 20)]
)
def test_the_same_predictor_gives_the_same_samples_whatever_it_outputs(prediction_type, settings):
    """The exact Gaussian-data predictor, written as epsilon, as v and as x_0, samples the same volumes."""
    epsilon_schedule = ScheduleSpec(clip_sample=False)
    schedule = ScheduleSpec(clip_sample=False, prediction_type=prediction_type)
    eps_model = GaussianDataEpsilon(epsilon_schedule, 0.25)
    noise, generators = initial_noise((1, 4, 4, 4), [5], dtype=torch.float64)
    expected = _run(eps_model, epsilon_schedule, noise, generators, settings)
    noise, generators = initial_noise((1, 4, 4, 4), [5], dtype=torch.float64)
    ours = _run(ReparametrisedPredictor(eps_model, schedule), schedule, noise, generators, settings)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=1e-9, rtol=1e-9)


# --- the registry ----------------------------------------------------------------------------


def test_every_registered_sampler_has_a_stepper_and_nothing_else_does():
    from engine.sampler_registry import SAMPLERS
    from engine.samplers import STEPPERS

    assert tuple(STEPPERS) == SAMPLER_NAMES == tuple(SAMPLERS)
    assert all(info.default_steps >= 1 and info.label for info in SAMPLERS.values())


def test_the_registry_and_training_config_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import engine.sampler_registry, engine.training.config\n"
        "engine.sampler_registry.SamplerSettings('ddim', 5)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
