"""The rows of a reader study as Python values: what the organiser and the readers get back.

Reader-facing records (:class:`StudyInfo`, :class:`Progress`, :class:`QueueEntry`,
:class:`Answer`, :class:`HistoryEntry`) carry no truth and no file path; only the
organiser's export records (:class:`AnswerRecord`, :class:`HistoryRecord`) and
:class:`StudySummary` join what readers must not see.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.study.display import DisplaySettings
from engine.study.questions import Question

#: The two kinds of case, as stored in the ``cases`` table.
TRUTHS = ("real", "synthetic")


@dataclass(frozen=True)
class StudyInfo:
    """A study as its readers' front end needs it (no truth, no paths, no pool sizes).

    Attributes:
        name: the study's unique name.
        created_at: ISO time of creation.
        allow_changes: whether readers may change a saved answer.
        questions: the rating panel, in order.
        display: grid, intensity mapping and window every case is shown with.
        readers: reader names, in the order they were added.
        n_cases: number of cases each reader rates.
    """

    name: str
    created_at: str
    allow_changes: bool
    questions: tuple[Question, ...]
    display: DisplaySettings
    readers: tuple[str, ...]
    n_cases: int


@dataclass(frozen=True)
class StudySummary:
    """A study as ``study list`` shows it to the organiser."""

    name: str
    created_at: str
    n_real: int
    n_synthetic: int
    readers: tuple[str, ...]
    answered: dict[str, int]
    allow_changes: bool
    preset: str


@dataclass(frozen=True)
class Progress:
    """A reader's progress: ``answered`` of ``total`` cases, ``skipped`` of them waiting after a skip."""

    total: int
    answered: int
    skipped: int

    @property
    def remaining(self) -> int:
        return self.total - self.answered

    @property
    def done(self) -> bool:
        return self.answered >= self.total


@dataclass(frozen=True)
class QueueEntry:
    """One case in a reader's current order: ``status`` is "unanswered", "skipped" or "answered"."""

    case_number: int
    status: str


@dataclass(frozen=True)
class Answer:
    """A reader's current answer to one case.

    Attributes:
        case_number: the anonymous case number.
        values: question key → answer (validated; optional questions only when answered).
        seconds: total time spent on the case over all visits, or None if never timed.
        answered_at: ISO time of the first answer.
        updated_at: ISO time of the latest change (equal to ``answered_at`` if never changed).
        revision: 1 for the first answer, +1 per change.
    """

    case_number: int
    values: dict
    seconds: float | None
    answered_at: str
    updated_at: str
    revision: int


@dataclass(frozen=True)
class HistoryEntry:
    """One save of an answer: ``action`` is "answer" (the first) or "change"."""

    case_number: int
    revision: int
    action: str
    values: dict
    seconds: float | None
    recorded_at: str


@dataclass(frozen=True)
class AnswerRecord:
    """One answer with the hidden truth joined: for exports and statistics only, never for readers.

    Attributes:
        study: study name.
        reader: reader name.
        case_number: anonymous case number.
        truth: "real" or "synthetic".
        position: where the case came in the reader's shuffled order (1-based).
        skips: how often the reader skipped the case before answering.
        values: the answer (question key → value).
        seconds: total time on the case, or None.
        answered_at, updated_at, revision: as in :class:`Answer`.
        source: the case's file, only when asked for explicitly, else None.
    """

    study: str
    reader: str
    case_number: int
    truth: str
    position: int
    skips: int
    values: dict
    seconds: float | None
    answered_at: str
    updated_at: str
    revision: int
    source: str | None = None


@dataclass(frozen=True)
class HistoryRecord:
    """One row of the answer history with the truth joined (exports only)."""

    study: str
    reader: str
    case_number: int
    truth: str
    revision: int
    action: str
    values: dict
    seconds: float | None
    recorded_at: str
