"""Compiled sampling (``torch.compile`` of the UNet): the same volumes as eager, compiled once per process."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.compilation import compiled_call
from engine.errors import SamplingError
from engine.generation import GenerationRequest, generate
from engine.samplers import SamplerSettings


def _volumes(model, spec, *, compile: bool) -> np.ndarray:
    request = GenerationRequest(
        spec=spec, seeds=[0, 1], settings=SamplerSettings("ddim", 4), device="cpu", precision="fp32",
        batch_size=2, compile=compile,
    )  # fmt: skip
    return np.stack([v.array for e in generate(model, request) for v in e.finished])


def test_compiled_sampling_gives_the_eager_volumes_and_compiles_once(damping_model):
    """Inductor fuses and orders float operations its own way: equal up to rounding (the damping
    network contracts differences, so the bound holds by construction, not by luck)."""
    spec, model = damping_model
    eager = _volumes(model, spec, compile=False)
    shape = (2, spec.unet.in_channels, *spec.grid.shape)
    # Compiles and warms up here (tens of seconds on 2 CPU cores), for every kind of input the
    # sampler gives, so sampling itself never compiles again.
    first = compiled_call(model, device=torch.device("cpu"), sample_shape=shape, precision="fp32")
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = _volumes(model, spec, compile=True)
    assert np.abs(compiled - eager).max() < 1e-4
    started = time.perf_counter()
    again = _volumes(model, spec, compile=True)
    assert time.perf_counter() - started < 10  # the cached call ran
    np.testing.assert_array_equal(again, compiled)
    assert compiled_call(model, device=torch.device("cpu"), sample_shape=shape, precision="fp32") is first


def test_an_unknown_compile_mode_is_one_clear_error(tiny_spec):
    model = tiny_spec.build_random_model(seed=0)
    with pytest.raises(SamplingError, match="unknown compile mode 'fastest'; choose one of: default"):
        compiled_call(model, device=torch.device("cpu"), sample_shape=(1, 1, 16, 24, 16), precision="fp32",
                      mode="fastest")  # fmt: skip


def test_sample_takes_compile_into_its_request():
    from training_cli.main import build_parser

    args = build_parser().parse_args(["sample", "--out", "x", "--compile"])
    assert args.compile is True
    assert build_parser().parse_args(["sample", "--out", "x"]).compile is False
