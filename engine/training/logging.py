"""Training logs: CSV files, TensorBoard (when installed), PNG figures and progress lines.

Files in the run directory (written by rank 0 only):

* ``logs/steps.csv`` – one row per optimizer step: epoch, step in epoch, global step,
  training MSE (mean over the step's volumes on all ranks), learning rate, gradient norm
  (before clipping), training seconds so far (wall clock, summed over steps, all
  invocations) and CPU seconds of this process in those steps (robust to other load).
* ``logs/epochs.csv`` – one row per epoch: training MSE, validation MSE of the weights and
  of the EMA weights, seconds, volumes per second, optimizer steps so far.
* ``loss_curve.png`` – training and validation MSE per epoch on a log scale, like Figure 2
  of the reference study.
* ``samples/epoch_NNNN.png`` – orthogonal mid-slices of a few EMA samples (fixed seeds, so
  epochs compare).

Figures use ``matplotlib.figure.Figure`` with the Agg canvas, never ``matplotlib.pyplot``:
pyplot picks an interactive backend and may load Qt, which the engine must never do.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import atomic_path, fsync_folder, write_errors

STEP_COLUMNS = ("epoch", "step_in_epoch", "global_step", "loss", "lr", "grad_norm", "elapsed_s", "cpu_s")
EPOCH_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_loss_ema",
    "epoch_s",
    "volumes_per_s",
    "global_step",
    "best",
)


class CsvLog:
    """An append-only CSV file with a fixed header, flushed after every row.

    Flushing each row means a killed run keeps every row it logged; :meth:`truncate`
    drops rows a resumed run will redo, so the log never counts a step twice. A file left
    damaged by a power cut (a last row cut short, NUL bytes where the disk had not yet
    written) is repaired when it is opened: incomplete rows are dropped, every complete row
    is kept. :func:`sync_logs` puts the logs on disk (the trainer calls it with every saved
    state, so the logs on disk hold every row the state counts).
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.stat().st_size == 0:
                path.write_text(",".join(self.columns) + "\n", encoding="utf-8")
            else:
                self.repair()
            self._fh = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.writer(self._fh, lineterminator="\n")

    def write(self, row: dict) -> None:
        with write_errors(self.path):
            self._writer.writerow([_format(row.get(c)) for c in self.columns])
            self._fh.flush()

    def repair(self) -> int:
        """Drop incomplete rows (what a crash or power cut leaves) atomically; returns how many.

        A row is complete when it ends in a newline, holds no NUL byte and has one field per
        column. The header is rewritten if it was damaged.
        """
        raw = self.path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        lines = text.split("\n")
        tail = lines.pop()  # after the last newline: empty, or a row cut short
        header, rows = (lines[0], lines[1:]) if lines else ("", [])
        kept = []
        for line in rows:
            if not line or "\x00" in line or "\ufffd" in line:
                continue
            fields = next(csv.reader([line]), [])
            if len(fields) == len(self.columns):
                kept.append(line)
        dropped = len(rows) - len(kept) + (1 if tail else 0)
        expected_header = ",".join(self.columns)
        if dropped == 0 and header == expected_header:
            return 0
        with atomic_path(self.path, overwrite=True) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in [expected_header, *kept]), encoding="utf-8")
        return dropped

    def truncate(self, *, key: str, keep_through: int) -> None:
        """Keep only the rows whose ``key`` column is at most ``keep_through`` (atomically)."""
        self._fh.close()
        rows = read_csv(self.path)
        kept = [r for r in rows if _row_number(r.get(key)) is not None and int(_row_number(r.get(key))) <= keep_through]
        with atomic_path(self.path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows([[r.get(c, "") for c in self.columns] for r in kept])
        with write_errors(self.path):
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._fh, lineterminator="\n")

    def close(self) -> None:
        self._fh.close()


def sync_logs(folder: str | os.PathLike) -> None:
    """Flush every CSV log in ``folder`` to disk (``fsync``), e.g. before a resume state is saved.

    The logs are flushed to the operating system after every row already; this makes them
    survive a power cut too. fsync works on any descriptor of a file, so the logs' own open
    handles need not be known here.
    """
    folder = Path(folder)
    for path in sorted(folder.glob("*.csv")):
        with write_errors(path), open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_folder(folder)


