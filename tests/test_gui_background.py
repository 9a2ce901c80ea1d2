"""The app's one background-work helper: a function or generator in a QThread, its life as signals."""

from __future__ import annotations

import gc
import logging
import threading

import pytest
from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtWidgets import QWidget

from brainsynth_gui.background import OOM_HINT, BackgroundWorker, create_worker
from brainsynth_gui.error_reporting import ErrorReportingWindow
from engine.errors import CheckpointError


class Recorder(QObject):
    """Records every signal of a worker, in the order they arrive in the interface thread."""

    def __init__(self, worker: BackgroundWorker) -> None:
        super().__init__()
        self.events: list[tuple] = []
        self.threads: set[str] = set()
        worker.started.connect(lambda: self._add("started"))
        worker.yielded.connect(lambda value: self._add("yielded", value))
        worker.returned.connect(lambda value: self._add("returned", value))
        worker.errored.connect(lambda message: self._add("errored", message))
        worker.aborted.connect(lambda: self._add("aborted"))
        worker.finished.connect(lambda: self._add("finished"))

    def _add(self, *event) -> None:
        self.events.append(event)
        self.threads.add(threading.current_thread().name)

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def run_to_end(qtbot, worker: BackgroundWorker) -> Recorder:
    recorder = Recorder(worker)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    qtbot.waitUntil(lambda: recorder.events and recorder.events[-1] == ("finished",), timeout=10_000)
    worker.wait()
    return recorder


def test_a_generator_yields_in_order_then_returns_then_finishes(qtbot):
    work_threads = []

    def count(n):
        for i in range(n):
            work_threads.append(threading.current_thread().name)
            yield i
        return "done"

    recorder = run_to_end(qtbot, BackgroundWorker(count, 4))
    assert recorder.kinds() == ["started", "yielded", "yielded", "yielded", "yielded", "returned", "finished"]
    assert [e[1] for e in recorder.events if e[0] == "yielded"] == [0, 1, 2, 3]
    assert ("returned", "done") in recorder.events
    # The work ran in the worker thread; every signal arrived in the interface thread.
    assert threading.main_thread().name not in work_threads
    assert recorder.threads == {threading.main_thread().name}


def test_a_function_returns_its_result_and_reports_through_a_keyword(qtbot):
    def add(a, b, *, progress):
        progress(0.5)
        progress("half", 1, 2)
        return a + b

    worker = create_worker(add, 2, 3, report_as="progress", start=False)
    recorder = run_to_end(qtbot, worker)
    assert recorder.events == [
        ("started",),
        ("yielded", 0.5),
        ("yielded", ("half", 1, 2)),
        ("returned", 5),
        ("finished",),
    ]


def test_a_brainsynth_error_is_its_own_message(qtbot):
    def fails():
        yield 1
        raise CheckpointError("model.safetensors is damaged or truncated")

    recorder = run_to_end(qtbot, BackgroundWorker(fails))
    assert recorder.kinds() == ["started", "yielded", "errored", "finished"]
    assert recorder.events[2] == ("errored", "model.safetensors is damaged or truncated")


def test_any_other_error_asks_for_a_report_with_the_traceback_in_the_log(qtbot, caplog):
    def buggy():
        return {}["missing"]

    with caplog.at_level(logging.ERROR, logger="brainsynth_gui.background"):
        recorder = run_to_end(qtbot, BackgroundWorker(buggy))
    assert recorder.kinds() == ["started", "errored", "finished"]
    message = recorder.events[1][1]
    assert message.startswith("unexpected error (KeyError: 'missing')")
    assert "report this with the log" in message
    assert "\n" not in message  # one line for the user; the traceback is in the log
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert caplog.records
    assert caplog.records[0].exc_info is not None
    assert "Traceback" in caplog.text, logged
    assert "buggy" in caplog.text, logged


def test_out_of_memory_gives_the_hint(qtbot):
    def too_big():
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    recorder = run_to_end(qtbot, BackgroundWorker(too_big))
    assert ("errored", OOM_HINT) in recorder.events


