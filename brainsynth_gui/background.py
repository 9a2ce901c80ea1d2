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
from html import escape
from typing import Any

from PySide6.QtCore import Qt, QThread, Signal
from PySide6.QtWidgets import QDialog, QLabel, QProgressDialog, QPushButton, QWidget

from brainsynth_gui.error_reporting import tell_user
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


class WorkerDialog(QDialog):
    """A dialog that runs one :class:`BackgroundWorker` at a time behind a progress dialog.

    The steps every such dialog repeats live here: start the worker with a window-modal
    progress dialog and the Run button disabled; when it finishes, wait for the thread, close
    the progress dialog and enable Run again; Cancel (and closing the dialog) aborts the work
    and waits for it; a failure is one line in the status label and a dialog (stderr when
    ``quiet``). Subclasses build their widgets (adding :attr:`status` and setting
    :attr:`run_button`) and connect the worker's ``yielded``/``returned``/``errored``/``aborted``.

    Args:
        parent: the window it belongs to.
        quiet: errors on stderr instead of in dialogs (tests, headless runs).

    Attributes:
        worker: the running worker, or None.
        progress_dialog: its progress dialog while it runs, or None.
        errors: every error message shown, oldest first.
        status: the one-line status label (the subclass puts it in its layout).
        run_button: the button that starts the work (disabled while it runs), or None.
    """

    def __init__(self, parent: QWidget | None = None, *, quiet: bool = False) -> None:
        super().__init__(parent)
        self.quiet = quiet
        self.errors: list[str] = []
        self.worker: BackgroundWorker | None = None
        self.progress_dialog: QProgressDialog | None = None
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.run_button: QPushButton | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start_worker(
        self,
        worker: BackgroundWorker,
        *,
        label: str,
        title: str,
        status: str,
        connect: Mapping[str, Callable[..., Any]],
    ) -> None:
        """Connect ``worker``'s signals (``connect``: signal name → slot), show the progress dialog, start it.

        Args:
            worker: a worker not yet started.
            label: the progress dialog's first line.
            title: the progress dialog's title.
            status: the status label's text while it runs.
            connect: the subclass's slots; ``finished`` is connected here, after them.
        """
        for name, slot in connect.items():
            getattr(worker, name).connect(slot)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.progress_dialog = progress_dialog(self, label=label, title=title, on_cancel=self.cancel)
        if self.run_button is not None:
            self.run_button.setEnabled(False)
        self.status.setText(status)
        worker.start()

    def cancel(self) -> None:
        """Ask the running work to stop at its next yield or progress report."""
        if self.worker is not None:
            self.worker.abort()

    def show_progress(self, text: str, done: int, total: int) -> None:
        """Show one progress report in the progress dialog (``done`` of ``total``; 0 total: busy)."""
        if self.progress_dialog is not None:
            self.progress_dialog.setLabelText(text)
            self.progress_dialog.setMaximum(max(total, 1))
            self.progress_dialog.setValue(min(done, max(total, 1)))

    def _finished(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.wait()
            worker.deleteLater()
        if self.progress_dialog is not None:
            self.progress_dialog.close()
            self.progress_dialog.deleteLater()
            self.progress_dialog = None
        if self.run_button is not None:
            self.run_button.setEnabled(True)

    def report_error(self, title: str, message: str) -> None:
        """Show ``message`` in red in the status label and tell the user (a dialog, or stderr when quiet)."""
        self.errors.append(message)
        self.status.setText(f"<span style='color:#b00000'>{escape(message)}</span>")
        tell_user(self, title, message, quiet=self.quiet)

    def wait(self) -> None:
        """Block until the running work has ended (tests)."""
        if self.worker is not None:
            self.worker.wait()

    def done(self, result: int) -> None:
        # Closing the dialog stops its work first: no thread outlives the dialog it reports to.
        if self.worker is not None:
            self.cancel()
            self.worker.wait()
            self._finished()
        super().done(result)
