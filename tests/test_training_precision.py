"""Training precision on the CPU: bf16 autocast learns, auto times a training step or falls back to
fp32, a resumed run keeps its precision, and the compute threads are set and said."""

from __future__ import annotations

import pytest
import torch

import engine.precision
from engine.checkpoint import load_checkpoint
from engine.precision import bf16_support
from engine.training.distributed import setup
from engine.training.errors import TrainingError
from engine.training.resume import RESUME_FILE, resume_config
from engine.training.trainer import _Trainer, train
from tests.training_data import tiny_run_config, write_volumes

HAS_BF16_CPU = bf16_support(torch.device("cpu")) is not None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from engine.specs import PRESETS

    folder = tmp_path_factory.mktemp("precision-data")
    write_volumes(folder, PRESETS["tiny"], 8)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_CACHE_DIR", str(tmp_path / "precision-cache"))
    return tmp_path / "precision-cache"


@pytest.fixture
def no_bf16_units(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)


def _config(tmp_path, data_dir, **overrides):
    return tiny_run_config(tmp_path, data_dir, **{"val_timesteps": 1, "device": "cpu", **overrides})


def _messages(events) -> list[str]:
    return [e.message for e in events if e.kind == "info"]


def _timings(monkeypatch, seconds: dict[str, float], calls: list[str]) -> None:
    """Run the real timed step once per precision but report fixed timings, so the choice is
    known in advance on a busy machine (what is tested is what the trainer does with it)."""

    def fixed(step, precision, *, repeats=3):
        step(precision)
        calls.append(precision)
        return seconds[precision]

    monkeypatch.setattr(engine.precision, "_seconds_per_step", fixed)


@pytest.mark.skipif(not HAS_BF16_CPU, reason="this CPU has no bf16 units")
def test_a_bf16_run_on_the_cpu_learns_and_keeps_weights_adam_and_ema_in_fp32(tmp_path, data_dir, cache):
    config = _config(tmp_path, data_dir, epochs=4, batch_size=1, val_fraction=0.0, lr=2e-3, precision="bf16")
    events = []
    trainer = _Trainer.create(config, setup("cpu"), resume=False, callback=events.append)
    assert trainer.precision == "bf16"
    assert "precision: bf16 (asked for)" in _messages(events)
    train_set, schedule = trainer.data.train_set, trainer.spec.schedule
    x0 = torch.stack([train_set[i] for i in range(len(train_set))]).repeat_interleave(4, dim=0)
    big_t = schedule.num_train_timesteps
    t = torch.tensor([int((j + 0.5) * big_t / 4) for j in range(4)] * len(train_set))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
    x_t = schedule.add_noise(x0, eps, t)
    target = schedule.training_target(x0, eps, *schedule.noise_coefficients(t, ndim=x0.ndim))

    @torch.no_grad()
    def probe_loss() -> float:  # in fp32, so both measurements see one arithmetic
        return float(torch.nn.functional.mse_loss(trainer.nets.model.eval()(x=x_t, timesteps=t), target))

    start = probe_loss()
    result = trainer.run()
    assert result.global_step == 32
    assert probe_loss() < 0.7 * start
    nets = trainer.nets
    assert {p.dtype for p in nets.model.parameters()} == {torch.float32}
    assert {p.dtype for p in nets.ema.module.parameters()} == {torch.float32}
    adam = [v for state in nets.optimizer.state.values() for v in state.values() if v.dim() > 0]
    assert adam
    assert {v.dtype for v in adam} == {torch.float32}
    training = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").provenance["training"]
    assert (training["precision"], training["precision_reason"]) == ("bf16", "bf16 (asked for)")


def test_auto_is_fp32_and_bf16_is_refused_on_a_cpu_without_bf16_units(tmp_path, data_dir, cache, no_bf16_units):
    events = []
    train(_config(tmp_path, data_dir, precision="auto"), callback=events.append)
    assert "precision: auto: fp32, no fast bf16 on this device" in _messages(events)
    training = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").provenance["training"]
    assert training["precision"] == "fp32"
    assert training["precision_reason"].startswith("auto: fp32")
    assert not cache.exists()  # nothing was timed
    with pytest.raises(TrainingError, match=r"this CPU has no bf16 units \(AVX-512 BF16 or AMX\)"):
        train(_config(tmp_path / "b", data_dir, precision="bf16"))
    with pytest.raises(TrainingError, match="fp16 mixed precision needs a CUDA GPU"):
        train(_config(tmp_path / "c", data_dir, precision="fp16"))


