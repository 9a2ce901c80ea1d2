"""The high-level generation API (seeds, batches, previews, trajectories, cancel) and device choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.device import available_devices, describe_device, resolve_device
from engine.errors import SamplingError
from engine.generation import GeneratedVolume, GenerationProgress, GenerationRequest, generate, seeds_from
from engine.samplers import SamplerSettings
from engine.specs import PRESETS

SPEC = PRESETS["tiny"]  # 16 x 24 x 16 grid
GRID = SPEC.grid.shape
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The tiny preset with its zero-initialised layers re-drawn, so it predicts non-zero noise."""
    torch.manual_seed(0)
    return SPEC.build_random_model(seed=0)


def _volumes(events) -> list[GeneratedVolume]:
    return [v for event in events for v in event.finished]


class VoxelwiseEpsilon(torch.nn.Module):
    """A voxel-by-voxel noise predictor: no cross-sample arithmetic, so batching changes no bit."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gain * x) * (timesteps.view(-1, 1, 1, 1, 1) / 1000.0)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp-2m"])
def test_volume_k_is_exactly_the_same_in_any_batch(name):
    settings = SamplerSettings(name, 5, eta=0.5 if name == "ddim" else 0.0)
    seeds = [3, 4, 5]
    net = VoxelwiseEpsilon()
    singles = _volumes(
        generate(net, GenerationRequest(spec=SPEC, seeds=seeds, settings=settings, device="cpu", batch_size=1))
    )
    batched = _volumes(
        generate(net, GenerationRequest(spec=SPEC, seeds=seeds, settings=settings, device="cpu", batch_size=3))
    )
    pairs = _volumes(
        generate(net, GenerationRequest(spec=SPEC, seeds=seeds, settings=settings, device="cpu", batch_size=2))
    )
    for a, b, c in zip(singles, batched, pairs, strict=True):
        assert np.array_equal(a.array, b.array)
        assert np.array_equal(a.array, c.array)


@pytest.mark.parametrize(
    "settings", [SamplerSettings("ddpm", 4), SamplerSettings("dpmpp-2m", 4), SamplerSettings("ddim", 25)]
)
def test_volume_k_does_not_depend_on_batch_size_with_a_unet(damping_model, settings):
    spec, model = damping_model
    seeds = [3, 4, 5]
    singles = _volumes(
        generate(model, GenerationRequest(spec=spec, seeds=seeds, settings=settings, device="cpu", batch_size=1))
    )
    batched = _volumes(
        generate(model, GenerationRequest(spec=spec, seeds=seeds, settings=settings, device="cpu", batch_size=3))
    )
    assert [v.seed for v in singles] == [v.seed for v in batched] == seeds
    assert [v.index for v in batched] == [0, 1, 2]
    for a, b in zip(singles, batched, strict=True):
        assert a.array.shape == GRID
        assert a.array.dtype == np.float32
        # The UNet's output for a batch differs from single runs by ~2e-6 (kernel choice); the damping
        # model (conftest) contracts, so the chain keeps it there (measured <= 3e-6 here) whatever
        # the sampler: 2e-4 is a bound by construction, not by luck.
        np.testing.assert_allclose(a.array, b.array, atol=2e-4, rtol=1e-5)
        assert np.median(np.abs(a.array - b.array)) < 1e-6
    assert not np.allclose(batched[0].array, batched[1].array)  # different seeds, different volumes


def test_same_seed_same_volume(model):
    settings = SamplerSettings("ddpm", 3)
    first = _volumes(generate(model, GenerationRequest(spec=SPEC, seeds=[42], settings=settings, device="cpu")))
    second = _volumes(generate(model, GenerationRequest(spec=SPEC, seeds=[42], settings=settings, device="cpu")))
    assert np.array_equal(first[0].array, second[0].array)
    assert first[0].settings == settings


def test_closing_the_iterator_stops_model_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        model.train()
        events = generate(
            model, GenerationRequest(spec=SPEC, seeds=[0, 1], settings=SamplerSettings("ddim", 10), device="cpu")
        )
        assert model.training  # nothing runs before the first event is asked for
        for event in events:
            assert not model.training
            if event.step == 1:
                break
        events.close()
        assert len(calls) == 2
        assert model.training  # the caller's mode is back
    finally:
        handle.remove()
        model.eval()


def test_progress_events(model):
    events = list(
        generate(
            model,
            GenerationRequest(
                spec=SPEC,
                seeds=seeds_from(7, 3),
                settings=SamplerSettings("ddim", 5),
                device="cpu",
                batch_size=2,
                preview_every=2,
            ),
        )
    )
    assert all(isinstance(e, GenerationProgress) for e in events)
    assert len(events) == 2 * 5  # two batches of 5 steps
    assert [e.volume_indices for e in events] == [(0, 1)] * 5 + [(2,)] * 5
    assert [e.step for e in events] == [0, 1, 2, 3, 4] * 2
    assert [e.volumes_done for e in events] == [0, 0, 0, 0, 2, 2, 2, 2, 2, 3]
    assert all(e.volumes_total == 3 and e.steps == 5 for e in events)
    assert [len(e.finished) for e in events] == [0, 0, 0, 0, 2, 0, 0, 0, 0, 1]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    # Previews every 2nd step and on the last one: x_0 of the batch's first volume, on the grid.
    assert [e.preview is not None for e in events] == [True, False, True, False, True] * 2
    preview = events[4].preview
    assert preview.shape == GRID
    assert preview.dtype == np.float32
    # DDIM's last step lands on the predicted x_0, so the last preview is the finished volume.
    np.testing.assert_allclose(preview, events[4].finished[0].array)
    assert [v.seed for e in events for v in e.finished] == [7, 8, 9]


def test_no_previews_when_not_asked(model):
    events = list(
        generate(
            model,
            GenerationRequest(spec=SPEC, seeds=[0], settings=SamplerSettings("ddim", 3), device="cpu", preview_every=0),
        )
    )
    assert all(e.preview is None for e in events)


@pytest.mark.parametrize(("downsample", "shape"), [(1, GRID), (2, (8, 12, 8))])
def test_trajectory_frames(model, downsample, shape):
    volumes = _volumes(
        generate(
            model,
            GenerationRequest(
                spec=SPEC,
                seeds=[1, 2],
                settings=SamplerSettings("ddpm", 6),
                device="cpu",
                batch_size=2,
                trajectory_frames=3,
                trajectory_downsample=downsample,
            ),
        )
    )
    for volume in volumes:
        trajectory = volume.trajectory
        assert len(trajectory) == 3
        assert trajectory.steps == (0, 3, 5)
        assert trajectory.x_t_array().shape == (3, *shape)
        assert trajectory.x0_array().shape == (3, *shape)
        if downsample == 1:  # the last frame is the volume, in float16
            np.testing.assert_allclose(trajectory.x_t_array()[-1], volume.array, atol=5e-3)


def test_no_trajectory_by_default(model):
    volumes = _volumes(
        generate(model, GenerationRequest(spec=SPEC, seeds=[1], settings=SamplerSettings("ddim", 2), device="cpu"))
    )
    assert volumes[0].trajectory is None


def test_seeds_from():
    assert seeds_from(42, 3) == [42, 43, 44]
    with pytest.raises(SamplingError, match="at least 1"):
        seeds_from(0, 0)
    with pytest.raises(SamplingError, match="seed"):
        seeds_from(-1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": []}, "at least one seed"),
        ({"seeds": [1.5]}, "whole number"),
        ({"batch_size": 0}, "batch size"),
        ({"trajectory_frames": -1}, "trajectory frames"),
        ({"trajectory_downsample": 0}, "downsampling"),
        ({"preview_every": -1}, "preview interval"),
        ({"precision": "fp8"}, "choose one of: auto, fp32, bf16"),
        ({"device": "tpu"}, "unknown device"),
        ({"settings": SamplerSettings("ddim", 1001)}, "at most 1000"),
    ],
)
def test_bad_requests_fail_at_the_call(model, kwargs, message):
    arguments = {"seeds": [0], "settings": SamplerSettings("ddim", 2), "device": "cpu", **kwargs}
    with pytest.raises(SamplingError, match=message):
        generate(model, GenerationRequest(spec=SPEC, **arguments))


def test_bf16_is_refused_on_a_cpu_without_bf16_units(model, monkeypatch):
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: False)
    with pytest.raises(SamplingError, match=r"CPU has no bf16 units \(AVX-512 BF16 or AMX\); use fp32 or auto"):
        GenerationRequest(spec=SPEC, seeds=[0], settings=SamplerSettings("ddim", 2), device="cpu", precision="bf16")
    request = GenerationRequest(
        spec=SPEC, seeds=[0], settings=SamplerSettings("ddim", 2), device="cpu", precision="auto"
    )
    events = list(generate(model, request))
    assert events[-1].finished[0].provenance["precision"] == "fp32"
    assert events[-1].finished[0].provenance["precision_reason"] == "auto: fp32, no fast bf16 on this device"


# --- devices ---------------------------------------------------------------------------------


def test_resolve_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert resolve_device("auto").type == expected
    assert available_devices()[-1] == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_missing_cuda_names_what_is_there(name):
    with pytest.raises(SamplingError, match=r"no CUDA GPU is available.*available devices: .*cpu"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_missing_gpu_index():
    with pytest.raises(SamplingError, match="there is no GPU 99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(HAS_MPS, reason="needs a machine without MPS")
def test_missing_mps():
    with pytest.raises(SamplingError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", 3])
def test_unknown_device(name):
    with pytest.raises(SamplingError, match="device"):
        resolve_device(name)


def test_describe_device():
    assert describe_device("cpu").startswith("CPU (")
    assert "threads" in describe_device(torch.device("cpu"))


# --- the GPU benchmark's CPU-free part -------------------------------------------------------


def test_gpu_benchmark_flop_count_on_meta_matches_a_real_forward():
    """benchmarks/gpu_paper_preset.py counts FLOPs on the meta device; check that against a real run."""
    import importlib.util
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_paper_preset.py"
    module_spec = importlib.util.spec_from_file_location("gpu_paper_preset", path)
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)

    net = SPEC.build_model().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros((1, 1, *GRID)), timesteps=torch.full((1,), 500.0))
    assert bench.forward_flops(SPEC) == counter.get_total_flops() > 0


def test_threads_follow_the_cores_this_process_may_use():
    import os
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "from engine.device import physical_cores_available, set_cpu_threads\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "print(physical_cores_available(), set_cpu_threads(), torch.get_num_threads(), sep='|')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    cores, message, threads = out.split("|")
    assert (cores, threads) == ("1", "1")
    assert message == "1 compute thread(s), one per core (1 physical core(s) available to this process)"
    assert int(subprocess.run(
        [sys.executable, "-c", "from engine.device import physical_cores_available as p; print(p())"],
        capture_output=True, text=True, check=True,
    ).stdout) <= len(os.sched_getaffinity(0))  # fmt: skip
