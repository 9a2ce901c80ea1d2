"""The rating panel of review mode, built from a study's questions, over a :class:`RatingState`.

One row per question: a scale question shows its values as buttons labelled with the scale's
words ("1 certainly real" … "5 certainly synthetic"), a text question a one-line field. The
row with the keyboard focus is outlined. Rows write through the state and redraw from it, so
the number keys (handled by the review window) and mouse clicks always agree.

Keys inside the panel: Up/Down (and Tab/Shift+Tab) move between questions, Left/Right change
the focused scale answer.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from brainsynth_gui.rating_state import RatingState
from engine.study.questions import MAX_TEXT_LENGTH, Question

ROW_STYLE = "QFrame#question {{ border: 2px solid {colour}; border-radius: 5px; background: {background}; }}"
FOCUSED = ROW_STYLE.format(colour="#e0a020", background="rgba(224, 160, 32, 28)")
UNFOCUSED = ROW_STYLE.format(colour="transparent", background="transparent")
BUTTON_STYLE = (
    "QToolButton { padding: 3px 1px; min-width: 60px; border: 1px solid #8a8a8a; border-radius: 4px; }"
    "QToolButton:checked { background: #2f6fb0; color: white; border-color: #2f6fb0; font-weight: bold; }"
)


class QuestionRow(QFrame):
    """One question: its text and its scale buttons or text field.

    Args:
        index: position of the question in the panel.
        question: the question.
        rating: the shared rating state.
    """

    def __init__(self, index: int, question: Question, rating: RatingState) -> None:
        super().__init__()
        self.setObjectName("question")
        self.index = index
        self.question = question
        self.rating = rating
        self.buttons: dict[int, QToolButton] = {}
        self.field: QLineEdit | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 6)
        layout.setSpacing(3)
        star = " *" if question.required else " (optional)"
        self.title = QLabel(f"<b>{question.text}</b>{star}")
        self.title.setWordWrap(True)
        layout.addWidget(self.title)
        if question.kind == "scale":
            self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            row = QHBoxLayout()
            row.setSpacing(4)
            group = QButtonGroup(self)
            group.setExclusive(False)  # the state decides what is checked
            for value in question.choices:
                words = question.labels.get(value, "")
                button = QToolButton()
                # One word per line: five buttons fit the panel without eliding "implausible".
                button.setText("\n".join([str(value), *words.split()]) if words else str(value))
                key_hint = f" (key {value})" if 0 <= value <= 9 else ""
                button.setToolTip(question.label(value) + key_hint)
                button.setCheckable(True)
                button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                button.setStyleSheet(BUTTON_STYLE)
                button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
                button.clicked.connect(lambda _checked=False, v=value: self._clicked(v))
                group.addButton(button)
                row.addWidget(button)
                self.buttons[value] = button
            layout.addLayout(row)
        else:
            self.field = QLineEdit()
            self.field.setMaxLength(MAX_TEXT_LENGTH)
            self.field.setPlaceholderText("Type here; Enter goes to the next case")
            self.field.textEdited.connect(lambda text: rating.set_value(question.key, text))
            self.setFocusProxy(self.field)
            self.field.installEventFilter(self)
            layout.addWidget(self.field)

    def _clicked(self, value: int) -> None:
        self.rating.set_focus(self.index)
        self.rating.set_value(self.question.key, value)

    def refresh(self) -> None:
        value = self.rating.value(self.question.key)
        for v, button in self.buttons.items():
            button.setChecked(v == value)
        if self.field is not None:
            text = "" if value is None else str(value)
            if self.field.text() != text:
                self.field.setText(text)
        self.setStyleSheet(FOCUSED if self.rating.focus == self.index else UNFOCUSED)

    def eventFilter(self, watched, event) -> bool:
        if watched is self.field and event.type() == event.Type.FocusIn:
            self.rating.set_focus(self.index)
        return False

    def focusInEvent(self, event) -> None:
        super().focusInEvent(event)
        self.rating.set_focus(self.index)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key == Qt.Key.Key_Up:
            self.rating.focus_by(-1)
        elif key == Qt.Key.Key_Down:
            self.rating.focus_by(1)
        elif key == Qt.Key.Key_Left and self.question.kind == "scale":
            self.rating.step_value(-1)
        elif key == Qt.Key.Key_Right and self.question.kind == "scale":
            self.rating.step_value(1)
        else:
            super().keyPressEvent(event)
            return
        event.accept()


class RatingPanel(QWidget):
    """Every question of the study, top to bottom, over ``rating``."""

    def __init__(self, rating: RatingState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rating = rating
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        self.rows = [QuestionRow(i, q, rating) for i, q in enumerate(rating.questions)]
        for row in self.rows:
            layout.addWidget(row)
        for first, second in zip(self.rows, self.rows[1:], strict=False):
            QWidget.setTabOrder(first.field or first, second.field or second)
        self._focus = rating.focus
        rating.subscribe(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        for row in self.rows:
            row.refresh()
        if self.rating.focus != self._focus:
            # A number key answered a question (or an arrow moved on): the keyboard follows.
            self._focus = self.rating.focus
            if self.isVisible() and self.isEnabled():
                self.focus_current()

    def focus_current(self) -> None:
        """Give the keyboard to the focused question's row (or its text field)."""
        row = self.rows[self.rating.focus]
        target = row.field or row
        if not target.hasFocus():
            target.setFocus(Qt.FocusReason.OtherFocusReason)
