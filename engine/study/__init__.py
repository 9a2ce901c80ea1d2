"""Blind reader studies: readers rate real and synthetic scans; storage, display, statistics, reports.

Modules, by who needs them:

* :mod:`engine.study.organiser` — :class:`StudyDatabase`, the organiser's view of the database:
  create a study, add readers, list and check studies, open a reader's session, export answers.
* :mod:`engine.study.reader_session` — :class:`ReaderSession`, the one object a review front end
  drives (next case, open, load, answer, skip; never the truth).
* :mod:`engine.study.records` — the rows as dataclasses (study info, progress, answers, history,
  export records).
* :mod:`engine.study.database` — the SQLite file: connection, schema, the public ``read`` and
  ``transaction`` blocks, the default path.
* :mod:`engine.study.case_order` — anonymous case numbers and each reader's seeded order.
* :mod:`engine.study.case_files` — a case file's SHA-256 and whether it changed.
* :mod:`engine.study.display` — the one display pipeline every case goes through.
* :mod:`engine.study.questions` — the rating panel and answer validation.
* :mod:`engine.study.statistics` — pure statistics (accuracy, binomial test, Clopper–Pearson,
  sensitivity/specificity, ROC, kappas).
* :mod:`engine.study.results` — per reader and pooled results of a study.
* :mod:`engine.study.report` — Markdown report, ROC PNG, CSV/JSON exports.
* :mod:`engine.study.pack` — a reader's study pack: one sealed, self-contained file to rate elsewhere.
* :mod:`engine.study.merge` — verifying packs and importing their answers into the organiser's database.
* :mod:`engine.study.blinding` — the leakage check: do simple image statistics tell real from synthetic?

The names below are the ones front ends use; each is defined in one of the modules above.
Heavy modules (matplotlib in ``report``) are imported only when used.
"""

from engine.study.case_order import reader_order
from engine.study.database import default_database_path
from engine.study.display import DisplayCase, DisplaySettings
from engine.study.errors import StudyError
from engine.study.organiser import StudyDatabase
from engine.study.questions import DEFAULT_QUESTIONS, Question, missing_required, validate_answer
from engine.study.reader_session import ReaderSession
from engine.study.records import Answer, HistoryEntry, Progress, QueueEntry, StudyInfo, StudySummary

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
