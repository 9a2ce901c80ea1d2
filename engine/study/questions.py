"""The questions a reader answers for every case, and validation of the answers.

A study stores its questions (as JSON) when it is created, so the questions of a running
study never change under its readers. The default set follows the reference study's expert
review (anatomical plausibility, structural consistency) and the usual visual Turing test:

* ``confidence`` — real or synthetic on a five-point confidence scale, 1 = certainly real,
  2 = probably real, 3 = unsure, 4 = probably synthetic, 5 = certainly synthetic. Required,
  and the only question the detection statistics use.
* ``realism``, ``plausibility``, ``consistency`` — 1 (worst) to 5 (best). Required.
* ``notes`` — free text. Optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.study.errors import StudyError

#: The key of the real-or-synthetic question; every study must have it (1..5).
CONFIDENCE_KEY = "confidence"
#: Longest free-text answer accepted, in characters.
MAX_TEXT_LENGTH = 10_000


@dataclass(frozen=True)
class Question:
    """One question of the rating panel.

    Attributes:
        key: identifier used in the database, exports and the CLI (``--<key>``).
        text: the question as shown to the reader.
        kind: ``"scale"`` (an integer from ``low`` to ``high``) or ``"text"``.
        low: lowest scale value.
        high: highest scale value.
        labels: scale value → short label (the keyboard hint in the app), e.g. 1 → "certainly real".
        required: the answer cannot be saved without it (the app blocks Next).
    """

    key: str
    text: str
    kind: str = "scale"
    low: int = 1
    high: int = 5
    labels: dict[int, str] = field(default_factory=dict)
    required: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("scale", "text"):
            raise StudyError(f"question {self.key!r} has kind {self.kind!r}; use 'scale' or 'text'")
        if not self.key.isidentifier():
            raise StudyError(f"question key {self.key!r} must be a plain identifier (letters, digits, _)")
        if self.kind == "scale" and not self.low < self.high:
            raise StudyError(f"question {self.key!r}: the scale needs low < high, got {self.low}..{self.high}")

    @property
    def choices(self) -> list[int]:
        """The valid scale values (empty for text questions)."""
        return list(range(self.low, self.high + 1)) if self.kind == "scale" else []

    def label(self, value: int) -> str:
        """``"4 (probably synthetic)"``, or just ``"4"`` without a label."""
        text = self.labels.get(int(value))
        return f"{value} ({text})" if text else str(value)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "text": self.text,
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "labels": {str(k): v for k, v in self.labels.items()},
            "required": self.required,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Question:
        return cls(
            key=str(data["key"]),
            text=str(data["text"]),
            kind=str(data.get("kind", "scale")),
            low=int(data.get("low", 1)),
            high=int(data.get("high", 5)),
            labels={int(k): str(v) for k, v in dict(data.get("labels", {})).items()},
            required=bool(data.get("required", True)),
        )


DEFAULT_QUESTIONS: tuple[Question, ...] = (
    Question(
        CONFIDENCE_KEY,
        "Is this scan real or synthetic?",
        labels={
            1: "certainly real",
            2: "probably real",
            3: "unsure",
            4: "probably synthetic",
            5: "certainly synthetic",
        },
    ),
    Question("realism", "Overall realism", labels={1: "very poor", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}),
    Question(
        "plausibility",
        "Anatomical plausibility",
        labels={
            1: "implausible",
            2: "largely implausible",
            3: "partly plausible",
            4: "plausible",
            5: "fully plausible",
        },
    ),
    Question(
        "consistency",
        "Consistency between slices",
        labels={1: "very inconsistent", 2: "inconsistent", 3: "acceptable", 4: "consistent", 5: "fully consistent"},
    ),
    Question("notes", "Notes", kind="text", required=False),
)


def check_questions(questions: Sequence[Question]) -> tuple[Question, ...]:
    """Refuse a question set without the 1..5 confidence question or with duplicate keys."""
    questions = tuple(questions)
    keys = [q.key for q in questions]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise StudyError(f"duplicate question keys: {', '.join(duplicates)}")
    confidence = next((q for q in questions if q.key == CONFIDENCE_KEY), None)
    if confidence is None or confidence.kind != "scale" or (confidence.low, confidence.high) != (1, 5):
        raise StudyError(
            f"a study needs the {CONFIDENCE_KEY!r} question on a 1..5 scale "
            "(1 certainly real ... 5 certainly synthetic); the statistics are built on it"
        )
    if not confidence.required:
        raise StudyError(f"the {CONFIDENCE_KEY!r} question must be required")
    return questions


def validate_answer(questions: Sequence[Question], values: Mapping[str, object]) -> dict[str, object]:
    """Check an answer against the questions and return it in canonical form.

    Scale values may be given as int or as a string of digits (as typed); they come back as
    int. Text is stripped; empty text counts as not given. Keys of optional questions that
    were not answered are left out.

    Args:
        questions: the study's questions.
        values: question key → answer.

    Returns:
        The validated answer, question order, only keys that were answered.

    Raises:
        StudyError: an unknown question, a value out of range or not a whole number, text too
            long, or required questions unanswered (all of them named in one message).
    """
    by_key = {q.key: q for q in questions}
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise StudyError(
            f"unknown question{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"this study asks: {', '.join(by_key)}"
        )
    clean: dict[str, object] = {}
    for q in questions:
        raw = values.get(q.key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        if q.kind == "text":
            text = str(raw).strip()
            if len(text) > MAX_TEXT_LENGTH:
                raise StudyError(f"{q.text}: at most {MAX_TEXT_LENGTH} characters, got {len(text)}")
            clean[q.key] = text
            continue
        value = _as_int(raw)
        if value is None or not q.low <= value <= q.high:
            raise StudyError(f"{q.text}: {raw!r} is not a whole number from {q.low} to {q.high}")
        clean[q.key] = value
    missing = [q for q in questions if q.required and q.key not in clean]
    if missing:
        names = ", ".join(f"{q.text} ({q.key})" for q in missing)
        raise StudyError(f"required answer{'s' if len(missing) > 1 else ''} missing: {names}")
    return clean


def missing_required(questions: Sequence[Question], values: Mapping[str, object]) -> list[str]:
    """Keys of required questions without a usable answer yet (never raises).

    For a rating panel that keeps Next disabled until this is empty; :func:`validate_answer`
    then gives the canonical values (and :meth:`ReaderSession.answer` validates again).
    """
    missing = []
    for q in questions:
        if not q.required:
            continue
        raw = values.get(q.key)
        if q.kind == "text":
            ok = raw is not None and bool(str(raw).strip())
        else:
            value = _as_int(raw)
            ok = value is not None and q.low <= value <= q.high
        if not ok:
            missing.append(q.key)
    return missing


def _as_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().lstrip("+-").isdigit():
        return int(raw.strip())
    return None


def confidence_call(confidence: int) -> str | None:
    """The binary call behind a confidence value: 1–2 ``"real"``, 4–5 ``"synthetic"``, 3 None (unsure)."""
    if confidence <= 2:
        return "real"
    if confidence >= 4:
        return "synthetic"
    return None
