"""Blind reader studies: readers rate real and synthetic scans; storage, display, statistics, reports.

Modules:

* :mod:`engine.study.storage` — the SQLite database (:class:`StudyDatabase`) and a reader's
  :class:`ReaderSession`, the object a review front end drives.
* :mod:`engine.study.display` — the one display pipeline every case goes through.
* :mod:`engine.study.questions` — the rating panel and answer validation.
* :mod:`engine.study.statistics` — pure statistics (accuracy, binomial test, Clopper–Pearson,
  sensitivity/specificity, ROC, kappas).
* :mod:`engine.study.results` — per reader and pooled results of a study.
* :mod:`engine.study.report` — Markdown report, ROC PNG, CSV/JSON exports.

Heavy modules (matplotlib in ``report``) are imported only when used.
"""

from engine.study.display import DisplayCase, DisplaySettings
from engine.study.errors import StudyError
from engine.study.questions import DEFAULT_QUESTIONS, Question, missing_required, validate_answer
from engine.study.storage import (
    Answer,
    HistoryEntry,
    Progress,
    QueueEntry,
    ReaderSession,
    StudyDatabase,
    StudyInfo,
    StudySummary,
    default_database_path,
    reader_order,
)

__all__ = [
    "DEFAULT_QUESTIONS",
    "Answer",
    "DisplayCase",
    "DisplaySettings",
    "HistoryEntry",
    "Progress",
    "Question",
    "QueueEntry",
    "ReaderSession",
    "StudyDatabase",
    "StudyError",
    "StudyInfo",
    "StudySummary",
    "default_database_path",
    "missing_required",
    "reader_order",
    "validate_answer",
]
