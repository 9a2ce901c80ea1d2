"""Our own reverse-diffusion loop: DDPM, DDIM and DPM-Solver++(2M), one step per ``yield``.

Why not MONAI's ``DiffusionInferer.sample``: it has no progress callback, cannot be
cancelled, seeds only through the global RNG (so sample k depends on the batch it is in) and
keeps intermediates only when ``t % intermediate_steps == 0``. :func:`denoise` is a Python
generator instead: it yields a :class:`SamplingStep` after every model evaluation, the
consumer draws progress, frames or a cancel button from that, and cancelling is simply not
asking for the next step (or calling ``.close()``): nothing runs after the last ``yield`` the
consumer received.

Conventions:

* Timesteps are MONAI's: integers ``0 .. T-1`` where ``T = schedule.num_train_timesteps``;
  ``abar(t) = prod_{s<=t} (1 - beta_s)`` (``ScheduleSpec.alphas_cumprod``) and, for the step
  after the last, ``abar = 1`` (the clean image; MONAI's ``set_alpha_to_one``).
* The network is called as ``model(x, timesteps=t_vec)`` with ``t_vec`` a float tensor of
  shape ``(B,)`` (MONAI's inferer passes float timesteps too); its output is read as the
  schedule's ``prediction_type`` says (:meth:`ScheduleSpec.split_prediction`): epsilon, v or x_0.
* Scalar coefficients are computed in float64 Python floats from the float64 schedule;
  tensors stay in the dtype of the noise (the model dtype).
* Seeds are per sample: every random draw for sample k comes from ``generators[k]`` and is
  drawn with shape ``(1, C, *spatial)``, then concatenated, so sample k is the same volume
  whatever batch it is generated in.

Timestep layout ("trailing", Lin et al. 2023, "Common diffusion noise schedules and sample
steps are flawed"): for N steps out of T, ``t_i = round(T - i*T/N) - 1`` for
``i = 0 .. N-1``; the first step is always ``T-1`` (pure noise, where ``x_T`` was drawn) and
the step after ``t_i`` is ``t_{i+1}`` (``abar = 1`` after the last). With N = T this is
``T-1, T-2, ..., 0``, MONAI's full DDPM chain. All three samplers share this layout, so the
same N gives the same model evaluations.

Other layouts (``SamplerSettings.spacing``, :func:`timestep_layout`), for models that were
sampled with MONAI's ``DDIMScheduler`` and must sample here exactly as there (the MONAI brain
LDM bundle, :mod:`engine.bundle`): ``"leading"`` (MONAI <= 1.5 and GenerativeModels:
``t_i = (N-1-i) * (T//N) + steps_offset``, e.g. 980, 960, ..., 0 for 50 of 1000) and
``"linspace"`` (MONAI >= 1.6: ``round(linspace(T-1-offset, 0, N)) + offset``, e.g. 999, 979,
958, ..., 0, whose ``step`` still jumps to the noise level at ``t - T//N``; DDIM only). Each
layout gives the timesteps the network is evaluated at and, per step, the timestep whose
alpha-bar the step goes to (-1: alpha-bar 1, MONAI's ``set_alpha_to_one``).

MONAI traps this module avoids (MONAI 1.4–1.6):

* ``DDPMScheduler.step`` uses ``alphas_cumprod[t-1]`` and ``betas[t]`` as if the previous
  step were always ``t-1``; with fewer than T steps each jump of T/N timesteps is treated as
  a jump of one, and the samples stay mostly noise (see :func:`ddpm_coefficients`).
* ``DDIMScheduler.set_timesteps`` (MONAI >= 1.6; up to 1.5 it laid the consistent "leading"
  layout) lays out ``linspace(T-1, 0, N).round()`` but ``step``
  takes the previous timestep as ``t - T//N``; the two agree only in the trailing layout when
  N divides T (e.g. T=1000, N=50: linspace gives 999, 979, ..., but the last step jumps from
  0 to -20, and for N=30 the steps drift apart). We carry the actual next timestep instead,
  except in the ``"linspace"`` layout, which reproduces MONAI's loop for models sampled with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.errors import SamplingError
from engine.sampler_registry import DEFAULT_SAMPLER, SamplerSettings, sampler_info
from engine.specs import ModelSpec, ScheduleSpec

FramePredicate = Callable[[int], bool]


def default_steps(spec: ModelSpec, sampler: str) -> int:
    """Steps to offer for ``sampler`` with this model: the model's own count for its default
    sampler, otherwise the sampler's usual count (:attr:`SamplerInfo.default_steps`)."""
    choice = spec.default_sampler
    if choice is not None and choice.name == sampler:
        return choice.steps
    return sampler_info(sampler).default_steps


