"""One code path for 1 CPU, 1 GPU, N GPUs and N nodes.

The trainer asks :func:`setup` for a :class:`DistContext` and never branches on how it was
launched. Launch styles recognised from the environment:

* plain ``brainsynth-cli train ...``: one process (world size 1), no process group;
* ``torchrun`` / ``accelerate launch`` / ``python -m torch.distributed.run``: they set
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* ``srun brainsynth-cli train ...`` (one task per GPU): ``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID`` give the ranks; ``MASTER_ADDR`` defaults to
  the first host of ``SLURM_STEP_NODELIST`` and ``MASTER_PORT`` to a port derived from the job id.

Why torch.distributed directly rather than Accelerate's ``Accelerator``: the trainer needs
exact control over what is random (seeded per step and rank, so a resume is exact), over
which rank writes, and over the state it saves; ``accelerate launch`` still works as a
launcher because it sets the same environment variables as torchrun. GPUs use NCCL, CPUs gloo.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.training.errors import TrainingError

# Preprocessing a large data set happens between two collectives; give it time.
_PROCESS_GROUP_TIMEOUT = _dt.timedelta(hours=2)


@dataclass
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, 0 .. world_size-1.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: this process's device.
        launcher: ``"single"``, ``"torchrun"`` (any launcher setting RANK/WORLD_SIZE) or ``"slurm"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and the split."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                torch.distributed.barrier(device_ids=[self.device.index])
            else:
                torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a few floats over all ranks (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def shutdown(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def describe(self) -> str:
        if not self.distributed:
            return f"1 process on {self.device}"
        return f"{self.world_size} processes ({self.launcher}), rank {self.rank} on {self.device}"


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``gpu[003-005,010],login1`` → ``gpu003``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise TrainingError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR yourself")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def launch_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Ranks and rendezvous read from the launcher's environment variables.

    Returns:
        ``{"rank", "world_size", "local_rank", "launcher", "master_addr", "master_port"}``
        (the last two None when the launcher provides them or for a single process).
    """
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        return {
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env.get("LOCAL_RANK", "0")),
            "launcher": "torchrun",
            "master_addr": None,
            "master_port": None,
        }
    # SLURM_STEP_NUM_TASKS is set for srun job steps only: a batch script that runs the CLI
    # directly inside a multi-task allocation is one process, not the whole job.
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return {
            "rank": int(env["SLURM_PROCID"]),
            "world_size": int(env["SLURM_STEP_NUM_TASKS"]),
            "local_rank": int(env.get("SLURM_LOCALID", "0")),
            "launcher": "slurm",
            "master_addr": env.get("MASTER_ADDR")
            or _first_slurm_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST", "localhost")),
            "master_port": env.get("MASTER_PORT") or str(20000 + job % 20000),
        }
    return {"rank": 0, "world_size": 1, "local_rank": 0, "launcher": "single", "master_addr": None, "master_port": None}


def setup(device: str = "auto") -> DistContext:
    """Join the process group the launcher set up (if any) and pick this rank's device.

    Args:
        device: ``auto`` (this rank's local GPU if there is one, else the CPU), ``cpu`` or
            ``cuda``; a single process may also name ``cuda:N`` or ``mps``.

    Raises:
        TrainingError: a GPU asked for but missing, or more local ranks than GPUs.
    """
    from engine.device import resolve_device
    from engine.errors import BrainSynthError

    info = launch_environment()
    world, rank, local = info["world_size"], info["rank"], info["local_rank"]
    wanted = device.strip().lower()
    if world == 1:
        try:
            dev = resolve_device(wanted)
        except BrainSynthError as exc:
            raise TrainingError(str(exc)) from None
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev)

    use_cuda = (torch.cuda.is_available() and wanted in ("auto", "cuda")) or wanted.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for, but this node has no CUDA GPU")
        count = torch.cuda.device_count()
        # With srun --gpus-per-task=1 every task sees exactly its own GPU, as cuda:0.
        index = 0 if count == 1 else local
        if index >= count:
            raise TrainingError(
                f"local rank {local} has no GPU: this node has {count}; "
                "start one process per GPU (e.g. --nproc-per-node or --ntasks-per-node = GPUs per node)"
            )
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif wanted in ("auto", "cpu"):
        dev = torch.device("cpu")
        backend = "gloo"
    else:
        raise TrainingError(f"device {device!r} cannot be used for multi-process training; use auto, cpu or cuda")
    if info["master_addr"] is not None:
        os.environ.setdefault("MASTER_ADDR", info["master_addr"])
        os.environ.setdefault("MASTER_PORT", info["master_port"])
    if not torch.distributed.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = dev  # binds NCCL to this GPU at once; avoids a hang on barrier()
        torch.distributed.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world, timeout=_PROCESS_GROUP_TIMEOUT, **kwargs
        )
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, launcher=info["launcher"])


@contextlib.contextmanager
def no_sync_if(model: torch.nn.Module, condition: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for this backward (accumulation micro-batches)."""
    if condition and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def shard_indices(order: list[int], *, rank: int, world_size: int) -> list[int]:
    """This rank's share of an epoch's sample order.

    The order is padded by wrapping around so every rank gets the same number of samples
    (as ``torch.utils.data.DistributedSampler`` does), then dealt out round-robin.
    """
    if world_size == 1:
        return list(order)
    per_rank = -(-len(order) // world_size)
    padded = (order * (per_rank * world_size // max(1, len(order)) + 1))[: per_rank * world_size]
    return padded[rank::world_size]


def set_threads(cpu_threads: int, ctx: DistContext) -> str:
    """Set the compute threads (``cpu_threads``, else one per physical core available, shared
    among this job's processes on the machine) and say what was set.

    An ``OMP_NUM_THREADS`` in the environment is a choice someone made (a job script, or
    torchrun's one thread per process) and is kept when ``cpu_threads`` is 0.

    Args:
        cpu_threads: threads per process asked for (0 = decide as above).
        ctx: this process's place in the job.
    """
    from engine.device import set_cpu_threads

    if not cpu_threads and os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} compute thread(s), as OMP_NUM_THREADS says"
    return set_cpu_threads(cpu_threads or None, processes=_processes_on_this_machine(ctx))


def _processes_on_this_machine(ctx: DistContext) -> int:
    """Processes of this job sharing this machine's cores: torchrun's ``LOCAL_WORLD_SIZE`` when
    it is set (a CPU job of several processes per node), else 1 (SLURM gives each task its own
    cores, which :func:`engine.device.physical_cores_available` reads from the affinity)."""
    if not ctx.distributed:
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1
