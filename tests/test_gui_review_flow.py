"""Review mode's navigation (:class:`ReviewFlow`) on a real study database, without Qt."""

from __future__ import annotations

import pytest

from brainsynth_gui.rating_state import RatingState
from brainsynth_gui.review_flow import ReviewFlow
from engine.study import StudyDatabase
from tests.helpers_study import GOOD, make_pools


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("pools"), n_real=2, n_synthetic=2)


@pytest.fixture
def db(pools, tmp_path):
    real, synthetic = pools
    with StudyDatabase(tmp_path / "studies.sqlite") as database:
        database.create_study(name="Fixed", real=[real], synthetic=[synthetic], readers=["Dr A"], seed=3)
        database.create_study(
            name="Changes", real=[real], synthetic=[synthetic], readers=["Dr C"], seed=4, allow_changes=True
        )
        yield database


class Front:
    """What a front end does for the flow: loads cases (at once or when told), records what it is told."""

    def __init__(self, db, study: str, reader: str, *, immediate: bool = True) -> None:
        self.session = db.session(study, reader)
        self.rating = RatingState(self.session.questions)
        self.immediate = immediate
        self.requests: list[int] = []
        self.shown: list[int] = []
        self.errors: list[tuple[str, str]] = []
        self.finished = 0
        self.changes = 0
        self.flow = ReviewFlow(
            self.session,
            self.rating,
            load=self.load,
            shown=lambda case: self.shown.append(case.number),
            finished=self.on_finished,
            error=lambda title, message: self.errors.append((title, message)),
        )
        self.flow.subscribe(self.on_change)

    def on_change(self) -> None:
        self.changes += 1

    def on_finished(self) -> None:
        self.finished += 1

    def load(self, number: int) -> None:
        self.requests.append(number)
        if self.immediate:
            self.flow.loaded(self.session.load_case(number))

    def deliver(self, number: int) -> None:
        self.flow.loaded(self.session.load_case(number))

    def answer(self, values=GOOD) -> bool:
        for key, value in values.items():
            self.rating.set_value(key, value)
        return self.flow.next()


def test_next_is_refused_until_the_rating_is_complete_then_saves_and_moves_on(db):
    front = Front(db, "Fixed", "Dr A")
    order = front.session.order()
    flow = front.flow
    flow.start()
    assert flow.current == order[0]
    assert front.shown == [order[0]]
    assert flow.position_text() == f"Case {order[0]} · 1 of 4"
    assert flow.kept == (order[0], order[1])  # the next case is loaded ahead, no more
    assert not flow.can_next
    assert not flow.next()
    assert front.session.answer_of(order[0]) is None
    front.rating.set_value("confidence", 4)
    assert not flow.next()  # still incomplete
    assert front.answer()
    assert front.session.answer_of(order[0]).values == GOOD
    assert flow.current == order[1]
    assert flow.answered_order == [order[0]]
    assert front.requests.count(order[1]) == 1  # the prefetched case was not loaded twice
    assert flow.position_text() == f"Case {order[1]} · 2 of 4"
    assert front.rating.values == {}  # a fresh rating for the new case
    assert not front.errors


def test_a_case_loading_in_the_background_has_no_clock_and_a_failed_prefetch_stays_silent(db):
    front = Front(db, "Fixed", "Dr A", immediate=False)
    order = front.session.order()
    flow = front.flow
    flow.start()
    assert flow.loading == order[0]
    assert flow.current is None
    assert front.shown == []
    assert flow.case_number == order[0]
    assert flow.can_skip
    assert not flow.can_next
    assert front.requests == [order[0]]
    front.deliver(order[0])
    assert flow.current == order[0]
    assert flow.loading is None
    assert front.shown == [order[0]]
    assert front.requests == [order[0], order[1]]  # prefetch asked for
    flow.load_failed(order[1], "prefetch broke")
    assert not front.errors
    assert flow.failed is None
    assert front.answer()
    assert flow.loading == order[1]
    assert front.requests[-1] == order[1]
    flow.load_failed(order[1], "cannot read the case")
    assert front.errors == [("Cannot show case", "cannot read the case")]
    assert flow.failed == order[1]
    assert flow.skip()  # a case that cannot be shown can still be skipped
    assert flow.loading == order[2]
    assert flow.failed is None


def test_skip_sends_the_case_to_the_end_and_the_study_finishes_once(db):
    front = Front(db, "Fixed", "Dr A")
    order = front.session.order()
    flow = front.flow
    flow.start()
    assert flow.skip()
    assert flow.current == order[1]
    assert [e.case_number for e in front.session.queue()][-1] == order[0]
    seen = [flow.current]
    while flow.current is not None:
        assert front.answer()
        seen.append(flow.current)
    assert seen == [order[1], order[2], order[3], order[0], None]
    assert flow.finished
    assert front.finished == 1
    assert front.session.progress().done
    assert flow.position_text() == "Finished · 4 of 4"
    assert not flow.skip()
    assert not flow.next()


def test_back_changes_an_earlier_answer_only_when_the_study_allows_it(db):
    fixed = Front(db, "Fixed", "Dr A")
    fixed.flow.start()
    assert fixed.answer()
    assert not fixed.flow.can_back
    assert not fixed.flow.back()

    front = Front(db, "Changes", "Dr C")
    flow = front.flow
    flow.start()
    first = flow.current
    assert front.answer({**GOOD, "confidence": 5})
    second = flow.current
    assert flow.can_back
    assert flow.back()
    assert flow.current == first
    assert flow.revisiting == 0
    assert front.rating.values == {**GOOD, "confidence": 5}  # the saved answer, to change
    assert flow.position_text() == f"Case {first} · changing your answer"
    assert not flow.can_skip
    assert not flow.skip()
    front.rating.set_value("confidence", 2)
    assert flow.next()
    assert flow.current == second
    assert flow.revisiting is None
    answer = front.session.answer_of(first)
    assert answer.values["confidence"] == 2
    assert answer.revision == 2
    assert flow.back()
    assert flow.next()
    assert front.session.answer_of(first).revision == 2


def test_a_new_flow_resumes_where_the_reader_left(db):
    front = Front(db, "Changes", "Dr C")
    order = front.session.order()
    front.flow.start()
    assert front.answer()
    assert front.answer()
    again = Front(db, "Changes", "Dr C")
    again.flow.start()
    assert again.flow.current == order[2]
    assert again.flow.answered_order == order[:2]
    assert again.flow.position_text() == f"Case {order[2]} · 3 of 4"
    assert again.changes > 0  # subscribers hear the changes
