"""Writing a study's results: a Markdown report with a ROC plot, and CSV/JSON exports of the answers.

Figures use ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``, so no global
backend is chosen (the app runs Qt). Every file goes through :mod:`engine.atomic`, so it is
complete or absent.

Exports have one row per answer with the hidden truth joined; they are for the organiser's
analysis and are never shown to readers. Source file paths are added only when asked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from engine.atomic import atomic_write_text, check_writable
from engine.errors import ExportError
from engine.study.errors import StudyError
from engine.study.organiser import StudyDatabase
from engine.study.questions import Question
from engine.study.records import AnswerRecord, HistoryRecord
from engine.study.results import POOLED, ReaderResults, StudyResults, study_results
from engine.study.statistics import Proportion, Summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NAME = "report.md"
ROC_NAME = "roc.png"
CSV_NAME = "answers.csv"
JSON_NAME = "answers.json"
EXPORT_FORMAT = "brainsynth-reader-study-answers"
EXPORT_FORMAT_VERSION = 1
DPI = 110


@dataclass(frozen=True)
class ReportFiles:
    """Paths of what :func:`write_report` wrote."""

    markdown: Path
    roc_png: Path
    csv: Path
    json: Path


# ---------------------------------------------------------------------------------- exports


def _columns(questions: Sequence[Question], include_sources: bool) -> list[str]:
    cols = ["study", "reader", "case", "truth", "position", "skips"]
    cols += [q.key for q in questions]
    cols += ["seconds", "answered_at", "updated_at", "revision"]
    return [*cols, "source"] if include_sources else cols


def _row(record: AnswerRecord, questions: Sequence[Question], include_sources: bool) -> dict:
    row = {
        "study": record.study,
        "reader": record.reader,
        "case": record.case_number,
        "truth": record.truth,
        "position": record.position,
        "skips": record.skips,
    }
    row.update({q.key: record.values.get(q.key) for q in questions})
    row.update(
        seconds=None if record.seconds is None else round(record.seconds, 3),
        answered_at=record.answered_at,
        updated_at=record.updated_at,
        revision=record.revision,
    )
    if include_sources:
        row["source"] = record.source
    return row


def answers_csv(
    records: Sequence[AnswerRecord], questions: Sequence[Question], *, include_sources: bool = False
) -> str:
    """CSV text, one row per answer, columns study, reader, case, truth, position, skips, one per
    question, seconds, answered_at, updated_at, revision (and source when asked)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(questions, include_sources), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None else v) for k, v in _row(record, questions, include_sources).items()})
    return buffer.getvalue()


def answers_json(
    records: Sequence[AnswerRecord],
    history: Sequence[HistoryRecord],
    questions: Sequence[Question],
    *,
    study: str,
    include_sources: bool = False,
) -> str:
    """JSON text: ``{"format", "format_version", "study", "exported_at", "questions", "answers": [one
    object per answer, keys as the CSV columns], "history": [every save with its time]}``."""
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "study": study,
        "exported_at": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "questions": [q.to_dict() for q in questions],
        "answers": [_row(r, questions, include_sources) for r in records],
        "history": [
            {
                "reader": h.reader,
                "case": h.case_number,
                "truth": h.truth,
                "revision": h.revision,
                "action": h.action,
                "values": h.values,
                "seconds": None if h.seconds is None else round(h.seconds, 3),
                "recorded_at": h.recorded_at,
            }
            for h in history
        ],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def export_answers(
    db: StudyDatabase, study: str, path: str | os.PathLike, *, include_sources: bool = False, overwrite: bool = False
) -> Path:
    """Write a study's answers as CSV or JSON, chosen by the file's extension (.csv or .json).

    Raises:
        StudyError: unknown study, or an extension other than .csv/.json.
        ExportError: the file exists (without ``overwrite``) or cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise StudyError(f"{path.name}: export to a .csv or .json file")
    info = db.study(study)
    records = db.answer_records(study, include_sources=include_sources)
    if suffix == ".csv":
        text = answers_csv(records, info.questions, include_sources=include_sources)
    else:
        text = answers_json(
            records, db.history_records(study), info.questions, study=study, include_sources=include_sources
        )
    _write_text(path, text, overwrite=overwrite)
    return path


def _write_text(path: Path, text: str, *, overwrite: bool) -> None:
    if path.is_dir():
        raise ExportError(f"{path} is a folder; cannot write a file there")
    try:
        atomic_write_text(path, text, overwrite=overwrite)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ----------------------------------------------------------------------------------- figure


def roc_figure(results: StudyResults) -> Figure:
    """ROC curves of the confidence scale: one per reader and the pooled one, with the chance line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="#7f7f7f", label="chance")
    entries = [*results.readers, *([results.pooled] if results.pooled and len(results.readers) > 1 else [])]
    for entry in entries:
        roc = entry.detection.roc
        if math.isnan(roc.auc):
            continue
        pooled = entry.reader == POOLED
        ax.plot(
            roc.fpr,
            roc.tpr,
            marker="o",
            markersize=3 if not pooled else 4,
            linewidth=2.2 if pooled else 1.2,
            color="black" if pooled else None,
            label=f"{entry.reader} (AUC {roc.auc:.2f})",
        )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (real called synthetic)")
    ax.set_ylabel("true positive rate (synthetic called synthetic)")
    ax.set_title(f"{results.study}: real vs synthetic", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def roc_png(results: StudyResults) -> bytes:
    """The ROC figure as PNG bytes."""
    buffer = io.BytesIO()
    roc_figure(results).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --------------------------------------------------------------------------------- markdown


def format_number(value: float | None, digits: int = 2) -> str:
    """A statistic to ``digits`` decimals, or "n/a" when undefined (None or NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_proportion(p: Proportion) -> str:
    """``"62% (31/50; 47%–75%)"``: estimate, counts and 95% CI, or "n/a" with no answers."""
    if p.n == 0:
        return "n/a"
    return f"{p.estimate:.0%} ({p.successes}/{p.n}; {p.ci_low:.0%}–{p.ci_high:.0%})"


def format_p_value(p: float) -> str:
    """A p-value for tables: three decimals, "< 0.001" below that, "n/a" when undefined."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def format_mean_sd(s: Summary) -> str:
    """``"3.40 ± 0.89 (n=10)"``, or "n/a" with no values."""
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.2f} ± {format_number(s.sd)} (n={s.n})"


