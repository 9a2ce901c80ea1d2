"""A study's results: per reader and pooled statistics assembled from its answers.

:func:`study_results` reads a study's answers (with the hidden truth) from the database and
:func:`compute_results` turns them into a :class:`StudyResults`, which the CLI report and the
app's results view both render. The statistics themselves are in
:mod:`engine.study.statistics`.

Agreement between readers is computed on the cases every reader has answered, for the
real/unsure/synthetic call (1–2, 3, 4–5 on the confidence scale): Cohen's kappa when the
study has two readers (plus a quadratically weighted kappa on the full five-point scale),
Fleiss' kappa when it has more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from engine.study.organiser import StudyDatabase
from engine.study.questions import CONFIDENCE_KEY, Question, confidence_call
from engine.study.records import AnswerRecord
from engine.study.statistics import (
    Detection,
    RankSumTest,
    Summary,
    cohen_kappa,
    detection,
    fleiss_kappa,
    fleiss_table,
    holm,
    rank_sum_test,
    ratings_by_class,
    summarise,
)

POOLED = "pooled"
CALL_CATEGORIES = ("real", "unsure", "synthetic")


@dataclass(frozen=True)
class ReaderResults:
    """Results of one reader, or of all answers pooled (``reader == "pooled"``).

    Attributes:
        reader: reader name or ``"pooled"``.
        n_answered: answers analysed.
        n_cases: cases in the study (per reader; times the readers when pooled).
        detection: accuracy, sensitivity, specificity, ROC.
        ratings: question key → {"real": Summary, "synthetic": Summary} for every other scale question.
        seconds: time per case (s).
        rating_tests: question key → Wilcoxon rank-sum test of real against synthetic ratings,
            Holm-corrected across this entry's questions.
        times: every time per case (s), for the distribution.
    """

    reader: str
    n_answered: int
    n_cases: int
    detection: Detection
    ratings: dict[str, dict[str, Summary]]
    seconds: Summary
    rating_tests: dict[str, RankSumTest] = field(default_factory=dict)
    times: tuple[float, ...] = ()


@dataclass(frozen=True)
class Agreement:
    """Inter-reader agreement on the real/unsure/synthetic call.

    Attributes:
        method: "cohen" (two readers) or "fleiss" (more).
        readers: the readers compared.
        n_cases: cases answered by all of them (the ones compared).
        kappa: kappa of the three-category call.
        weighted_kappa: quadratically weighted Cohen's kappa of the 1..5 confidence (two readers only).
    """

    method: str
    readers: tuple[str, ...]
    n_cases: int
    kappa: float
    weighted_kappa: float | None = None


@dataclass(frozen=True)
class StudyResults:
    """Everything a report or results view shows.

    Attributes:
        study: study name.
        n_real, n_synthetic: pool sizes.
        questions: the study's questions (labels for the rating tables).
        readers: per-reader results, in the order readers were added (only readers with answers).
        pooled: all answers pooled, or None with no answers.
        agreement: None with fewer than two readers or no case answered by all.
        unanswered: reader → cases not answered yet (a report of a study still running says so).
    """

    study: str
    n_real: int
    n_synthetic: int
    questions: tuple[Question, ...]
    readers: list[ReaderResults]
    pooled: ReaderResults | None
    agreement: Agreement | None
    unanswered: dict[str, int] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        return self.n_real + self.n_synthetic


def _reader_results(reader: str, records: Sequence[AnswerRecord], questions, n_cases: int) -> ReaderResults:
    truth = [r.truth == "synthetic" for r in records]
    scales = [q for q in questions if q.kind == "scale" and q.key != CONFIDENCE_KEY]
    tests = {
        q.key: rank_sum_test(
            [r.values.get(q.key) for r in records if r.truth == "real"],
            [r.values.get(q.key) for r in records if r.truth == "synthetic"],
        )
        for q in scales
    }
    adjusted = holm([t.p_value for t in tests.values()])
    return ReaderResults(
        reader=reader,
        n_answered=len(records),
        n_cases=n_cases,
        detection=detection(truth, [int(r.values[CONFIDENCE_KEY]) for r in records]),
        ratings={q.key: ratings_by_class(truth, [r.values.get(q.key) for r in records]) for q in scales},
        seconds=summarise([r.seconds for r in records]),
        rating_tests={key: replace(t, p_holm=p) for (key, t), p in zip(tests.items(), adjusted, strict=True)},
        times=tuple(float(r.seconds) for r in records if r.seconds is not None),
    )


def _call(record: AnswerRecord) -> str:
    return confidence_call(int(record.values[CONFIDENCE_KEY])) or "unsure"


def _agreement(readers: Sequence[str], records: Sequence[AnswerRecord]) -> Agreement | None:
    if len(readers) < 2:
        return None
    by_reader: dict[str, dict[int, AnswerRecord]] = {r: {} for r in readers}
    for record in records:
        by_reader[record.reader][record.case_number] = record
    common = sorted(set.intersection(*(set(v) for v in by_reader.values())))
    if not common:
        return None
    if len(readers) == 2:
        a, b = (by_reader[r] for r in readers)
        return Agreement(
            method="cohen",
            readers=tuple(readers),
            n_cases=len(common),
            kappa=cohen_kappa([_call(a[c]) for c in common], [_call(b[c]) for c in common], labels=CALL_CATEGORIES),
            weighted_kappa=cohen_kappa(
                [int(a[c].values[CONFIDENCE_KEY]) for c in common],
                [int(b[c].values[CONFIDENCE_KEY]) for c in common],
                labels=[1, 2, 3, 4, 5],
                weights="quadratic",
            ),
        )
    table = fleiss_table([[_call(by_reader[r][c]) for r in readers] for c in common], CALL_CATEGORIES)
    return Agreement(method="fleiss", readers=tuple(readers), n_cases=len(common), kappa=fleiss_kappa(table))


def compute_results(
    *,
    study: str,
    questions: Sequence[Question],
    readers: Sequence[str],
    records: Sequence[AnswerRecord],
    n_real: int,
    n_synthetic: int,
) -> StudyResults:
    """Assemble per-reader and pooled results and agreement from answer records (pure).

    Args:
        study: study name.
        questions: the study's questions.
        readers: every reader of the study, in order.
        records: the answers with truth (see :meth:`StudyDatabase.answer_records`).
        n_real, n_synthetic: pool sizes.
    """
    questions = tuple(questions)
    n_cases = n_real + n_synthetic
    per_reader = []
    unanswered = {}
    for reader in readers:
        mine = [r for r in records if r.reader == reader]
        unanswered[reader] = n_cases - len(mine)
        if mine:
            per_reader.append(_reader_results(reader, mine, questions, n_cases))
    pooled = _reader_results(POOLED, list(records), questions, n_cases * len(readers)) if records else None
    return StudyResults(
        study=study,
        n_real=n_real,
        n_synthetic=n_synthetic,
        questions=questions,
        readers=per_reader,
        pooled=pooled,
        agreement=_agreement([r for r in readers if any(x.reader == r for x in records)], records),
        unanswered=unanswered,
    )


def study_results(db: StudyDatabase, study: str) -> StudyResults:
    """The results of a study as they stand (a running study gives partial results)."""
    info = db.study(study)
    summary = next(s for s in db.list_studies() if s.name == study)
    return compute_results(
        study=study,
        questions=info.questions,
        readers=info.readers,
        records=db.answer_records(study),
        n_real=summary.n_real,
        n_synthetic=summary.n_synthetic,
    )