def _row_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a log CSV as dicts of strings ([] if the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


class TensorBoardLog:
    """Scalars to TensorBoard if ``torch.utils.tensorboard`` works here, otherwise nothing.

    Attributes:
        available: whether events are being written; when False, ``reason`` says why and how
            to fix it (``pip install tensorboard``).
    """

    def __init__(self, log_dir: Path, *, enabled: bool = True) -> None:
        self.writer = None
        self.reason = "turned off" if not enabled else ""
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.reason = "tensorboard is not installed (pip install tensorboard, or pip install brainsynth[train])"
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def available(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _png_bytes(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _write_png(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)


TARGET_NAMES = {"epsilon": "noise", "v_prediction": "v", "sample": "clean volume"}


def plot_loss_curve(
    epochs_csv: str | os.PathLike, out_png: str | os.PathLike, *, title: str = "", prediction_type: str = "epsilon"
) -> Path:
    """Draw training and validation MSE per epoch (log scale), as in the reference's Figure 2.

    Args:
        epochs_csv: the run's ``logs/epochs.csv``.
        out_png: where to write the PNG (atomically).
        title: figure title (e.g. the run name).
        prediction_type: what the network predicts (the schedule's), named on the y axis.

    Returns:
        The PNG path.
    """
    from matplotlib.figure import Figure

    rows = read_csv(epochs_csv)
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    series = [("train_loss", "training MSE", "C0"), ("val_loss", "validation MSE", "C1")]
    series.append(("val_loss_ema", "validation MSE (EMA weights)", "C2"))
    for key, label, colour in series:
        xs = [int(r["epoch"]) for r in rows if r.get(key)]
        ys = [float(r[key]) for r in rows if r.get(key)]
        if xs and all(y > 0 and math.isfinite(y) for y in ys):
            ax.plot(xs, ys, label=label, color=colour, marker="o" if len(xs) < 30 else None, markersize=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    target = TARGET_NAMES.get(prediction_type, prediction_type)
    ax.set_ylabel(f"MSE (predicted vs true {target})")
    if ax.lines:
        ax.set_yscale("log")
        ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "MSE during training")
    fig.tight_layout()
    out = Path(out_png)
    _write_png(out, _png_bytes(fig))
    return out


def plot_sample_slices(volumes: Sequence[np.ndarray], out_png: str | os.PathLike, *, title: str = "") -> Path:
    """One row per volume: sagittal, coronal and axial mid-slices (RAS+ arrays, standard space).

    Radiological convention is not applied: slices are shown with the patient's left on
    the image's left (neurological), superior/anterior up, which is what RAS+ gives directly.

    Args:
        volumes: 3-D arrays (R, A, S) in standard intensity space ([0, 1000]).
        out_png: target PNG (written atomically).
        title: figure title (e.g. "epoch 25, EMA, DDIM 50 steps").
    """
    from matplotlib.figure import Figure

    n = max(1, len(volumes))
    fig = Figure(figsize=(7.5, 2.5 * n + 0.4), dpi=100)
    for row, vol in enumerate(volumes):
        r, a, s = (d // 2 for d in vol.shape)
        views = (("sagittal", vol[r, :, :]), ("coronal", vol[:, a, :]), ("axial", vol[:, :, s]))
        for col, (name, image) in enumerate(views):
            ax = fig.add_subplot(n, 3, row * 3 + col + 1)
            # transpose so the second array axis runs up the image (origin lower)
            ax.imshow(image.T, cmap="gray", origin="lower", vmin=0.0, vmax=1000.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    _write_png(out, _png_bytes(fig))
    return out


@dataclass
class EpochSummary:
    """What the trainer reports at the end of an epoch (all losses are MSE in model space)."""

    epoch: int
    epochs: int
    global_step: int
    train_loss: float
    val_loss: float | None
    val_loss_ema: float | None
    epoch_s: float
    volumes_per_s: float
    is_best: bool
    eta_s: float


def under_slurm(environ: dict[str, str] | None = None) -> bool:
    """True inside a SLURM job, where logs go to files and need no terminal decoration."""
    env = os.environ if environ is None else environ
    return "SLURM_JOB_ID" in env


def format_epoch_line(summary: EpochSummary, *, parseable: bool) -> str:
    """One progress line per epoch.

    Args:
        summary: the epoch's numbers.
        parseable: ``key=value`` pairs separated by spaces (for SLURM logs and grep/awk);
            otherwise a line for a person at a terminal.
    """
    s = summary
    if parseable:
        parts = {
            "epoch": s.epoch,
            "epochs": s.epochs,
            "step": s.global_step,
            "train_loss": f"{s.train_loss:.6g}",
            "val_loss": "" if s.val_loss is None else f"{s.val_loss:.6g}",
            "val_loss_ema": "" if s.val_loss_ema is None else f"{s.val_loss_ema:.6g}",
            "epoch_s": f"{s.epoch_s:.1f}",
            "vol_per_s": f"{s.volumes_per_s:.3g}",
            "best": int(s.is_best),
            "eta_s": f"{s.eta_s:.0f}",
        }
        return "brainsynth-train " + " ".join(f"{k}={v}" for k, v in parts.items())
    val = ""
    if s.val_loss is not None:
        val = f"  val {s.val_loss:.5f}"
    if s.val_loss_ema is not None:
        val += f"  val(EMA) {s.val_loss_ema:.5f}"
    best = "  *best*" if s.is_best else ""
    width = len(str(s.epochs))
    return (
        f"epoch {s.epoch:>{width}}/{s.epochs}  train {s.train_loss:.5f}{val}{best}  "
        f"{s.epoch_s:.1f} s  {s.volumes_per_s:.2f} vol/s  eta {_duration(s.eta_s)}"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
