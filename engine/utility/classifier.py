"""The utility experiment's network and one training run.

The network is MONAI's ``monai.networks.nets.Classifier`` (strided residual convolutions, then
one linear output), sized for the grid: one level per halving while every side stays at least
4 voxels (at most four levels), channels ``width · (1, 2, 4, 8)``. For the demo grid
(40 × 48 × 40) with width 8 that is 0.3 M parameters, trained in seconds per hundred steps on a
CPU. One output: a logit (classification, binary cross-entropy) or the standardised target
(regression, MSE; the training targets' mean and deviation undo it).

Every arm gets the same optimizer-step budget, batch size, learning rate (Adam) and
augmentation: a random shift of up to ``shift`` voxels along each axis (the roll wraps
background only on these brain-masked volumes), an intensity gain in [0.9, 1.1] and Gaussian
noise of 0.01. No left-right flips: a lateralised pattern (FTD is often asymmetric) would
change meaning. Early stopping: the validation loss is measured ``evaluations`` times along
the budget; training stops after ``patience`` evaluations without improvement and the best
weights are kept. Without validation scans the last weights are used.

Randomness: the initial weights come from ``init_seed`` (shared by the arms of one repeat, so
a paired difference reflects the data, not the initialisation); batches and augmentation from
``data_seed``. A run is deterministic on a given machine and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

#: Per-axis maximum shift of the augmentation, voxels.
SHIFT_VOXELS = 2


@dataclass(frozen=True)
class TrainSettings:
    """One run's training settings (identical for every arm of an experiment).

    Attributes:
        steps: optimizer steps (the budget).
        batch_size: volumes per step.
        lr: Adam learning rate.
        width: channels of the first level.
        evaluations: how many validation checks along the budget.
        patience: checks without improvement before stopping.
        device: torch device name.
    """

    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 8
    evaluations: int = 20
    patience: int = 5
    device: str = "cpu"


@dataclass
class RunOutcome:
    """What one run returns: test predictions (probabilities or values) and its history."""

    predictions: list[float]
    steps_run: int
    best_step: int
    best_val_loss: float | None
    val_losses: list[tuple[int, float]]
    extra_predictions: list[float] = field(default_factory=list)


def build_network(shape: tuple[int, int, int], *, width: int) -> torch.nn.Module:
    """MONAI's ``Classifier`` for volumes of ``shape`` (see the module docstring)."""
    from monai.networks.nets import Classifier

    levels = 0
    side = min(shape)
    while levels < 4 and side // 2 >= 4:
        side //= 2
        levels += 1
    levels = max(levels, 1)
    channels = tuple(width * 2**i for i in range(levels))
    return Classifier(in_shape=(1, *shape), classes=1, channels=channels, strides=(2,) * levels)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        shifts = torch.randint(-SHIFT_VOXELS, SHIFT_VOXELS + 1, (3,), generator=generator).tolist()
        out[i] = torch.roll(batch[i], shifts=shifts, dims=(1, 2, 3))
    gain = 0.9 + 0.2 * torch.rand((batch.shape[0], 1, 1, 1, 1), generator=generator)
    noise = 0.01 * torch.randn(batch.shape, generator=generator)
    return out * gain + noise


def train_and_predict(
    *,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    task: str,
    settings: TrainSettings,
    init_seed: int,
    data_seed: int,
    report: Callable[[int, int], None] | None = None,
    extra_x: np.ndarray | None = None,
) -> RunOutcome:
    """Train one arm and predict the test volumes.

    Args:
        train_x, val_x, test_x: volumes ``(N, D, H, W)``, standard / scale.
        train_y, val_y: targets (1/0 or numbers).
        task: ``"classify"`` or ``"regress"``.
        settings: the budget and optimiser.
        init_seed: seed of the initial weights.
        data_seed: seed of the batch order and augmentation.
        report: ``report(step, steps)`` every few steps (may raise CancelledError to stop).
        extra_x: more volumes for the final network to predict (``extra_predictions``), in a
            call of their own, so the test predictions are the same with or without them.

    Returns:
        Test predictions: probabilities of the positive class, or values in the label's unit.
    """
    device = torch.device(settings.device)
    shape = tuple(int(n) for n in train_x.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = build_network(shape, width=settings.width)
    net.to(device)
    y = np.asarray(train_y, dtype=np.float32)
    if task == "regress":
        centre, spread = float(y.mean()), float(y.std()) or 1.0
    else:
        centre, spread = 0.0, 1.0

    def standardise(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((np.asarray(values, dtype=np.float32) - centre) / spread).to(device)

    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "classify" else torch.nn.MSELoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(data_seed)
    x_train = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)).unsqueeze(1)
    y_train = standardise(y)
    n = x_train.shape[0]
    batch = min(settings.batch_size, n)
    every = max(1, math.ceil(settings.steps / max(1, settings.evaluations)))
    has_val = len(val_x) > 0
    best_state = None
    best_loss: float | None = None
    best_step = 0
    stale = 0
    history: list[tuple[int, float]] = []
    order = torch.randperm(n, generator=generator)
    cursor = 0
    step = 0
    for step in range(1, settings.steps + 1):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        inputs = _augment(x_train[idx], generator).to(device)
        net.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(inputs).squeeze(1), y_train[idx.to(device)])
        loss.backward()
        optimizer.step()
        if report is not None and (step % every == 0 or step == settings.steps):
            report(step, settings.steps)
        if has_val and (step % every == 0 or step == settings.steps):
            val_loss = float(loss_fn(torch.from_numpy(_predict_raw(net, val_x, device)), standardise(val_y).cpu()))
            history.append((step, val_loss))
            if best_loss is None or val_loss < best_loss - 1e-6:
                best_loss, best_step, stale = val_loss, step, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        best_step = step

    def predict(x: np.ndarray) -> list[float]:
        raw = _predict_raw(net, x, device)
        values = 1.0 / (1.0 + np.exp(-raw)) if task == "classify" else raw * spread + centre
        return [float(v) for v in values]

    return RunOutcome(
        predictions=predict(test_x),
        steps_run=step,
        best_step=best_step,
        best_val_loss=best_loss,
        val_losses=history,
        extra_predictions=predict(extra_x) if extra_x is not None and len(extra_x) else [],
    )


def _predict_raw(net: torch.nn.Module, x: np.ndarray, device: torch.device, *, batch: int = 16) -> np.ndarray:
    """The network's raw outputs (logits or standardised values) for volumes ``(N, D, H, W)``."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)).unsqueeze(1)
            out.append(net(chunk.to(device)).squeeze(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