def test_auto_times_a_training_step_that_leaves_the_run_unchanged(tmp_path, data_dir, cache, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # the timing path on any CPU
    calls: list[str] = []
    _timings(monkeypatch, {"fp32": 0.02, "bf16": 0.01}, calls)
    events = []
    train(_config(tmp_path / "a", data_dir, precision="auto"), callback=events.append)
    assert calls == ["fp32", "bf16"]
    (line,) = [m for m in _messages(events) if m.startswith("precision:")]
    assert line.startswith("precision: auto: bf16, 2.0x faster than fp32")
    assert "training step" in line
    assert "of batch 2" in line
    # The second run reads the cache; timing or not, the runs train the same weights bit for bit.
    calls.clear()
    train(_config(tmp_path / "b", data_dir, precision="auto"))
    assert calls == []
    weights = [
        load_checkpoint(tmp_path / run / "run" / "checkpoints" / "last.safetensors").weights for run in ("a", "b")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (
        load_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.safetensors").provenance["training"]["precision"]
        == "bf16"
    )


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path, data_dir, cache, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    _timings(monkeypatch, {"fp32": 0.02, "bf16": 0.01}, [])
    polls = iter(range(100))
    config = _config(tmp_path, data_dir, epochs=2, precision="auto")
    assert train(config, stop_requested=lambda: next(polls) >= 1).stopped_early
    state = torch.load(tmp_path / "run" / RESUME_FILE, weights_only=True)
    assert state["precision"] == "bf16"
    # Now a timing would pick fp32 (another machine, a new cache): the run stays in bf16.
    monkeypatch.setenv("BRAINSYNTH_CACHE_DIR", str(tmp_path / "another-cache"))
    calls: list[str] = []
    _timings(monkeypatch, {"fp32": 0.01, "bf16": 0.02}, calls)
    events = []
    result = train(resume_config(tmp_path / "run"), resume=True, callback=events.append)
    assert result.global_step == 6
    assert calls == []
    (line,) = [m for m in _messages(events) if m.startswith("precision:")]
    assert line.startswith("precision: bf16, kept from the run's start (auto: bf16, 2.0x faster")
    training = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").provenance["training"]
    assert training["precision"] == "bf16"
    # A run resumed on a CPU without bf16 units cannot keep it: one clear line, not a slow run.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(TrainingError, match="the run trained in bf16 and keeps it when resumed, but bf16 training"):
        train(resume_config(tmp_path / "run", {"epochs": 3}), resume=True)


def test_a_state_from_before_precision_was_saved_resumes_in_fp32_on_the_cpu(tmp_path, data_dir, cache, monkeypatch):
    polls = iter(range(100))
    assert train(_config(tmp_path, data_dir, epochs=2, precision="auto"), stop_requested=lambda: next(polls) >= 1)
    path = tmp_path / "run" / RESUME_FILE
    state = torch.load(path, weights_only=True)
    del state["precision"], state["precision_reason"]
    torch.save(state, path)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # auto would now time bf16
    calls: list[str] = []
    _timings(monkeypatch, {"fp32": 0.02, "bf16": 0.01}, calls)
    events = []
    train(resume_config(tmp_path / "run"), resume=True, callback=events.append)
    assert calls == []
    assert any(m.startswith("precision: fp32, kept from the run's start") for m in _messages(events))


def test_the_compute_threads_are_one_per_core_unless_asked_and_said(tmp_path, data_dir, monkeypatch):
    from engine.device import physical_cores_available

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    events = []
    _Trainer.create(_config(tmp_path / "a", data_dir, precision="fp32"), setup("cpu"), resume=False,
                    callback=events.append)  # fmt: skip
    cores = physical_cores_available()
    assert torch.get_num_threads() == cores
    assert f"using {cores} compute thread(s), one per core ({cores} physical core(s)" in " ".join(_messages(events))
    events.clear()
    _Trainer.create(_config(tmp_path / "b", data_dir, precision="fp32", cpu_threads=1), setup("cpu"), resume=False,
                    callback=events.append)  # fmt: skip
    assert torch.get_num_threads() == 1
    assert any(m.startswith("using 1 compute thread(s), asked for") for m in _messages(events))
