"""Waiting for background work in pytest-qt tests."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QApplication


def wait_until(predicate, timeout: float = 60.0) -> None:
    """Process Qt events until ``predicate()`` is true; TimeoutError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        QApplication.processEvents()
        time.sleep(0.005)
