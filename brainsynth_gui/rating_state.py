"""The rating in progress, as a small Qt-free object (see docs/architecture.md, "Layers").

The rating panel's buttons, the number keys and the notes field all write through
:class:`RatingState`, and the panel redraws from its notifications, so a value set by key and
the highlighted button can never disagree. It holds the answer being given to the case on
screen and which question has the keyboard focus; it never touches the database (the review
window saves with :meth:`engine.study.ReaderSession.answer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from brainsynth_gui.state import Observable
from engine.study.questions import Question, missing_required


class RatingState(Observable):
    """The answer being given to one case, question by question.

    Args:
        questions: the study's rating panel, in order.
    """

    def __init__(self, questions: Sequence[Question]) -> None:
        super().__init__()
        self.questions: tuple[Question, ...] = tuple(questions)
        if not self.questions:
            raise ValueError("a rating needs at least one question")
        self._values: dict[str, object] = {}
        self._focus = 0

    @property
    def values(self) -> dict[str, object]:
        """Question key → answer so far (scale answers as int, text as str); a copy."""
        return dict(self._values)

    @property
    def focus(self) -> int:
        """Index of the question the number keys answer."""
        return self._focus

    @property
    def focused(self) -> Question:
        return self.questions[self._focus]

    @property
    def missing(self) -> list[str]:
        """Keys of required questions still unanswered (Next is blocked while there are any)."""
        return missing_required(self.questions, self._values)

    @property
    def complete(self) -> bool:
        return not self.missing

    def missing_text(self) -> str:
        """The unanswered required questions by their text, e.g. ``"Overall realism, Notes"``."""
        keys = set(self.missing)
        return ", ".join(q.text for q in self.questions if q.key in keys)

    def value(self, key: str) -> object | None:
        return self._values.get(key)

    def reset(self, values: Mapping[str, object] | None = None) -> None:
        """Start a new case: no answers (or ``values``, a saved answer being changed), focus on the first question."""
        self._values = {k: v for k, v in dict(values or {}).items() if k in {q.key for q in self.questions}}
        self._focus = 0
        self._notify()

    def set_value(self, key: str, value: object | None) -> None:
        """Answer question ``key`` (None or empty text clears it); a scale value outside its range is ignored."""
        question = next((q for q in self.questions if q.key == key), None)
        if question is None:
            raise KeyError(f"no question {key!r}")
        if question.kind == "scale" and value is not None and int(value) not in question.choices:  # type: ignore[call-overload]
            return
        if value is None or (isinstance(value, str) and not value.strip() and question.kind == "text"):
            changed = self._values.pop(key, None) is not None
        else:
            value = int(value) if question.kind == "scale" else str(value)  # type: ignore[call-overload]
            changed = self._values.get(key) != value
            self._values[key] = value
        if changed:
            self._notify()

    def set_focus(self, index: int) -> None:
        """Give question ``index`` the keyboard (clamped to the panel)."""
        new = min(max(int(index), 0), len(self.questions) - 1)
        if new != self._focus:
            self._focus = new
            self._notify()

    def focus_by(self, delta: int) -> None:
        self.set_focus(self._focus + delta)

    def choose(self, value: int) -> bool:
        """A number key: answer the focused scale question with ``value`` and move to the next question.

        Returns:
            True when the value was taken (the focused question is a scale that has it).
        """
        question = self.focused
        if question.kind != "scale" or value not in question.choices:
            return False
        self.set_value(question.key, value)
        self.focus_by(1)
        return True

    def step_value(self, delta: int) -> None:
        """Left/Right arrows: move the focused scale answer one step (from the middle if unanswered)."""
        question = self.focused
        if question.kind != "scale":
            return
        current = self._values.get(question.key)
        if current is None:
            new = (question.low + question.high) // 2
        else:
            new = min(max(int(current) + delta, question.low), question.high)  # type: ignore[call-overload]
        self.set_value(question.key, new)
