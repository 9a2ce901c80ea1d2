"""Precision chosen at run time: what the device supports, a timing of one step, the cache, and quality."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.errors import SamplingError
from engine.generation import GenerationRequest, generate, resolve_precision
from engine.precision import bf16_support, check_precision, choose_precision
from engine.resources import bundled_checkpoint
from engine.samplers import SamplerSettings

CPU = torch.device("cpu")
HAS_BF16_CPU = bf16_support(CPU) is not None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bf16_units(monkeypatch):
    """Pretend the CPU has bf16 units, so the timing path runs on any machine."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)


def _sleeping_step(seconds: dict[str, float], calls: list[str]):
    def step(precision: str) -> None:
        calls.append(precision)
        time.sleep(seconds[precision])

    return step


def test_explicit_choices_are_checked_not_timed():
    assert choose_precision("fp32", device=CPU).reason == "fp32 (asked for)"
    with pytest.raises(SamplingError, match="choose one of: auto, fp32, bf16"):
        check_precision("fp16", CPU)


def test_auto_keeps_bf16_only_when_a_step_is_faster(cache, bf16_units):
    calls: list[str] = []
    fast = choose_precision("auto", device=CPU, step=_sleeping_step({"fp32": 0.03, "bf16": 0.005}, calls))
    assert fast.precision == "bf16"
    assert "faster than fp32" in fast.reason
    assert "AMX" in fast.reason
    assert fast.seconds_per_step["bf16"] < fast.seconds_per_step["fp32"]
    assert calls.count("fp32") == calls.count("bf16") == 4  # one warm-up, three timed
    slow = choose_precision("auto", device=CPU, step=_sleeping_step({"fp32": 0.005, "bf16": 0.03}, []))
    assert slow.precision == "fp32"
    assert "bf16 was not faster" in slow.reason


def test_the_timing_is_cached_per_network_and_device(cache, bf16_units):
    calls: list[str] = []
    step = _sleeping_step({"fp32": 0.02, "bf16": 0.002}, calls)
    first = choose_precision("auto", device=CPU, step=step, cache_key="net-a")
    assert calls
    assert (cache / "precision-timings.json").is_file()
    calls.clear()
    again = choose_precision("auto", device=CPU, step=step, cache_key="net-a")
    assert calls == []
    assert again == first
    choose_precision("auto", device=CPU, step=step, cache_key="net-b")
    assert calls  # another network is timed afresh


def test_a_damaged_cache_is_timed_again(cache, bf16_units):
    cache.mkdir()
    (cache / "precision-timings.json").write_text("{not json")
    calls: list[str] = []
    assert choose_precision(
        "auto", device=CPU, step=_sleeping_step({"fp32": 0.02, "bf16": 0.002}, calls), cache_key="k"
    )
    assert calls


@pytest.mark.skipif(not HAS_BF16_CPU, reason="this CPU has no bf16 units")
def test_bf16_and_fp32_give_the_same_volume_of_the_bundled_model(cache):
    """bf16 autocast changes rounding only: the same seed gives the same brain (25 DPM-Solver++ steps)."""
    ckpt = load_checkpoint(bundled_checkpoint())
    model = ckpt.build_model()
    volumes = {}
    for precision in ("fp32", "bf16"):
        request = GenerationRequest(
            spec=ckpt.spec, seeds=[3], settings=SamplerSettings("dpmpp-2m", 25), device="cpu", precision=precision
        )
        (volumes[precision],) = [v.array for e in generate(model, request) for v in e.finished]
    a, b = volumes["fp32"].ravel(), volumes["bf16"].ravel()
    assert np.corrcoef(a, b)[0, 1] >= 0.999
    assert float(np.sqrt(np.mean((a - b) ** 2))) < 0.02  # model units, [-1, 1]


def test_auto_records_what_it_chose_in_every_sidecar(cache, tiny_spec):
    model = tiny_spec.build_random_model(seed=0)
    request = GenerationRequest(spec=tiny_spec, seeds=[0], settings=SamplerSettings("ddim", 2), device="cpu",
                                precision="auto")  # fmt: skip
    resolved = resolve_precision(model, request)
    assert resolved.precision in ("fp32", "bf16")
    assert resolved.precision_reason.startswith("auto: ")
    assert resolve_precision(model, resolved) is resolved  # resolving twice changes nothing
    (volume,) = [v for e in generate(model, resolved) for v in e.finished]
    assert volume.provenance["precision"] == resolved.precision
    assert volume.provenance["precision_reason"] == resolved.precision_reason
