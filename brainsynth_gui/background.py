"""Background work for the app: one helper, one way of turning a failure into a message.

Modelled on napari's ``create_worker`` and superqt's ``thread_worker``: a function, or a
generator function, runs in a :class:`~PySide6.QtCore.QThread` and its life comes back as
signals, which Qt delivers in the thread that connected them (queued connections):

* ``started()`` when the work begins, and ``finished()`` always last (both QThread's own);
* ``yielded(value)`` for every value a generator yields, or every :meth:`BackgroundWorker.report`
  (progress from engine code that takes a callback);
* ``returned(value)`` with the result (a generator's ``return`` value) when the work completes;
* ``errored(message)`` with :func:`describe_failure`'s message when it raises;
* ``aborted()`` when :meth:`BackgroundWorker.abort` stopped it early.

Aborting is cooperative: a generator is closed at its next ``yield`` (its ``finally`` blocks run,
nothing after the yield does), and work reporting through :meth:`~BackgroundWorker.report` stops
at its next report (``report`` raises :class:`engine.errors.CancelledError`, which the worker
takes as an abort, not an error). A plain function that never reports runs to its end.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable, Generator, Mapping
from typing import Any

from PySide6.QtCore import Qt, QThread, Signal
from PySide6.QtWidgets import QProgressDialog, QWidget

from engine.errors import BrainSynthError, CancelledError

log = logging.getLogger(__name__)

OOM_HINT = (
    "The GPU ran out of memory. Lower the batch size (1 uses the least memory), the number of "
    "trajectory frames, or close other programs using the GPU; or choose the CPU device (slower "
    "but limited only by system memory)."
)


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # only work that imported torch can run out of GPU memory
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException) -> str:
    """The one-line message the user sees for an exception raised by background work.

    A :class:`engine.errors.BrainSynthError` is a problem the user can act on: its own message.
    Running out of (GPU) memory gives :data:`OOM_HINT`. Anything else is a bug: a message asking
    for a report, and the traceback goes to the log.
    """
    if _is_out_of_memory(exc):
        return OOM_HINT
    if isinstance(exc, BrainSynthError):
        return str(exc)
    log.error("background work failed unexpectedly", exc_info=(type(exc), exc, exc.__traceback__))
    return (
        f"unexpected error ({type(exc).__name__}: {exc}); the work stopped unexpectedly. "
        "Please report this with the log."
    )


class BackgroundWorker(QThread):
    """Runs ``work(*args, **kwargs)`` in a thread: a plain function or a generator function.

    Create one worker per piece of work and :meth:`start` it; subclasses may override
    :meth:`work` instead of passing a function.

    Args:
        work: the function (None when a subclass overrides :meth:`work`).
        *args: positional arguments for it.
        report_as: also pass :meth:`report` to it under this keyword (e.g. ``"progress"``), for
            engine functions that report progress through a callback.
        **kwargs: keyword arguments for it.

    Signals:
        yielded(object): each yielded or reported value.
        returned(object): the result, when the work completed.
        errored(str): the message for the user (see :func:`describe_failure`).
        aborted(): the work stopped early after :meth:`abort`.
    """

    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(str)
    aborted = Signal()

    def __init__(
        self, work: Callable[..., Any] | None = None, /, *args: Any, report_as: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__()
        self._work = work
        self._args = args
        self._kwargs = dict(kwargs)
        if report_as is not None:
            self._kwargs[report_as] = self.report
        self._abort = threading.Event()

    def abort(self) -> None:
        """Ask the work to stop at its next yield or report (thread-safe)."""
        self._abort.set()

    @property
    def abort_requested(self) -> bool:
        return self._abort.is_set()

    def report(self, *values: Any) -> None:
        """Progress from inside the work: emits ``yielded`` (one value, or the tuple of several).

        Raises:
            CancelledError: when :meth:`abort` was called, so callback-driven work stops here.
        """
        if self._abort.is_set():
            raise CancelledError("cancelled")
        self.yielded.emit(values[0] if len(values) == 1 else values)

    def work(self) -> Any:
        """The work itself; by default the function given to the constructor."""
        if self._work is None:
            raise TypeError("BackgroundWorker needs a function, or a subclass overriding work()")
        return self._work(*self._args, **self._kwargs)

    def run(self) -> None:
        try:
            result = self.work()
            if inspect.isgenerator(result):
                result = self._drain(result)
        except CancelledError:
            self.aborted.emit()
        except Exception as exc:  # a failure is a message, never a crash of the app
            self.errored.emit(describe_failure(exc))
        else:
            self.returned.emit(result)

    def _drain(self, generator: Generator[Any, None, Any]) -> Any:
        try:
            while True:
                if self._abort.is_set():
                    raise CancelledError("cancelled")
                try:
                    value = next(generator)
                except StopIteration as stop:
                    return stop.value
                self.yielded.emit(value)
        finally:
            generator.close()  # runs the generator's finally blocks when it stopped early


def create_worker(
    work: Callable[..., Any],
    /,
    *args: Any,
    connect: Mapping[str, Callable[..., Any]] | None = None,
    start: bool = True,
    **kwargs: Any,
) -> BackgroundWorker:
    """A :class:`BackgroundWorker` for ``work(*args, **kwargs)``, its signals connected, then started.

    Args:
        work: a function or generator function.
        *args: its positional arguments.
        connect: signal name → slot, connected before the work starts (so nothing is missed),
            e.g. ``{"returned": show, "errored": report}``.
        start: start the thread (False: the caller starts it).
        **kwargs: its keyword arguments (and ``report_as``, see :class:`BackgroundWorker`).
    """
    worker = BackgroundWorker(work, *args, **kwargs)
    for name, slot in (connect or {}).items():
        getattr(worker, name).connect(slot)
    if start:
        worker.start()
    return worker


class RunningWorkers:
    """The workers a window has started and not yet seen finish (scan preparations, case loads).

    :meth:`start` starts a worker and forgets it (``deleteLater``) once it has finished; a window
    asks ``bool(running)`` whether anything is still at work and calls :meth:`wait` as it closes.
    """

    def __init__(self) -> None:
        self._workers: list[BackgroundWorker] = []

    def start(self, worker: BackgroundWorker) -> BackgroundWorker:
        """Start ``worker`` (its signals already connected) and keep it until it finishes."""
        self._workers.append(worker)
        worker.finished.connect(lambda: self._forget(worker))  # after the caller's own finished slots
        worker.start()
        return worker

    def _forget(self, worker: BackgroundWorker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
            worker.wait()
            worker.deleteLater()

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self):
        return iter(list(self._workers))

    def wait(self) -> None:
        """Block until every worker started here has finished (closing a window, tests)."""
        for worker in list(self._workers):
            worker.wait()


def progress_dialog(parent: QWidget, *, label: str, title: str, on_cancel: Callable[[], None]) -> QProgressDialog:
    """The window-modal progress dialog of a long background job, shown at once.

    It stays open until the caller closes it (no auto-close or reset when the range is
    reached), so a job's last report cannot hide the dialog before its result arrives.
    """
    dialog = QProgressDialog(label, "Cancel", 0, 0, parent)
    dialog.setWindowTitle(title)
    dialog.setWindowModality(Qt.WindowModality.WindowModal)
    dialog.setMinimumDuration(0)
    dialog.setAutoClose(False)
    dialog.setAutoReset(False)
    dialog.canceled.connect(on_cancel)
    dialog.show()
    return dialog
