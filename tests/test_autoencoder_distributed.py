"""The autoencoder trainer on the distributed path: 2 gloo CPU ranks under torchrun, no mocks.

As in :mod:`tests.test_training_distributed`, this module runs itself under torchrun
(``python -m tests.test_autoencoder_distributed MODE ...``, see :func:`_worker`): each rank
sets a real run up on the ``ldm-tiny`` preset and either takes one step of both networks or
trains a short run, then saves its view of the weights.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.specs import PRESETS
from engine.training.logging import read_csv
from engine.training.resume import RESUME_FILE
from tests.test_training_distributed import _finish, _run, _start
from tests.training_data import write_volumes

SPEC = PRESETS["ldm-tiny"]
# Adam's first step and its learning rate: large enough that an un-averaged step (each rank on
# its own gradient) moves weights far beyond rounding.
ONE_STEP_LR = 1e-3
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which the autoencoder trainer keeps
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ae-dist-data")
    write_volumes(folder, SPEC, 8)  # 6 training, 2 validation scans
    return folder


def _config(data_dir: str, out: str, **changes):
    from engine.training.autoencoder import AutoencoderTrainConfig

    values = {
        "preset": "ldm-tiny",
        "data": [data_dir],
        "out": str(Path(out) / "run"),
        "cache_dir": str(Path(out) / "cache"),
        "batch_size": 1,
        "lr": ONE_STEP_LR,
        "val_fraction": 0.25,
        "adversarial_warmup_epochs": 0,
        "sample_every": 0,
        "device": "cpu",
        "precision": "fp32",
        **changes,
    }
    return AutoencoderTrainConfig(**values)


def _one_step(data_dir: str, out: str, batch_size: int, only: int) -> None:
    """Set a run up and take its first step of both networks (adversarial terms on); save this
    rank's view in ``out/rank<R>.pt``: both networks' weights before and after, the gradients
    each optimizer stepped with (after DDP's averaging, from step pre-hooks), the volumes.

    Args:
        data_dir: the scans.
        out: where the run and the result go.
        batch_size: volumes per process.
        only: >= 0: step on that one volume of the first batch only (a one-process reference).
    """
    from engine.training.autoencoder import _AutoencoderTrainer
    from engine.training.distributed import setup

    config = _config(data_dir, out, batch_size=batch_size)
    ctx = setup(config.device)
    try:
        trainer = _AutoencoderTrainer.create(config, ctx, resume=False)
        nets = trainer.nets
        result: dict = {"before": {}, "after": {}, "grads": {}}
        for label, module, optimizer in (("g", nets.model, nets.opt_g), ("d", nets.disc, nets.opt_d)):
            result["before"][label] = {k: v.clone() for k, v in module.state_dict().items()}
            names = {p: name for name, p in module.named_parameters()}
            grads = result["grads"].setdefault(label, {})

            def keep(optimizer, args, kwargs, names=names, grads=grads) -> None:
                for group in optimizer.param_groups:
                    grads.update({names[p]: p.grad.detach().clone() for p in group["params"]})

            optimizer.register_step_pre_hook(keep)
        _, batches = trainer.epoch_batches(0)
        indices = batches[0] if only < 0 else [batches[0][only]]
        sums, volumes, _ = trainer.optimizer_step(indices, adversarial=True)
        result["after"] = {"g": nets.model.state_dict(), "d": nets.disc.state_dict()}
        result.update(indices=indices, sums=sums, volumes=volumes)
        torch.save(result, Path(out) / f"rank{ctx.rank}.pt")
    finally:
        ctx.shutdown()


def _short_run(data_dir: str, out: str) -> None:
    """Two epochs (the second adversarial) to the end; save each rank's final weights."""
    from engine.training.autoencoder import _AutoencoderTrainer
    from engine.training.distributed import setup

    config = _config(data_dir, out, epochs=2, adversarial_warmup_epochs=1, sample_every=1)
    ctx = setup(config.device)
    try:
        trainer = _AutoencoderTrainer.create(config, ctx, resume=False, callback=lambda line: print(line, flush=True))
        trainer.run()
        nets = trainer.nets
        weights = {"g": nets.model.state_dict(), "d": nets.disc.state_dict(), "ema": nets.ema.module.state_dict()}
        torch.save(weights, Path(out) / f"final{ctx.rank}.pt")
    finally:
        ctx.shutdown()


def test_two_ranks_step_both_networks_like_one_process_on_their_union(tmp_path, data_dir):
    two_ranks = _start(
        [
            *TORCHRUN,
            "-m",
            "tests.test_autoencoder_distributed",
            "step",
            str(data_dir),
            str(tmp_path / "two"),
            "1",
            "-1",
        ],
        stderr=subprocess.STDOUT,
    )
    try:
        # Meanwhile, one process: the union batch at once, and each of its volumes alone. The
        # mean of the two single-volume gradients is the union's in exact arithmetic; their
        # difference measures float rounding.
        _one_step(str(data_dir), str(tmp_path / "one"), 2, -1)
        for k in (0, 1):
            _one_step(str(data_dir), str(tmp_path / f"alone{k}"), 2, k)
    finally:
        done = _finish(two_ranks)
    assert done.returncode == 0, done.stdout
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    alone = [torch.load(tmp_path / f"alone{k}" / "rank0.pt", weights_only=True) for k in (0, 1)]

    # Each rank had one volume of its own; together they are the one-process batch.
    assert len(rank0["indices"]) == len(rank1["indices"]) == 1
    assert rank0["indices"] + rank1["indices"] == one["indices"]
    assert [a["indices"][0] for a in alone] == one["indices"]
    assert rank0["volumes"] == rank1["volumes"] == one["volumes"] == 2
    for key in ("l1", "kl", "g", "d"):  # the logged sums are the union's
        assert rank0["sums"][key] == rank1["sums"][key] == pytest.approx(one["sums"][key], rel=1e-5)
    assert rank0["sums"]["g"] > 0
    assert rank0["sums"]["d"] > 0

    for net in ("g", "d"):  # the autoencoder and the discriminator
        grads = one["grads"][net]
        assert grads.keys() == rank0["grads"][net].keys()
        assert len(grads) > 0
        largest = max(float(g.abs().max()) for g in grads.values())
        for key, before in one["before"][net].items():
            assert torch.equal(rank0["before"][net][key], before), key  # the same start
            # The ranks stepped with the same gradient and hold the same weights, bit for bit.
            assert torch.equal(rank0["after"][net][key], rank1["after"][net][key]), (net, key)
        for key, g in grads.items():
            assert torch.equal(rank0["grads"][net][key], rank1["grads"][net][key]), (net, key)
            mean_alone = (alone[0]["grads"][net][key] + alone[1]["grads"][net][key]) / 2
            # Rounding scales with the largest quantities in a backward pass: four times the
            # measured union-vs-mean difference plus 16 float32 ulps of the largest gradient.
            delta = 4 * (g - mean_alone).abs().max() + 2**-20 * largest
            assert (rank0["grads"][net][key] - g).abs().max() <= delta, (net, key)
            # Adam's first step moves a weight by lr * g / (|g| + eps): a gradient error delta
            # moves it by at most lr * delta * min(1 / eps, eps / (max(|g| - delta, 0) + eps)^2).
            slope = torch.minimum(
                torch.full_like(g, 1 / ADAM_EPS), ADAM_EPS / ((g.abs() - delta).clamp(min=0) + ADAM_EPS) ** 2
            )
            w = one["after"][net][key]
            bound = ONE_STEP_LR * delta * slope + 2**-21 * w.abs() + ONE_STEP_LR * 2**-20
            assert ((rank0["after"][net][key] - w).abs() <= bound).all(), (net, key)
        # And the step was real: most weights moved by about lr, far beyond rounding.
        moved = torch.cat([(one["before"][net][k] - one["after"][net][k]).abs().flatten() for k in grads])
        assert (moved > ONE_STEP_LR / 2).float().mean() > 0.9, net


def test_two_rank_run_ends_alike_writes_once_and_resumes(tmp_path, data_dir):
    out = tmp_path / "two"
    # A longer limit than the helper's 300 s: two launches of two ranks each, on a shared machine.
    done = _run(
        [*TORCHRUN, "-m", "tests.test_autoencoder_distributed", "run", str(data_dir), str(out), "1", "-1"], timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    final = [torch.load(out / f"final{r}.pt", weights_only=True) for r in (0, 1)]
    for net in ("g", "d", "ema"):
        assert final[0][net].keys() == final[1][net].keys()
        for key, value in final[0][net].items():
            assert torch.equal(value, final[1][net][key]), (net, key)
    # Rank 0 alone reports and writes: one line and one log row per epoch.
    assert "effective batch size 2 = 1 per process x 2 process(es); 3 steps per epoch" in done.stdout
    assert done.stdout.count("epoch 2, l1") == 1
    run = out / "run"
    rows = read_csv(run / "logs" / "epochs.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["generator_adv"] == ""
    assert float(rows[1]["generator_adv"]) > 0
    assert (run / "samples" / "epoch_0002.png").exists()
    state = torch.load(run / RESUME_FILE, weights_only=True)
    assert (state["epoch"], state["world_size"], state["global_step"]) == (2, 2, 6)
    # The saved weights are the ranks' (rank 0 wrote them).
    for key, value in final[0]["d"].items():
        assert torch.equal(state["extra"]["discriminator"][key], value), key

    resumed = _run(
        [*TORCHRUN, "-m", "training_cli", "train-autoencoder", "--resume", str(run), "--epochs", "3"], timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resuming after epoch 2") == 1
    assert resumed.stdout.count("epoch 3, l1") == 1
    assert [r["epoch"] for r in read_csv(run / "logs" / "epochs.csv")] == ["1", "2", "3"]
    state = torch.load(run / RESUME_FILE, weights_only=True)
    assert (state["epoch"], state["world_size"], state["global_step"]) == (3, 2, 9)


def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, data_dir):
    """As SLURM's signal does: stop after a step, save, resume; the end equals an unstopped run's."""
    from engine.training.autoencoder import saved_config, train_autoencoder

    def run(out: Path, stop_after: int | None) -> dict:
        config = _config(str(data_dir), str(out), epochs=2, adversarial_warmup_epochs=1, batch_size=2)
        polls = iter(range(10**6))
        lines: list[str] = []
        stop = (lambda: next(polls) + 1 >= stop_after) if stop_after else None
        train_autoencoder(config, callback=lines.append, stop_requested=stop)
        if stop_after:
            assert lines[-1] == f"stopped on request at step {stop_after}; --resume {config.run_dir} continues"
            state = torch.load(config.run_dir / RESUME_FILE, weights_only=True)
            assert (state["epoch"], state["step_in_epoch"]) == (1, stop_after - 3)  # 3 steps per epoch
            lines.clear()
            train_autoencoder(saved_config(config.run_dir), resume=True, callback=lines.append)
            assert f"resuming in epoch 2 after step {stop_after - 3} of it ({stop_after} in total)" in lines
        state = torch.load(config.run_dir / RESUME_FILE, weights_only=True)
        return {"state": state, "rows": read_csv(config.run_dir / "logs" / "epochs.csv")}

    stopped, plain = run(tmp_path / "stopped", 4), run(tmp_path / "plain", None)
    assert stopped["state"]["global_step"] == plain["state"]["global_step"] == 6
    for part in ("model", "ema"):
        for key, value in plain["state"][part].items():
            assert torch.equal(stopped["state"][part][key], value), (part, key)
    for key, value in plain["state"]["extra"]["discriminator"].items():
        assert torch.equal(stopped["state"]["extra"]["discriminator"][key], value), key
    # Each epoch logged once, with the same losses (the stopped epoch's sums were saved with it).
    assert [r["epoch"] for r in stopped["rows"]] == ["1", "2"]
    for a, b in zip(stopped["rows"], plain["rows"], strict=True):
        for column in ("l1", "kl", "generator_adv", "discriminator", "val_l1", "psnr"):
            assert a[column] == b[column], column


def _worker(mode: str, data_dir: str, out: str, batch_size: str, only: str) -> None:
    if mode == "step":
        _one_step(data_dir, out, int(batch_size), int(only))
    else:
        _short_run(data_dir, out)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
