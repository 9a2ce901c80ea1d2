"""Review mode's navigation, as a small Qt-free object (like :class:`~brainsynth_gui.rating_state.RatingState`).

:class:`ReviewFlow` knows which case is on screen, which is being loaded, whether an earlier
answer is being changed, which cases were answered in this window and when the study is
finished; it drives the :class:`engine.study.ReaderSession` (the only thing it talks to) and
resets the :class:`~brainsynth_gui.rating_state.RatingState` for every case. The review window
only renders it: it subscribes for changes, loads cases when asked (in the background) and
hands them back with :meth:`ReviewFlow.loaded`.

Rules it keeps (the review window's docstring tells them from the reader's side):

* Every answer is saved with :meth:`ReaderSession.answer` the moment Next is taken; opening the
  study again resumes at the first unanswered case (:meth:`ReaderSession.next_case`).
* Next is refused while a required question is unanswered.
* Skip moves the case behind all others; it is refused while an earlier answer is being changed.
* A case's clock (:class:`CaseClock`) starts when it is on screen, not while it loads, and
  stands still while the flow is paused (the review window hidden or closed, the app in the
  background); the time saved with an answer or a skip is the clock's.
* While the reader rates, the case that comes next is loaded ahead; at most two are kept.
* Back revisits earlier answers, only when the study allows changing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from brainsynth_gui.rating_state import RatingState
from brainsynth_gui.state import Observable
from engine.errors import BrainSynthError
from engine.study import DisplayCase, ReaderSession


def _ignore(*_args) -> None:
    return None


class CaseClock:
    """Time on one case that runs only while the reader can see it.

    Args:
        now: the time source in seconds (monotonic); tests pass their own.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._spent = 0.0
        self._since: float | None = None  # when the running stretch began; None while paused
        self.paused = False

    def restart(self) -> None:
        """Start from 0 for a new case (running unless paused)."""
        self._spent = 0.0
        self._since = None if self.paused else self._now()

    def pause(self) -> None:
        """Stop the clock (the window is hidden or the app is in the background)."""
        if self._since is not None:
            self._spent += self._now() - self._since
            self._since = None
        self.paused = True

    def resume(self) -> None:
        """Run again after :meth:`pause`."""
        if self.paused:
            self.paused = False
            self._since = self._now()

    @property
    def seconds(self) -> float:
        """Seconds counted so far on this case."""
        running = self._now() - self._since if self._since is not None else 0.0
        return max(0.0, self._spent + running)


