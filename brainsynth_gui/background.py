"""Run one blocking call (loading and preparing a scan) off the interface thread."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from PySide6.QtCore import QThread, Signal

from engine.errors import BrainSynthError

log = logging.getLogger(__name__)


class BackgroundCall(QThread):
    """Calls ``fn()`` in a thread; ``succeeded(result)`` or ``failed(message)`` arrive in the caller's thread.

    Args:
        fn: the work; a :class:`engine.errors.BrainSynthError` becomes its message, anything
            else a message asking for a report (with the traceback in the log).
    """

    succeeded = Signal(object)
    failed = Signal(str)

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__()
        self._fn = fn

    def run(self) -> None:
        try:
            result = self._fn()
        except BrainSynthError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:
            log.error("background call failed:\n%s", traceback.format_exc())
            self.failed.emit(f"unexpected error ({type(exc).__name__}: {exc}); please report this with the log")
        else:
            self.succeeded.emit(result)
