"""Cyclic garbage collection on the GUI thread only.

Python's collector runs in whichever thread happens to allocate when a threshold is crossed. If
that is a worker thread and the garbage holds Qt widgets (a closed dialog caught in a reference
cycle), Qt destroys them off the GUI thread and the app crashes (seen as a segfault while a
checkpoint loaded in the background). pyqtgraph's ``GarbageCollector`` disables automatic
collection and collects, honouring the same thresholds, from a timer on the GUI thread.
"""

from __future__ import annotations

from pyqtgraph.util.garbage_collector import GarbageCollector

_collector: GarbageCollector | None = None


def collect_garbage_on_gui_thread() -> GarbageCollector:
    """Install the GUI-thread collector once per process (call on the GUI thread); return it."""
    global _collector
    if _collector is None:
        _collector = GarbageCollector(interval=1.0)
    return _collector