class ReviewFlow(Observable):
    """Which case a reader sees and what Next, Skip and Back do; subscribers hear every change.

    Args:
        session: the reader's session (answers are committed through it).
        rating: the rating in progress; reset for every case (to the saved answer when changing one).
        load: asked to load a case, ``load(number)``; the front end answers later with
            :meth:`loaded` or :meth:`load_failed` (or at once, for a synchronous loader).
        shown: called with the :class:`engine.study.DisplayCase` once it is on screen and its clock runs.
        finished: called when every case is answered.
        error: called as ``error(title, message)`` when the session refuses something.
        clock: the case clock (a fresh :class:`CaseClock` by default).
    """

    def __init__(
        self,
        session: ReaderSession,
        rating: RatingState,
        *,
        load: Callable[[int], None],
        shown: Callable[[DisplayCase], None] = _ignore,
        finished: Callable[[], None] = _ignore,
        error: Callable[[str, str], None] = _ignore,
        clock: CaseClock | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.rating = rating
        self.clock = CaseClock() if clock is None else clock
        self._load, self._shown, self._finished_hook, self._error = load, shown, finished, error
        self.total = session.study.n_cases
        self.current: int | None = None  # case on screen (its clock runs)
        self.loading: int | None = None  # case being loaded for the screen
        self.failed: int | None = None  # the case that could not be loaded for the screen
        self.revisiting: int | None = None  # index into answered_order while changing an answer
        self.finished = False
        self._saved_values: dict | None = None
        self._cache: dict[int, DisplayCase] = {}
        self._pending: set[int] = set()
        self.answered_order: list[int] = []
        for entry in session.history():
            if entry.action == "answer" and entry.case_number not in self.answered_order:
                self.answered_order.append(entry.case_number)

    # -- what the front end shows --------------------------------------------------------------

    @property
    def allow_changes(self) -> bool:
        return self.session.allow_changes

    @property
    def case_number(self) -> int | None:
        """The case on screen or on its way there."""
        return self.current if self.current is not None else self.loading

    @property
    def can_next(self) -> bool:
        return self.current is not None and self.rating.complete

    @property
    def can_skip(self) -> bool:
        return self.case_number is not None and self.revisiting is None

    @property
    def can_back(self) -> bool:
        return self.allow_changes and bool(self.answered_order)

    @property
    def kept(self) -> tuple[int, ...]:
        """Numbers of the loaded cases kept (the one on screen and the next one)."""
        return tuple(self._cache)

    def position_text(self) -> str:
        """``"Case 7 · 12 of 40"`` (12: the count this case will make), or the finished/changing state."""
        if self.finished:
            return f"Finished · {self.total} of {self.total}"
        number = self.case_number
        if number is None:
            return ""
        if self.revisiting is not None:
            return f"Case {number} · changing your answer"
        answered = self.session.progress().answered
        return f"Case {number} · {answered + 1} of {self.total}"

    # -- moving ------------------------------------------------------------------------------

    def start(self) -> None:
        """Go to the first unanswered case (resuming a study started earlier), or finish."""
        self._go_next()

    def show(self, number: int) -> None:
        """Put case ``number`` on screen: at once when it is loaded, else after :meth:`loaded`."""
        self.finished = False
        self.current = None
        self.loading = number
        self.failed = None
        self.rating.reset()
        self._notify()
        cached = self._cache.get(number)
        if cached is not None:
            self._display(cached)
        else:
            self._request(number)

    def next(self) -> bool:
        """Save the answer and go on; refused while a required question is unanswered.

        Returns:
            True when the answer was saved (or was unchanged) and the next case is on its way.
        """
        number = self.current
        if number is None or not self.rating.complete:
            return False
        values = self.rating.values
        if self.revisiting is None or values != self._saved_values:
            try:
                self.session.answer(number, values, seconds=self.clock.seconds)
            except BrainSynthError as exc:
                self._error("Answer not saved", str(exc))
                return False
        if number not in self.answered_order:
            self.answered_order.append(number)
        if self.revisiting is not None and self.revisiting + 1 < len(self.answered_order):
            self._revisit(self.revisiting + 1)
        else:
            self._go_next()
        return True

    def skip(self) -> bool:
        """Skip the case on screen (or loading) for later; it comes back after all the others."""
        number = self.case_number
        if number is None or self.revisiting is not None:
            return False
        try:
            self.session.skip(number, seconds=self.clock.seconds if self.current is not None else 0.0)
        except BrainSynthError as exc:
            self._error("Cannot skip", str(exc))
            return False
        self._go_next()
        return True

    def back(self) -> bool:
        """Go to the case answered before this one to change its answer (only if the study allows it)."""
        if not self.allow_changes:
            return False
        index = len(self.answered_order) - 1 if self.revisiting is None else self.revisiting - 1
        if index < 0:
            return False
        self._revisit(index)
        return True

    def pause(self) -> None:
        """The reader cannot see the case (window hidden or closed, app in the background): stop its clock."""
        self.clock.pause()

    def resume(self) -> None:
        """The case is visible again: its clock runs on."""
        self.clock.resume()

    @property
    def has_unsaved_answers(self) -> bool:
        """A case is on screen with answers given but not saved (Next not taken, or a change not saved)."""
        if self.current is None:
            return False
        values = {k: v for k, v in self.rating.values.items() if v not in (None, "")}
        if self.revisiting is not None:
            return self.rating.values != self._saved_values
        return bool(values)

    # -- loading (the front end's answers to ``load``) -------------------------------------------

    def loaded(self, case: DisplayCase) -> None:
        """A case requested with ``load`` has arrived; it goes on screen if it is the one awaited."""
        self._pending.discard(case.number)
        self._cache[case.number] = case
        if case.number == self.loading:
            self._display(case)

    def load_failed(self, number: int, message: str) -> None:
        """Loading ``number`` failed; reported only when the screen waits for it (not for a prefetch)."""
        self._pending.discard(number)
        if number != self.loading:
            return  # a prefetch failed; the error shows if the reader gets there
        self.failed = number
        self._notify()
        self._error("Cannot show case", message)

    # -- inside ------------------------------------------------------------------------------

    def _go_next(self) -> None:
        self.revisiting = None
        self._saved_values = None
        try:
            number = self.session.next_case()
        except BrainSynthError as exc:
            self._error("Cannot continue", str(exc))
            return
        if number is None:
            self._finish()
        else:
            self.show(number)

    def _revisit(self, index: int) -> None:
        self.revisiting = index
        self.show(self.answered_order[index])

    def _request(self, number: int) -> None:
        if number in self._pending:
            return  # already on its way (a prefetch the screen now waits for)
        self._pending.add(number)
        self._load(number)

    def _display(self, case: DisplayCase) -> None:
        number = case.number
        self.loading = None
        try:
            self.session.open_case(number)
            saved = self.session.answer_of(number) if self.revisiting is not None else None
        except BrainSynthError as exc:
            self._notify()
            self._error("Cannot open case", str(exc))
            return
        self.current = number
        self.clock.restart()
        self._saved_values = dict(saved.values) if saved is not None else None
        self.rating.reset(self._saved_values)
        self._cache = {number: case, **{k: v for k, v in self._cache.items() if k != number}}
        self._notify()
        self._shown(case)
        self._prefetch()

    def _prefetch(self) -> None:
        """Load the case that comes after this one while the reader rates (at most two kept)."""
        try:
            upcoming = [e.case_number for e in self.session.queue() if e.status != "answered"]
        except BrainSynthError:
            return
        following = next((n for n in upcoming if n != self.current), None)
        self._cache = {k: v for k, v in self._cache.items() if k in (self.current, following)}
        if following is not None and following not in self._cache:
            self._request(following)

    def _finish(self) -> None:
        self.current = None
        self.loading = None
        self.failed = None
        self.finished = True
        self._notify()
        self._finished_hook()