def default_settings(
    spec: ModelSpec, *, sampler: str | None = None, steps: int | None = None, eta: float = 0.0
) -> SamplerSettings:
    """The settings to run this model with: what the user named (``sampler``, ``steps``,
    ``eta``), and for the rest the model's default sampler and :func:`default_steps`.

    The timestep spacing (and offset) of the model's default sampler go with that sampler
    whatever the steps: an imported MONAI model runs its DDIM with MONAI's layout at any step
    count; another sampler takes BrainSynth's trailing layout."""
    choice = spec.default_sampler
    if sampler is None:
        sampler = choice.name if choice is not None else DEFAULT_SAMPLER
    layout = {}
    if choice is not None and choice.name == sampler:
        layout = {"spacing": choice.spacing, "steps_offset": choice.steps_offset}
    return SamplerSettings(
        name=sampler, steps=default_steps(spec, sampler) if steps is None else steps, eta=eta, **layout
    )


@dataclass
class SamplingStep:
    """What :func:`denoise` yields after each denoising step.

    Attributes:
        index: 0-based number of the step just done (``0 .. total-1``).
        total: number of steps in the run.
        timestep: the model timestep (``0 .. T-1``) the network was evaluated at in this step.
        x_t: the batch after this step, shape ``(B, C, *spatial)``, model space; present when
            the caller asked for a frame at this index, and always on the last step, where it
            is the final sample.
        x0_pred: the network's prediction of the clean batch at this step (clamped to [-1, 1]
            when the schedule's ``clip_sample`` is set, as MONAI does), same shape; present
            when the caller asked for a frame at this index.
    """

    index: int
    total: int
    timestep: int
    x_t: torch.Tensor | None = None
    x0_pred: torch.Tensor | None = None

    @property
    def is_last(self) -> bool:
        return self.index == self.total - 1


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The trailing timestep layout ``t_i = round(T - i*T/N) - 1``, i = 0 .. N-1, descending.

    Rounds halves up, in exact integer arithmetic (no float drift for large T).

    Args:
        num_train_timesteps: T.
        steps: N, 1 <= N <= T.

    Returns:
        N strictly decreasing timesteps, the first ``T-1``.
    """
    big_t, n = num_train_timesteps, steps
    if not 1 <= n <= big_t:
        raise SamplingError(f"steps must be between 1 and {big_t} (got {n})")
    # round(T*(N-i)/N) = floor((2*T*(N-i) + N) / (2*N))
    return [(2 * big_t * (n - i) + n) // (2 * n) - 1 for i in range(n)]


def leading_timesteps(num_train_timesteps: int, steps: int, *, steps_offset: int = 0) -> list[int]:
    """MONAI <= 1.5's ``DDIMScheduler.set_timesteps`` layout: ``(N-1-i) * (T//N) + steps_offset``.

    Args:
        num_train_timesteps: T.
        steps: N, 1 <= N <= T.
        steps_offset: MONAI's ``steps_offset``.

    Returns:
        N strictly decreasing timesteps, the last ``steps_offset``.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise SamplingError(f"steps must be between 1 and {num_train_timesteps} (got {steps})")
    ratio = num_train_timesteps // steps
    return [(steps - 1 - i) * ratio + steps_offset for i in range(steps)]