def _detection_table(entries: Sequence[ReaderResults]) -> list[str]:
    lines = [
        "| reader | answers | accuracy (95% CI) | p vs chance | sensitivity | specificity | unsure | ROC AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        d = e.detection
        lines.append(
            f"| {e.reader} | {e.n_answered} | {format_proportion(d.accuracy.proportion)} | "
            f"{format_p_value(d.accuracy.p_value)} | {format_proportion(d.sensitivity)} | "
            f"{format_proportion(d.specificity)} | {d.n_unsure} | {format_number(d.roc.auc)} |"
        )
    return lines


def markdown_report(results: StudyResults, *, roc_image: str | None = ROC_NAME) -> str:
    """The report as Markdown text (``roc_image``: file name of the ROC PNG to link, or None)."""
    entries = [*results.readers, *([results.pooled] if results.pooled else [])]
    lines = [
        f"# Reader study: {results.study}",
        "",
        (
            f"{results.n_cases} cases ({results.n_real} real, {results.n_synthetic} synthetic), "
            f"{len(results.unanswered)} reader{'s' if len(results.unanswered) != 1 else ''}. "
            f"Generated {datetime.now(timezone.utc).astimezone().isoformat(timespec='seconds')}."
        ),
        "",
    ]
    open_cases = {r: n for r, n in results.unanswered.items() if n}
    if open_cases:
        lines += [
            "**The study is not finished:** "
            + ", ".join(f"{r} has {n} case{'s' if n != 1 else ''} left" for r, n in open_cases.items())
            + ". These results cover the answers given so far.",
            "",
        ]
    if not entries:
        return "\n".join([*lines, "No answers yet.", ""])

    lines += ["## Real or synthetic?", "", *_detection_table(entries), ""]
    if roc_image:
        lines += [f"![ROC curves of the confidence scale]({roc_image})", ""]

    scale_questions = [q for q in results.questions if q.kind == "scale" and q.key != "confidence"]
    if scale_questions:
        lines += ["## Ratings by true class", "", "Mean ± SD (1 worst … 5 best).", ""]
        lines += ["| reader | question | real | synthetic |", "|---|---|---|---|"]
        for e in entries:
            for q in scale_questions:
                by_class = e.ratings[q.key]
                lines.append(
                    f"| {e.reader} | {q.text} | {format_mean_sd(by_class['real'])} | "
                    f"{format_mean_sd(by_class['synthetic'])} |"
                )
        lines.append("")
        lines += _rank_sum_table(entries, scale_questions)

    lines += ["## Agreement between readers", ""]
    a = results.agreement
    if a is None:
        lines += ["Needs at least two readers with answers to the same cases.", ""]
    elif a.method == "cohen":
        lines += [
            (
                f"Cohen's kappa of the real / unsure / synthetic call, {' vs '.join(a.readers)}, over the "
                f"{a.n_cases} cases both answered: **{format_number(a.kappa)}**; quadratically weighted kappa of the "
                f"five-point confidence: **{format_number(a.weighted_kappa)}**."
            ),
            "",
        ]
    else:
        lines += [
            (
                f"Fleiss' kappa of the real / unsure / synthetic call, {len(a.readers)} readers, over the "
                f"{a.n_cases} cases all answered: **{format_number(a.kappa)}**."
            ),
            "",
        ]

    lines += [
        "## Time per case",
        "",
        "| reader | median s (IQR) | mean s | total min |",
        "|---|---|---|---|",
    ]
    for e in entries:
        s = e.seconds
        if s.n == 0:
            lines.append(f"| {e.reader} | n/a | n/a | n/a |")
        else:
            lines.append(f"| {e.reader} | {s.median:.1f} ({s.q1:.1f}–{s.q3:.1f}) | {s.mean:.1f} | {s.total / 60:.1f} |")
    lines += ["", *_time_distribution_table(entries)]
    lines += [
        "",
        "## Methods",
        "",
        (
            "- Readers saw every case through the same display pipeline (same grid, intensity normalisation "
            "and window, anonymous case numbers) in an order shuffled per reader."
        ),
        (
            "- Positive = synthetic: sensitivity is the share of synthetic cases called synthetic, specificity "
            "the share of real cases called real."
        ),
        (
            "- Calls: confidence 1–2 = real, 4–5 = synthetic; 3 (unsure) is no call and is left out of accuracy, "
            "sensitivity and specificity (counted under *unsure*), but enters the ROC curve."
        ),
        (
            "- Accuracy is tested against chance (50%) with an exact two-sided binomial test; 95% confidence "
            "intervals are Clopper–Pearson (exact)."
        ),
        (
            "- ROC AUC uses the five-point confidence as score (ties count one half). An AUC near 0.5 means "
            "readers could not tell synthetic from real."
        ),
        (
            "- The pooled row treats all answers as independent although readers saw the same cases; read its "
            "p-value as descriptive."
        ),
        "- Time per case sums every visit to a case, including time before a skip.",
        (
            "- Ratings of real and synthetic cases are compared with the two-sided Wilcoxon rank-sum "
            "(Mann–Whitney U) test (exact without ties and at most 8 values in the smaller group, else the "
            "normal approximation with tie and continuity corrections); the p-values of one row's questions are "
            "Holm-corrected. *P(real higher)* is U / (n_real · n_synthetic): 0.5 means no difference."
        ),
        "",
    ]
    return "\n".join(lines)


#: Bins of the time-per-case distribution: (upper limit in s, column label).
TIME_BINS = ((10.0, "< 10 s"), (30.0, "10–30 s"), (60.0, "30–60 s"), (120.0, "1–2 min"), (300.0, "2–5 min"))


def time_histogram(times: Sequence[float]) -> list[int]:
    """Answers per bin of :data:`TIME_BINS`, plus one for 5 min and more."""
    counts = [0] * (len(TIME_BINS) + 1)
    for t in times:
        index = next((i for i, (limit, _) in enumerate(TIME_BINS) if t < limit), len(TIME_BINS))
        counts[index] += 1
    return counts


def _time_distribution_table(entries: Sequence[ReaderResults]) -> list[str]:
    labels = [label for _, label in TIME_BINS] + ["≥ 5 min"]
    lines = [
        "Distribution of the time per case (answers per bin):",
        "",
        "| reader | " + " | ".join(labels) + " | range s |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for e in entries:
        span = f"{min(e.times):.1f}–{max(e.times):.1f}" if e.times else "n/a"
        lines.append(f"| {e.reader} | " + " | ".join(str(c) for c in time_histogram(e.times)) + f" | {span} |")
    return lines


def _rank_sum_table(entries: Sequence[ReaderResults], questions: Sequence[Question]) -> list[str]:
    lines = [
        "### Real against synthetic (Wilcoxon rank-sum, Holm-corrected)",
        "",
        "| reader | question | n real / synthetic | U (real) | P(real higher) | p | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for q in questions:
            t = e.rating_tests.get(q.key)
            if t is None:
                continue
            lines.append(
                f"| {e.reader} | {q.text} | {t.n_real} / {t.n_synthetic} | {format_number(t.u_real, 1)} | "
                f"{format_number(t.effect)} | {format_p_value(t.p_value)} | {format_p_value(t.p_holm)} |"
            )
    return [*lines, ""]


def write_report(db: StudyDatabase, study: str, out_dir: str | os.PathLike, *, overwrite: bool = False) -> ReportFiles:
    """Write ``report.md``, ``roc.png``, ``answers.csv`` and ``answers.json`` into ``out_dir``.

    All four targets are checked before anything is written, so a clash writes nothing.

    Raises:
        StudyError: unknown study.
        ExportError: ``out_dir`` is a file, a target exists (without ``overwrite``), or writing fails.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; choose a folder for the report")
    files = ReportFiles(out_dir / REPORT_NAME, out_dir / ROC_NAME, out_dir / CSV_NAME, out_dir / JSON_NAME)
    results = study_results(db, study)
    for target in (files.markdown, files.roc_png, files.csv, files.json):
        if target.is_dir():
            raise ExportError(f"{target} is a folder; cannot write a file there")
        check_writable(target, overwrite=overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc

    from engine.atomic import atomic_path

    info = db.study(study)
    records = db.answer_records(study)
    with atomic_path(files.roc_png, overwrite=overwrite) as tmp:
        tmp.write_bytes(roc_png(results))
    _write_text(files.csv, answers_csv(records, info.questions), overwrite=overwrite)
    _write_text(
        files.json, answers_json(records, db.history_records(study), info.questions, study=study), overwrite=overwrite
    )
    _write_text(files.markdown, markdown_report(results), overwrite=overwrite)
    return files
