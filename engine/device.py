"""Choosing the compute device: "auto", "cpu", "cuda", "cuda:N" or "mps".

"auto" prefers an NVIDIA GPU (CUDA), then Apple's Metal (MPS), then the CPU. Asking for a
device that is not there is a user error (a radiologist's laptop without a GPU), reported
with the devices that are.
"""

from __future__ import annotations

import torch

from engine.errors import DeviceError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices this machine can run on, e.g. ``["cuda:0", "cuda:1", "cpu"]``."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a user's device choice into a ``torch.device`` that exists here.

    Args:
        name: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` (the current CUDA
            device), ``"cuda:N"``, ``"mps"``, or a ``torch.device``. Case and surrounding spaces
            are ignored.

    Returns:
        The device.

    Raises:
        DeviceError: for an unknown name or a device this machine does not have; the
            message lists the available devices.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise DeviceError(f"a device must be given as text such as 'auto', 'cpu' or 'cuda' (got {name!r})")
    available = ", ".join(available_devices())
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (available here: {available})"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"no CUDA GPU is available on this machine; available devices: {available}")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"there is no GPU {device.index} on this machine ({torch.cuda.device_count()} found); "
                f"available devices: {available}"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"Apple MPS is not available on this machine; available devices: {available}")
        return torch.device("mps")
    raise DeviceError(
        f"device {name!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (available here: {available})"
    )


def describe_device(device: torch.device | str) -> str:
    """A short human description, e.g. ``"NVIDIA H200 (cuda:0, 139.8 GiB)"`` or ``"CPU (2 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} (cuda:{index}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    if device.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return str(device)


def physical_cores_available() -> int:
    """Physical CPU cores this process may run on: its CPU affinity (what a container, ``taskset``
    or SLURM's ``--cpus-per-task`` allows), counting hyper-threads of one core once.

    Why not ``os.cpu_count()``: it counts every logical CPU of the machine, so a job given 2 cores
    of a 64-core node would start 64 threads and run slower than with 2.
    """
    import os
    from pathlib import Path

    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no affinity to read, take torch's own choice
        return torch.get_num_threads()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the logical CPU
    return max(1, len(cores))


def set_cpu_threads(requested: int | None = None, *, processes: int = 1) -> str:
    """Set PyTorch's intra-op threads: ``requested``, or one per available physical core.

    Args:
        requested: threads to use; None or 0 for one per physical core available.
        processes: processes of one job on this machine that share those cores (a CPU
            ``torchrun`` with several processes per node): each then takes its share.

    Returns:
        What was set and why, for the progress output, e.g. ``"2 compute thread(s), one per core
        (2 physical core(s) available to this process)"``.
    """
    cores = physical_cores_available()
    share = max(1, cores // max(1, processes))
    threads = requested if requested else share
    torch.set_num_threads(threads)
    if requested:
        why = "asked for"
    elif processes > 1:
        why = f"one per core, the cores shared by {processes} processes"
    else:
        why = "one per core"
    return f"{threads} compute thread(s), {why} ({cores} physical core(s) available to this process)"
