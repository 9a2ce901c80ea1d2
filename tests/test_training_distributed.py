"""Real processes: a 2-rank gloo run under torchrun, and a SIGKILL mid-epoch then --resume.

These launch ``brainsynth-cli train`` exactly as a user or a SLURM job would (no mocks):
torchrun sets RANK/WORLD_SIZE/MASTER_ADDR and the trainer joins the gloo process group.
The gradient-averaging check runs this module itself under torchrun (``python -m
tests.test_training_distributed``, see :func:`_one_step`): each rank sets a real run up and
takes one optimizer step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.training.distributed import launch_environment, shard_indices
from engine.training.logging import read_csv
from engine.training.resume import RESUME_FILE
from engine.training.trainer import steps_per_epoch
from tests.training_data import write_volumes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from engine.specs import PRESETS

    folder = tmp_path_factory.mktemp("dist-data")
    write_volumes(folder, PRESETS["tiny"], 8)
    return folder


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: deterministic reductions and no oversubscription of the 2 cores.
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS"):
        env.pop(key, None)
    return env


def _start(command: list[str], *, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start a command in its own process group, so that a timeout can kill torchrun's workers too."""
    return subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=stdout, stderr=stderr, text=True, start_new_session=True
    )


def _finish(proc: subprocess.Popen, *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a started command; on timeout kill its process group and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(command: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command to its end (see :func:`_start`, :func:`_finish`)."""
    return _finish(_start(command), timeout=timeout)


def _train_args(data_dir: Path, out: Path, cache: Path, **options) -> list[str]:
    args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--val-fraction",
        "0.25",
        "--val-timesteps",
        "1",
        "--sample-every",
        "0",
        "--no-tensorboard",
        "--device",
        "cpu",
    ]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_two_process_gloo_run_under_torchrun(tmp_path, data_dir):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port
        "--nproc-per-node",
        "2",
        "-m",
        "training_cli",
        *_train_args(data_dir, out, tmp_path / "cache", epochs=2, batch_size=1),
    ]
    done = _run(command)
    assert done.returncode == 0, done.stdout + done.stderr
    # 6 training volumes over 2 ranks with 1 per step → 3 steps per epoch, effective batch 2.
    expected = 2 * steps_per_epoch(6, batch_size=1, grad_accum=1, world_size=2)
    assert expected == 6
    assert "effective batch size 2 = 1 per process x 1 accumulation x 2 process(es)" in done.stdout
    # Rank 0 alone reports and writes: one line per epoch, one row per step.
    assert done.stdout.count("brainsynth-train epoch=") == 2
    steps = read_csv(out / "logs" / "steps.csv")
    assert [int(r["global_step"]) for r in steps] == list(range(1, expected + 1))
    ckpt = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert ckpt.provenance["training"]["world_size"] == 2
    assert ckpt.provenance["training"]["global_step"] == expected
    ckpt.build_model()


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.safetensors").weights


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, data_dir):
    cli = [sys.executable, "-m", "training_cli"]
    options = {"epochs": 2, "batch_size": 1, "resume_every_steps": 2, "precision": "fp32"}
    per_epoch = steps_per_epoch(6, batch_size=1, grad_accum=1, world_size=1)
    total = 2 * per_epoch

    # The uninterrupted reference runs alongside (one thread each, two cores).
    reference = tmp_path / "reference"
    plain = _start(cli + _train_args(data_dir, reference, tmp_path / "cache-ref", **options), stderr=subprocess.STDOUT)
    killed = tmp_path / "killed"
    proc = _start(cli + _train_args(data_dir, killed, tmp_path / "cache", **options), stdout=subprocess.DEVNULL)
    state_file = killed / RESUME_FILE
    deadline = time.monotonic() + 240
    while not state_file.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no resume state appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    proc.stderr.close()

    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 0, "the kill should land mid-epoch"
    assert state["step_in_epoch"] > 0, "the kill should land mid-epoch"
    saved_step = state["global_step"]
    logged = len(read_csv(killed / "logs" / "steps.csv"))
    assert saved_step <= logged < total  # it was killed before finishing, after its checkpoint

    resumed = _run([*cli, "train", "--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at epoch 1, step {saved_step} of it" in resumed.stdout

    done = _finish(plain)
    assert done.returncode == 0, done.stdout

    # Same number of optimizer steps, each logged once, and on the CPU the same final weights.
    for out in (killed, reference):
        steps = read_csv(out / "logs" / "steps.csv")
        assert [int(r["global_step"]) for r in steps] == list(range(1, total + 1))
        assert torch.load(out / RESUME_FILE, weights_only=True)["global_step"] == total
    a, b = _final_weights(killed), _final_weights(reference)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    losses = [[float(r["loss"]) for r in read_csv(out / "logs" / "steps.csv")] for out in (killed, reference)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_ranks_and_rendezvous_come_from_the_launcher_environment():
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0"}
    assert launch_environment(torchrun) == {
        "rank": 3,
        "world_size": 8,
        "local_rank": 1,
        "launcher": "torchrun",
        "master_addr": None,
        "master_port": None,
    }
    srun = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[003-004,010]",
    }
    env = launch_environment(srun)
    assert (env["rank"], env["world_size"], env["local_rank"], env["launcher"]) == (5, 8, 1, "slurm")
    assert (env["master_addr"], env["master_port"]) == ("gpu003", str(20000 + 123456 % 20000))
    # The batch script itself (no job step) is a single process, whatever the allocation.
    assert launch_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"})["world_size"] == 1


def test_shards_cover_the_epoch_and_have_equal_length():
    order = [4, 0, 3, 1, 2]
    shards = [shard_indices(order, rank=r, world_size=2) for r in range(2)]
    assert shards == [[4, 3, 2], [0, 1, 4]]  # padded by wrapping, like DistributedSampler
    assert set(shards[0]) | set(shards[1]) == set(order)


# Adam's first step and its learning rate in the one-step runs: lr large enough that an
# un-averaged step (each rank on its own gradient) moves weights far beyond rounding.
ONE_STEP_LR = 1e-3
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which the trainer keeps


def _one_step(data_dir: str, init_from: str, out: str, batch_size: int, grad_accum: int) -> None:
    """Set a run up, take its first optimizer step with per-sample noise, save this rank's view of it.

    Run by torchrun (two ranks) and in the test process (one). Per-sample noise gives a
    volume the same timestep and noise whichever rank or batch it is in, so every run
    minimises the same loss; the default draws (per rank and micro-batch) would not. Saved
    in ``out/rank<R>.pt``: the weights before and after, the gradient the optimizer stepped
    with (after averaging and clipping, from a step pre-hook), the volumes and the loss.
    """
    from engine.specs import get_preset
    from engine.training.config import load_config
    from engine.training.distributed import setup
    from engine.training.trainer import StepNoise, _Trainer

    values = {
        "preset": "tiny",
        "data": [data_dir],
        "init_from": init_from,  # non-zero weights: every layer gets a gradient in step 1
        "out": str(Path(out) / "run"),
        "cache_dir": str(Path(out) / "cache"),
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": ONE_STEP_LR,
        "val_fraction": 0.25,
        "sample_every": 0,
        "tensorboard": False,
        "device": "cpu",
        "precision": "fp32",
    }
    config = load_config(None, values)
    ctx = setup(config.device)
    try:
        noise = StepNoise(config.seed, get_preset(config.preset).schedule.num_train_timesteps, per_sample=True)
        trainer = _Trainer.create(config, ctx, resume=False, noise=noise)
        model = trainer.nets.model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        names = {p: name for name, p in model.named_parameters()}
        grads: dict[str, torch.Tensor] = {}

        def keep_gradients(optimizer, args, kwargs) -> None:
            for group in optimizer.param_groups:
                grads.update({names[p]: p.grad.detach().clone() for p in group["params"]})

        trainer.nets.optimizer.register_step_pre_hook(keep_gradients)
        _, groups = trainer.epoch_groups(0)
        step = trainer.optimizer_step(groups[0])
        result = {
            "before": before,
            "after": model.state_dict(),
            "grads": grads,
            "indices": [i for batch in groups[0] for i in batch],
            "loss": step.loss,
        }
        torch.save(result, Path(out) / f"rank{ctx.rank}.pt")
    finally:
        ctx.shutdown()


def test_two_ranks_average_gradients_like_one_process_on_their_union(tmp_path, data_dir):
    from engine.checkpoint import save_checkpoint
    from engine.specs import PRESETS

    init = tmp_path / "init.safetensors"
    save_checkpoint(init, spec=PRESETS["tiny"], weights=PRESETS["tiny"].build_random_model(seed=0).state_dict())
    worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    worker += ["-m", "tests.test_training_distributed", str(data_dir), str(init), str(tmp_path / "two"), "1", "1"]
    two_ranks = _start(worker, stderr=subprocess.STDOUT)
    try:
        # Meanwhile, one process: the union batch at once, and as two accumulated micro-batches.
        # Both are the same step in exact arithmetic; their difference measures float rounding.
        _one_step(str(data_dir), str(init), str(tmp_path / "one"), 2, 1)
        _one_step(str(data_dir), str(init), str(tmp_path / "accum"), 1, 2)
    finally:
        done = _finish(two_ranks)
    assert done.returncode == 0, done.stdout
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    accum = torch.load(tmp_path / "accum" / "rank0.pt", weights_only=True)

    # Each rank had one volume of its own; together they are the one-process batch.
    assert len(rank0["indices"]) == len(rank1["indices"]) == 1
    assert rank0["indices"] != rank1["indices"]
    assert sorted(rank0["indices"] + rank1["indices"]) == sorted(one["indices"]) == sorted(accum["indices"])
    assert rank0["loss"] == rank1["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert one["grads"].keys() == rank0["grads"].keys()
    assert len(one["grads"]) > 0
    for key, before in one["before"].items():
        assert torch.equal(rank0["before"][key], before), key  # the same start
        # The ranks stepped with the same gradient and hold the same weights, bit for bit.
        assert torch.equal(rank0["after"][key], rank1["after"][key]), key
    # Rounding in a backward pass scales with the largest quantities in it: allow 16 float32
    # ulps of the largest gradient entry, and four times the difference measured between the
    # two one-process computations (equal in exact arithmetic).
    largest = max(float(g.abs().max()) for g in one["grads"].values())
    for key, g in one["grads"].items():
        assert torch.equal(rank0["grads"][key], rank1["grads"][key]), key
        delta = 4 * (g - accum["grads"][key]).abs().max() + 2**-20 * largest
        # The averaged gradient is the union batch's.
        assert (rank0["grads"][key] - g).abs().max() <= delta, key
        # Adam's first step moves a weight by lr * g / (|g| + eps) (bias-corrected), whose
        # slope in g is eps / (|g| + eps)^2 <= 1 / eps: a gradient error delta moves it by at
        # most lr * delta * min(1 / eps, eps / (max(|g| - delta, 0) + eps)^2), plus rounding.
        slope = torch.minimum(
            torch.full_like(g, 1 / ADAM_EPS), ADAM_EPS / ((g.abs() - delta).clamp(min=0) + ADAM_EPS) ** 2
        )
        w = one["after"][key]
        bound = ONE_STEP_LR * delta * slope + 2**-21 * w.abs() + ONE_STEP_LR * 2**-20
        assert ((rank0["after"][key] - w).abs() <= bound).all(), key
    # And the step was real: most weights moved by about lr, far beyond rounding.
    moved = torch.cat([(one["before"][k] - one["after"][k]).abs().flatten() for k in one["grads"]])
    assert (moved > ONE_STEP_LR / 2).float().mean() > 0.9


if __name__ == "__main__":
    data, init_from, out, batch_size, grad_accum = sys.argv[1:]
    _one_step(data, init_from, out, int(batch_size), int(grad_accum))