class Aborter(QObject):
    """Aborts the worker from the interface thread when it yields ``at``."""

    def __init__(self, worker: BackgroundWorker, at) -> None:
        super().__init__()
        self.worker, self.at = worker, at

    @Slot(object)
    def on_yielded(self, value) -> None:
        if value == self.at:
            self.worker.abort()


def test_abort_between_yields_stops_at_the_next_yield_and_runs_the_finally(qtbot):
    steps: list[str] = []

    def stepper():
        try:
            for i in range(5):
                steps.append(f"step {i}")
                yield i
        finally:
            steps.append("cleaned up")

    worker = BackgroundWorker(stepper)
    aborter = Aborter(worker, at=1)
    # Blocking: the worker waits in its emit of 1 until the abort is set, so the test is exact.
    worker.yielded.connect(aborter.on_yielded, Qt.ConnectionType.BlockingQueuedConnection)
    recorder = run_to_end(qtbot, worker)
    assert recorder.kinds() == ["started", "yielded", "yielded", "aborted", "finished"]
    assert steps == ["step 0", "step 1", "cleaned up"]  # nothing after the yield at which it was aborted
    assert worker.abort_requested


def test_abort_stops_callback_driven_work_at_its_next_report(qtbot):
    reached: list[int] = []

    def long_job(*, progress):
        for i in range(5):
            reached.append(i)
            progress(i)
        return "never"

    worker = BackgroundWorker(long_job, report_as="progress")
    aborter = Aborter(worker, at=2)
    worker.yielded.connect(aborter.on_yielded, Qt.ConnectionType.BlockingQueuedConnection)
    recorder = run_to_end(qtbot, worker)
    assert recorder.kinds() == ["started", "yielded", "yielded", "yielded", "aborted", "finished"]
    assert reached == [0, 1, 2, 3]  # the report after the abort raised; nothing further ran


def test_abort_before_start_runs_nothing(qtbot):
    ran: list[int] = []

    def stepper():
        ran.append(1)
        yield 1

    worker = BackgroundWorker(stepper)
    worker.abort()
    recorder = run_to_end(qtbot, worker)
    assert recorder.kinds() == ["started", "aborted", "finished"]
    assert ran == []


def test_a_worker_needs_work():
    with pytest.raises(TypeError, match="needs a function"):
        BackgroundWorker().work()


def test_running_workers_forgets_each_worker_once_it_has_finished(qtbot):
    import time

    from brainsynth_gui.background import RunningWorkers

    running = RunningWorkers()
    gate = threading.Event()
    results = []
    for n in (1, 2):
        worker = create_worker(lambda n=n: gate.wait(10) and n, start=False, connect={"returned": results.append})
        running.start(worker)
    assert len(running) == 2
    assert all(w.isRunning() for w in running)
    gate.set()
    qtbot.waitUntil(lambda: len(running) == 0, timeout=10_000)
    assert sorted(results) == [1, 2]
    slow = running.start(BackgroundWorker(time.sleep, 0.2))
    running.wait()  # blocks until it is done
    assert slow.isFinished()


def test_cyclic_garbage_is_collected_on_the_gui_thread_not_in_a_worker(qtbot):
    """A widget caught in a reference cycle must be destroyed on the GUI thread: a worker thread's
    allocations used to trigger the collection there, and Qt crashed (a segfault in CI)."""
    window = ErrorReportingWindow(quiet=True)
    qtbot.addWidget(window)
    assert not gc.isenabled()  # the window moved collection onto the GUI thread's timer

    destroyed_in: list[str] = []

    class Cyclic(QWidget):
        def __del__(self) -> None:
            destroyed_in.append(threading.current_thread().name)

    widget = Cyclic()
    widget.myself = widget  # a reference cycle: only the cyclic collector frees it
    del widget
    threshold = gc.get_threshold()[0]
    hoard: list[list] = []  # allocations kept alive, so the collector's count stays past its threshold
    worker = create_worker(lambda: hoard.extend([] for _ in range(5 * threshold)), start=False)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    worker.wait()
    assert destroyed_in == []  # not collected in the worker
    qtbot.waitUntil(lambda: bool(destroyed_in), timeout=5_000)  # the GUI thread's timer collects it
    assert destroyed_in == [threading.main_thread().name]
