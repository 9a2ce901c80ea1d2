"""Generation in a worker thread: the window stays responsive while the model denoises.

The worker drives :func:`engine.generation.generate` and turns its events into Qt signals,
which Qt delivers to the window's thread (queued connections). Cancelling sets a flag the
worker checks after every denoising step, then closes the engine's iterator, so no model
call runs after the step in progress: cancel takes effect within one step.

Why the event loop never stalls: the worker spends its time inside PyTorch kernels, which
release the GIL; the per-step Python work here is a few attribute reads. Previews arrive as
small numpy arrays (one volume's predicted x_0) and are converted in the window by a single
vectorised expression. On the CPU the worker leaves one core to the interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import Signal

from brainsynth_gui.background import BackgroundWorker
from brainsynth_gui.generation_request import RemainingTime
from engine.checkpoint import Checkpoint
from engine.generation import GenerationRequest


@dataclass(frozen=True)
class ProgressReport:
    """One step of progress, for the progress bar.

    Attributes:
        step: 1-based step within the current batch.
        steps: steps per volume.
        volume: 1-based number of the first volume in the current batch.
        volumes: volumes asked for.
        fraction: overall progress, 0..1.
        seconds_left: estimated time left, or None while unknown.
        seed: seed of the volume being previewed.
        precision: the precision in use and why (:attr:`GenerationRequest.precision_reason`).
    """

    step: int
    steps: int
    volume: int
    volumes: int
    fraction: float
    seconds_left: float | None
    seed: int
    precision: str = ""


class GenerationWorker(BackgroundWorker):
    """Runs one generation request; create a new worker per request.

    A :class:`~brainsynth_gui.background.BackgroundWorker` whose work is a generator that
    yields after every denoising step, so :meth:`cancel` (its abort) takes effect there.

    Signals:
        progress(ProgressReport): after every denoising step.
        preview(object, int): the predicted x_0 (model space, float32 on the model grid) of
            the batch's first volume, and its seed.
        volume_ready(object): a finished :class:`engine.generation.GeneratedVolume`.
        failed(str): a message for the user.
        done(bool): always last; True when the run was cancelled.

    Args:
        checkpoint: the model to sample from.
        request: what to generate (made from ``checkpoint``; its seeds are resolved, so
            "random" is known up front).
        model_cache: a dict shared between workers holding built models per (checkpoint, device).
    """

    progress = Signal(object)
    preview = Signal(object, int)
    volume_ready = Signal(object)
    failed = Signal(str)
    done = Signal(bool)

    def __init__(self, checkpoint: Checkpoint, request: GenerationRequest, model_cache: dict) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.request = request
        self.seeds = list(request.seeds)
        self._cache = model_cache
        self.errored.connect(self.failed)
        self.finished.connect(self._emit_done)

    def cancel(self) -> None:
        """Stop after the step in progress (thread-safe)."""
        self.abort()

    @property
    def cancelled(self) -> bool:
        return self.abort_requested

    def _emit_done(self) -> None:
        self.done.emit(self.abort_requested)

    def _model(self, device):
        key = (id(self.checkpoint), self.request.weights, str(device))
        model = self._cache.get(key)
        if model is None:
            self._cache.clear()  # keep at most one model in (GPU) memory
            model = self.checkpoint.build_model(use_ema=self.request.weights == "ema", device=device)
            self._cache[key] = model
        return model

    def work(self):
        import torch

        from engine.device import physical_cores_available
        from engine.generation import generate, resolve_precision

        threads = torch.get_num_threads()
        try:
            device = self.request.torch_device
            if device.type == "cpu":
                # Leave one core to the interface.
                torch.set_num_threads(max(1, min(threads, physical_cores_available() - 1)))
            model = self._model(device)
            yield  # a cancel while the model was built stops here
            request = resolve_precision(model, self.request)
            events = generate(model, request)
            clock = RemainingTime()
            try:
                for event in events:
                    first = event.volume_indices[0]
                    self.progress.emit(
                        ProgressReport(
                            step=event.step + 1,
                            steps=event.steps,
                            volume=first + 1,
                            volumes=event.volumes_total,
                            fraction=event.fraction,
                            seconds_left=clock.update(event.fraction),
                            seed=self.seeds[first],
                            precision=request.precision_reason or request.precision,
                        )
                    )
                    if event.preview is not None:
                        self.preview.emit(np.ascontiguousarray(event.preview), self.seeds[first])
                    for volume in event.finished:
                        self.volume_ready.emit(volume)
                    yield  # a cancel stops here, before the next model call
            finally:
                events.close()
        finally:
            torch.set_num_threads(threads)