def linspace_timesteps(num_train_timesteps: int, steps: int, *, steps_offset: int = 0) -> list[int]:
    """MONAI >= 1.6's ``DDIMScheduler.set_timesteps`` layout, computed as MONAI computes it.

    ``torch.linspace(T-1-offset, 0, N)`` in float32, rounded half to even, plus the offset: the
    same float32 arithmetic, so the same integers as MONAI's for every T and N.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise SamplingError(f"steps must be between 1 and {num_train_timesteps} (got {steps})")
    start = float(num_train_timesteps - 1 - steps_offset)
    return [int(t) + steps_offset for t in torch.linspace(start, 0.0, steps).round().long().tolist()]


def timestep_layout(num_train_timesteps: int, settings: SamplerSettings) -> tuple[list[int], list[int]]:
    """The run's timesteps and, per step, the timestep its update goes to (-1: alpha-bar 1).

    ``"trailing"`` and ``"leading"`` go from each timestep to the next one of the layout (for
    ``"leading"`` that is ``t - T//N``, exactly what MONAI's ``step`` takes); ``"linspace"``
    goes, as MONAI >= 1.6's ``DDIMScheduler.step`` does, to ``t - T//N`` whatever the next
    timestep of its own layout is (the two differ by up to a timestep for 50 of 1000: the
    model is then evaluated at t_{i+1} on a sample at noise level t_i - T//N; reproduced, not
    corrected, so that such a model samples exactly as under MONAI).

    Args:
        num_train_timesteps: T.
        settings: the sampler settings (steps, spacing, steps_offset).

    Returns:
        ``(timesteps, targets)``, two lists of ``settings.steps`` integers.
    """
    big_t, n = num_train_timesteps, settings.steps
    if settings.spacing == "trailing":
        timesteps = trailing_timesteps(big_t, n)
    elif settings.spacing == "leading":
        timesteps = leading_timesteps(big_t, n, steps_offset=settings.steps_offset)
    else:
        timesteps = linspace_timesteps(big_t, n, steps_offset=settings.steps_offset)
        return timesteps, [max(t - big_t // n, -1) for t in timesteps]
    return timesteps, [*timesteps[1:], -1]


def ddpm_coefficients(abar_t: float, abar_prev: float) -> tuple[float, float, float]:
    """Posterior q(x_prev | x_t, x_0) for a respaced DDPM step from t to the next timestep.

    With fewer than T steps, the chain jumps from t straight to the next kept timestep
    ``t_prev`` (Nichol & Dhariwal 2021, "Improved DDPMs", section 4): the respaced
    ``beta' = 1 - abar(t)/abar(t_prev)``, ``alpha' = 1 - beta'``, and the posterior (Ho et al.
    2020, eq. 7) is

        mean = sqrt(abar_prev) * beta' / (1 - abar_t) * x_0 + sqrt(alpha') * (1 - abar_prev) / (1 - abar_t) * x_t
        var  = (1 - abar_prev) / (1 - abar_t) * beta'      ("fixed small", MONAI's default)

    With all T steps ``t_prev = t - 1`` and this is exactly MONAI's ``DDPMScheduler.step``.
    MONAI uses ``alphas_cumprod[t-1]`` and ``betas[t]`` whatever the spacing, so with N < T
    it removes one step's worth of noise per jump: with T=1000 and N=100 on Gaussian data
    N(0, 0.25) and the exact noise predictor, its samples end with variance ≈ 0.77 (mostly
    noise), ours with ≈ 0.22. Ours falls a little short of 0.25 because the "fixed small"
    variance leaves out Var(x_0 | x_t); that gap closes as N grows (≈ 0.246 at N = T) and is
    what learned variances (Nichol & Dhariwal) fix. See tests/test_samplers.py.

    Args:
        abar_t: alpha-bar at the current timestep.
        abar_prev: alpha-bar at the next timestep (1.0 after the last step).

    Returns:
        ``(x0_coefficient, xt_coefficient, posterior_variance)``, float64.
    """
    beta = 1.0 - abar_t / abar_prev
    x0_coef = math.sqrt(abar_prev) * beta / (1.0 - abar_t)
    xt_coef = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
    # MONAI clamps the variance at 1e-20 for "fixed_small"; only the last step (variance 0)
    # is affected, and no noise is added there anyway.
    variance = max((1.0 - abar_prev) / (1.0 - abar_t) * beta, 0.0)
    return x0_coef, xt_coef, variance


def initial_noise(
    sample_shape: Sequence[int],
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """x_T for a batch, one seeded generator per sample.

    Each generator is seeded with its sample's seed and draws that sample's x_T first, so
    ``torch.manual_seed(s); torch.randn((1, *sample_shape))`` gives the same x_T on the CPU.
    The generators are then handed to :func:`denoise`, which draws every later random number
    for sample k from generator k.

    Args:
        sample_shape: shape of one sample, ``(C, *spatial)``, e.g. ``(1, 84, 128, 84)``.
        seeds: one non-negative integer seed per sample.
        device: where the generators and the noise live (CUDA generators draw on the GPU,
            so the same seed gives different noise on the CPU and on a GPU).
        dtype: dtype of the noise (the model's).

    Returns:
        ``(noise, generators)``: noise of shape ``(len(seeds), *sample_shape)``.

    Raises:
        SamplingError: for no seeds, or a seed that is not an integer in [0, 2**63).
    """
    device = torch.device(device)
    if len(seeds) == 0:
        raise SamplingError("at least one seed is needed")
    generators = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise SamplingError(f"a seed must be a whole number from 0 to 2**63-1 (got {seed!r})")
        generators.append(torch.Generator(device=device).manual_seed(seed))
    noise = torch.cat(
        [torch.randn((1, *sample_shape), generator=g, device=device, dtype=dtype) for g in generators], dim=0
    )
    return noise, generators


def _per_sample_noise(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, row k drawn from ``generators[k]``."""
    return torch.cat(
        [torch.randn((1, *like.shape[1:]), generator=g, device=like.device, dtype=like.dtype) for g in generators],
        dim=0,
    )


def _frames_wanted(want_frames: bool | FramePredicate, index: int) -> bool:
    return want_frames(index) if callable(want_frames) else bool(want_frames)


@dataclass
class StepOutput:
    """One step's result, as diffusers' schedulers return it from ``step``.

    Attributes:
        prev_sample: x at the next timestep of the layout (the final sample after the last step).
        pred_original_sample: the predicted clean x_0 the step used (clamped to [-1, 1] when
            the schedule's ``clip_sample`` is set, as MONAI does).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class Stepper:
    """The step math of one sampler over one run's timesteps: ``step(model_output, index, x)``.

    The contract of diffusers' schedulers, on our trailing layout: a stepper is made for one
    batch and one run (it may keep history, as DPM-Solver++ does), is given the network's raw
    output at ``timesteps[index]`` and the current x, and returns the next x. Coefficients are
    float64 Python floats from the float64 schedule; tensors stay in the dtype of ``x``.

    Args:
        schedule: the model's noise schedule (what the network predicts, clipping, alpha-bar).
        timesteps: the run's timesteps, from :func:`timestep_layout`.
        generators: one generator per sample, for samplers that draw noise at each step.
        settings: the sampler settings (``eta`` for DDIM).
        targets: per step, the timestep the update goes to (-1: alpha-bar 1); None: the next
            of ``timesteps`` (alpha-bar 1 after the last).
    """

    def __init__(
        self,
        schedule: ScheduleSpec,
        timesteps: Sequence[int],
        generators: Sequence[torch.Generator],
        settings: SamplerSettings,
        targets: Sequence[int] | None = None,
    ) -> None:
        self.schedule = schedule
        self.timesteps = list(timesteps)
        self.targets = [*self.timesteps[1:], -1] if targets is None else list(targets)
        self.generators = generators
        self.settings = settings
        self._abar = schedule.alphas_cumprod().tolist()  # float64 Python floats

    def step(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> StepOutput:
        """The update from ``timesteps[index]`` to ``targets[index]`` (abar = 1 after the last)."""
        last = index == len(self.timesteps) - 1
        a_t = self._abar[self.timesteps[index]]
        target = self.targets[index]
        a_prev = 1.0 if target < 0 else self._abar[target]
        x0, eps = self.schedule.split_prediction(model_output.to(x.dtype), x, a_t)
        if self.schedule.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        return StepOutput(self.update(x, x0, eps, a_t=a_t, a_prev=a_prev, last=last), x0)

    def update(
        self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, *, a_t: float, a_prev: float, last: bool
    ) -> torch.Tensor:
        """x at the next timestep from x, the predicted x_0 and eps; alpha-bar now and next."""
        raise NotImplementedError


class DDPMStepper(Stepper):
    """Ancestral DDPM with the respaced posterior of :func:`ddpm_coefficients`.

    ``x_prev = c0 * x0 + ct * x + sqrt(var) * z`` with fresh per-sample noise z (none on the
    last step). With ``steps == T`` it reproduces MONAI's ``DDPMScheduler`` +
    ``DiffusionInferer.sample`` (same noise stream when ``generators[0]`` is seeded like the
    global RNG).
    """

    def update(self, x, x0, eps, *, a_t, a_prev, last):
        x0_coef, xt_coef, variance = ddpm_coefficients(a_t, a_prev)
        x_next = x0_coef * x0 + xt_coef * x
        if not last and variance > 0.0:
            x_next = x_next + math.sqrt(variance) * _per_sample_noise(x, self.generators)
        return x_next


class DDIMStepper(Stepper):
    """DDIM, Song et al. 2021, eq. 12 and 16.

    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
    ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))``; as MONAI,
    ``eps`` is the one predicted from the raw network output even when ``x0`` was clamped.
    Equals MONAI's ``DDIMScheduler.step`` over the same timesteps (N dividing T; otherwise
    MONAI's own layout is inconsistent, see the module docstring), and MONAI's whole
    ``set_timesteps`` + ``step`` loop on its own layouts (``spacing`` "leading" or "linspace").
    """

    def update(self, x, x0, eps, *, a_t, a_prev, last):
        sigma = self.settings.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        direction = math.sqrt(max(1.0 - a_prev - sigma * sigma, 0.0))
        x_next = math.sqrt(a_prev) * x0 + direction * eps
        if sigma > 0.0:
            x_next = x_next + sigma * _per_sample_noise(x, self.generators)
        return x_next


class DPMSolverPP2MStepper(Stepper):
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv 2211.01095), Algorithm 2, data-prediction form.

    With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, ``lambda_t = log(alpha_t /
    sigma_t)`` and ``h_i = lambda_{t_i} - lambda_{t_{i-1}}``: the first step is first-order
    (``x = sigma_i/sigma_{i-1} x - alpha_i (e^{-h_i} - 1) x0``), later ones second order with
    ``r = h_{i-1} / h_i`` and ``D = (1 + 1/(2r)) x0_{i-1} - 1/(2r) x0_{i-2}``. The last step goes
    to sigma = 0 (lambda = +inf), where only the first-order update is defined: the result is
    the last predicted x0. Keeps the previous x0 and h between steps.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._previous_x0: torch.Tensor | None = None
        self._previous_h: float | None = None

    def update(self, x, x0, eps, *, a_t, a_prev, last):
        if last:
            # sigma_next = 0: the exponential integrator's first-order step is x0 itself.
            x_next = x0
        else:
            alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1.0 - a_t)
            alpha_n, sigma_n = math.sqrt(a_prev), math.sqrt(1.0 - a_prev)
            h = (math.log(alpha_n) - math.log(sigma_n)) - (math.log(alpha_t) - math.log(sigma_t))
            if self._previous_x0 is None:
                d = x0
            else:
                r = self._previous_h / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * self._previous_x0
            # -(e^{-h} - 1) via expm1: h is small for many steps and e^{-h} - 1 would cancel.
            x_next = (sigma_n / sigma_t) * x + (alpha_n * -math.expm1(-h)) * d
            self._previous_h = h
        self._previous_x0 = x0
        return x_next


STEPPERS: dict[str, type[Stepper]] = {
    "ddpm": DDPMStepper,
    "ddim": DDIMStepper,
    "dpmpp-2m": DPMSolverPP2MStepper,
}
"""The stepper of each sampler in :data:`engine.sampler_registry.SAMPLERS` (same keys)."""


def denoise(
    model: Callable[..., torch.Tensor],
    schedule: ScheduleSpec,
    noise: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings,
    *,
    want_frames: bool | FramePredicate = False,
) -> Iterator[SamplingStep]:
    """Run the reverse diffusion from ``noise`` = x_T, yielding after every step.

    The model is called once per step, under ``torch.inference_mode()``, as
    ``model(x, timesteps=torch.full((B,), float(t)))``; it should be in eval mode (the caller's
    job: :func:`engine.generation.generate` does it). Inference mode is entered per step and
    left before each ``yield``, so the consumer's own code between steps never runs in it.
    The step math is the sampler's :class:`Stepper` (:data:`STEPPERS`), on the timesteps of
    :func:`timestep_layout` (the trailing layout unless ``settings.spacing`` names another).

    Args:
        model: the network (or any callable with that signature), predicting what
            ``schedule.prediction_type`` names.
        schedule: the model's noise schedule.
        noise: x_T, shape ``(B, C, *spatial)``, in the model's dtype and on its device.
        generators: one ``torch.Generator`` per sample (on ``noise.device``), already past the
            x_T draw (see :func:`initial_noise`); used by ``ddpm`` and by ``ddim`` with eta > 0.
        settings: sampler, steps and eta.
        want_frames: ``True`` to attach ``x_t`` and ``x0_pred`` to every step, or a predicate
            ``want_frames(index) -> bool``; the last step always carries the final ``x_t``.

    Yields:
        One :class:`SamplingStep` per step, ``settings.steps`` in all.

    Raises:
        SamplingError: for steps > T or a batch/generator mismatch.
    """
    settings.validate(schedule)
    if noise.shape[0] != len(generators):
        raise SamplingError(f"{noise.shape[0]} noise volumes but {len(generators)} generators; give one per sample")

    timesteps, targets = timestep_layout(schedule.num_train_timesteps, settings)
    stepper = STEPPERS[settings.name](schedule, timesteps, generators, settings, targets)
    total = len(timesteps)
    batch = noise.shape[0]
    x = noise
    for index, t in enumerate(timesteps):
        with torch.inference_mode():
            t_vec = torch.full((batch,), float(t), device=x.device)
            out = stepper.step(model(x, timesteps=t_vec), index, x)
        x = out.prev_sample
        last = index == total - 1
        frames = _frames_wanted(want_frames, index)
        yield SamplingStep(
            index=index,
            total=total,
            timestep=t,
            x_t=x if (frames or last) else None,
            x0_pred=out.pred_original_sample if frames else None,
        )
