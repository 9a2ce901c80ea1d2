"""The training loop in one process: outputs, checkpoints, NaN stop, transfer learning, noise."""

from __future__ import annotations

import csv

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.training.errors import TrainingError
from engine.training.logging import read_csv
from engine.training.resume import resume_config
from engine.training.trainer import steps_per_epoch, train
from tests.training_data import tiny_run_config, write_volumes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from engine.specs import PRESETS

    folder = tmp_path_factory.mktemp("train-data")
    write_volumes(folder, PRESETS["tiny"], 8)
    return folder


def _read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _config(tmp_path, data_dir, **overrides):
    return tiny_run_config(tmp_path, data_dir, **{"precision": "fp32", **overrides})


def test_a_run_writes_split_logs_figures_and_loadable_checkpoints(tmp_path, data_dir):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    config = _config(
        tmp_path,
        data_dir,
        data=[str(data_dir), str(extra)],
        epochs=2,
        grad_accum=2,
        checkpoint_every=1,
        sample_every=2,
        sample_count=2,
        sample_steps=2,
        max_failed_fraction=0.2,
    )
    events = []
    result = train(config, callback=events.append)
    run = tmp_path / "run"

    # 8 scans, 2 to validation; 6 training volumes in micro-batches of 2, 2 per step → 2 steps per epoch.
    per_epoch = steps_per_epoch(6, batch_size=2, grad_accum=2, world_size=1)
    assert per_epoch == 2
    assert result.global_step == 2 * per_epoch
    assert result.epochs_done == 2
    assert result.effective_batch_size == 4
    steps = read_csv(run / "logs" / "steps.csv")
    assert [int(r["global_step"]) for r in steps] == [1, 2, 3, 4]
    epochs = read_csv(run / "logs" / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert all(float(r["val_loss"]) > 0 and float(r["val_loss_ema"]) > 0 for r in epochs)
    assert [e.summary.epoch for e in events if e.kind == "epoch"] == [1, 2]

    # The bad file is skipped, listed with its reason and reported.
    failed = _read_rows(run / "failed_files.csv")
    assert [r["path"] for r in failed] == [str(extra / "broken.nii.gz")]
    assert "broken.nii.gz" in failed[0]["reason"]
    assert any(e.kind == "warning" and "broken.nii.gz" in e.message for e in events)
    split = _read_rows(run / "split.csv")
    assert sorted(r["split"] for r in split) == ["train"] * 6 + ["val"] * 2

    for name in ("last", "best", "epoch_0001", "epoch_0002"):
        assert (run / "checkpoints" / f"{name}.safetensors").exists(), name
    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert ckpt.has_ema
    assert ckpt.spec.name == "tiny"
    assert ckpt.provenance["training"]["global_step"] == 4
    assert any(not torch.equal(ckpt.weights[k], ckpt.ema_weights[k]) for k in ckpt.weights)
    ckpt.build_model()  # what the app does with it
    for png in (run / "loss_curve.png", run / "samples" / "epoch_0002.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(TrainingError, match="already holds a training run"):
        train(config)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    # A learning rate of 1e30 makes the weights overflow after one step: a real divergence.
    with pytest.raises(TrainingError, match=r"loss became (nan|inf).*no epoch had finished"):
        train(_config(tmp_path / "a", data_dir, lr=1e30))
    # The split was written before training started.
    assert (tmp_path / "a" / "run" / "split.csv").exists()

    config = _config(tmp_path, data_dir)
    train(config)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    before = last.read_bytes()
    diverging = resume_config(tmp_path / "run", {"epochs": 2, "lr": 1e30})
    expected = r"loss became (nan|inf) at epoch 2.*last good checkpoint is .*last\.safetensors"
    with pytest.raises(TrainingError, match=expected):
        train(diverging, resume=True)
    assert last.read_bytes() == before
    ckpt = load_checkpoint(last)
    assert all(torch.isfinite(w).all() for w in ckpt.weights.values())


def test_init_from_with_frozen_encoder_levels(tmp_path, data_dir, tiny_checkpoint):
    source = load_checkpoint(tiny_checkpoint)
    config = _config(tmp_path, data_dir, init_from=str(tiny_checkpoint), freeze_encoder_levels=1, lr=1e-3)
    train(config)
    tuned = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    frozen = [k for k in tuned.weights if k.startswith(("conv_in.", "down_blocks.0."))]
    trained = [k for k in tuned.weights if k.startswith(("up_blocks.", "out."))]
    assert frozen
    assert trained
    # Started from the EMA weights of the source (the default), frozen levels kept exactly.
    assert all(torch.equal(tuned.weights[k], source.ema_weights[k]) for k in frozen)
    assert any(not torch.equal(tuned.weights[k], source.ema_weights[k]) for k in trained)
    assert tuned.provenance["training"]["init_from_weights"] == "ema"

    other = tmp_path / "demo.safetensors"
    from engine.specs import PRESETS

    demo = PRESETS["demo"]
    save_checkpoint(other, spec=demo, weights=demo.build_model().state_dict())
    with pytest.raises(TrainingError, match="does not match preset 'tiny'"):
        train(_config(tmp_path / "b", data_dir, init_from=str(other)))


def test_a_stop_request_saves_the_state_and_a_resume_finishes_the_run(tmp_path, data_dir):
    polls = iter(range(100))
    config = _config(tmp_path, data_dir, epochs=2)
    # Polled once per optimizer step: asking on the second poll stops after step 2 of 3.
    result = train(config, stop_requested=lambda: next(polls) >= 1)
    assert result.stopped_early
    assert result.global_step == 2
    state = torch.load(tmp_path / "run" / "resume" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 2, 2)
    finished = train(resume_config(tmp_path / "run"), resume=True)
    assert not finished.stopped_early
    assert finished.global_step == 6
    assert finished.epochs_done == 2
    steps = read_csv(tmp_path / "run" / "logs" / "steps.csv")
    assert [int(r["global_step"]) for r in steps] == [1, 2, 3, 4, 5, 6]


def test_a_v_prediction_preset_trains_from_epsilon_weights_and_samples(
    tmp_path, data_dir, tiny_checkpoint, monkeypatch
):
    from dataclasses import replace

    import numpy as np

    from engine.generation import GenerationRequest, generate
    from engine.samplers import SamplerSettings
    from engine.specs import PRESETS, ScheduleSpec

    v_tiny = replace(PRESETS["tiny"], schedule=ScheduleSpec(prediction_type="v_prediction"))
    monkeypatch.setitem(PRESETS, "tiny", v_tiny)
    events = []
    train(_config(tmp_path, data_dir, init_from=str(tiny_checkpoint)), callback=events.append)
    messages = " ".join(str(getattr(e, "message", "")) for e in events)
    assert "predicted epsilon; this run trains them to predict v_prediction" in messages
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert ckpt.spec.schedule.prediction_type == "v_prediction"
    run = generate(
        ckpt.build_model(),
        GenerationRequest(spec=ckpt.spec, seeds=[0], settings=SamplerSettings("dpmpp-2m", 3), device="cpu"),
    )
    (volume,) = [v for e in run for v in e.finished]
    assert np.isfinite(volume.array).all()


def test_training_learns_the_tiny_set(tmp_path, data_dir):
    """32 optimizer steps bring the loss on fixed noise and timesteps well below where it starts."""
    from engine.training.distributed import setup
    from engine.training.trainer import _Trainer

    # No validation split: all 8 scans train, 8 steps of one volume per epoch.
    config = _config(tmp_path, data_dir, epochs=4, batch_size=1, val_fraction=0.0, lr=2e-3)
    trainer = _Trainer.create(config, setup("cpu"), resume=False)
    train_set, schedule = trainer.data.train_set, trainer.spec.schedule
    assert len(train_set) == 8
    # The probe: every training volume at 8 stratified timesteps, with noise fixed by a seed
    # of its own, so the two measurements see exactly the same inputs.
    k = 8
    x0 = torch.stack([train_set[i] for i in range(len(train_set))]).repeat_interleave(k, dim=0)
    big_t = schedule.num_train_timesteps
    t = torch.tensor([int((j + 0.5) * big_t / k) for j in range(k)] * len(train_set))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
    x_t = schedule.add_noise(x0, eps, t)
    target = schedule.training_target(x0, eps, *schedule.noise_coefficients(t, ndim=x0.ndim))

    @torch.no_grad()
    def probe_loss() -> float:
        model = trainer.nets.model.eval()
        return float(torch.nn.functional.mse_loss(model(x=x_t, timesteps=t), target))

    start = probe_loss()
    result = trainer.run()
    end = probe_loss()
    assert result.global_step == 32
    # A fresh MONAI UNet outputs zeros, so the start is the mean squared noise, about 1.
    assert start == pytest.approx(float((target**2).mean()), rel=1e-6)
    assert end < 0.7 * start, (start, end)


def test_a_damaged_or_foreign_resume_state_is_one_clear_error(tmp_path, data_dir):
    from engine.training.resume import RESUME_FILE

    train(_config(tmp_path, data_dir))
    state_file = tmp_path / "run" / RESUME_FILE
    resume = resume_config(tmp_path / "run", {"epochs": 2})
    state = torch.load(state_file, weights_only=True)
    del state["global_step"]
    torch.save(state, state_file)
    with pytest.raises(TrainingError, match=r"state\.pt is damaged \('global_step' is missing or invalid\)"):
        train(resume, resume=True)
    torch.save({"format": "someone-else's", "version": 1}, state_file)
    with pytest.raises(TrainingError, match=r"state\.pt is not a resume state this version of BrainSynth can read"):
        train(resume, resume=True)
    state_file.write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match=r"cannot read the resume state .*state\.pt"):
        train(resume, resume=True)


def test_progress_is_saved_as_one_object_and_older_states_without_cpu_seconds_still_load(tmp_path):
    from engine.training.resume import TrainingProgress

    progress = TrainingProgress(epoch=3, step_in_epoch=2, global_step=14, best_metric=0.25, elapsed_s=9.5)
    progress.record_step(loss=0.5, volumes=4.0, seconds=1.0, cpu_seconds=1.5)
    assert (progress.step_in_epoch, progress.global_step, progress.epoch_mean_loss) == (3, 15, 0.5)
    saved = progress.to_dict()
    assert TrainingProgress.from_dict(saved, source=tmp_path) == progress
    del saved["cpu_s"]  # states written before CPU seconds were counted
    assert TrainingProgress.from_dict(saved, source=tmp_path).cpu_s == 0.0
    progress.next_epoch()
    assert (progress.epoch, progress.step_in_epoch, progress.epoch_volumes, progress.global_step) == (4, 0, 0.0, 15)
