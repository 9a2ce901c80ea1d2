"""The utility experiment's outputs: ``utility.json``, ``report.md`` and PNG plots.

``utility.json`` (format ``brainsynth-utility`` 1) holds every figure with its parameters:

* ``arms``: at the largest real training size, ``real``, ``real+synthetic`` (the first
  ``--synthetic-ratio``) and ``synthetic``, each with ``{metric: {mean, ci_low, ci_high}}`` for
  ``auc`` and ``balanced_accuracy`` (classification) or ``mae`` (regression), its per-repeat
  ``runs``, and for the augmented arms ``difference_vs_real: {metric: {mean, ci_low, ci_high,
  p_value}}``;
* ``arms_by_ratio``: ``real+synthetic`` at every ratio, keyed by the ratio;
* ``learning_curve``: one entry per real training size and arm (and ratio), with
  ``equivalent_real_size`` for augmented points: how many real subjects alone give the same
  primary figure (interpolated; None outside the measured range);
* ``parameters``, ``leakage_check`` and the ``test_subjects`` of each repeat.

Plots are drawn with matplotlib's object API (no global backend; the app runs Qt).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.atomic import atomic_group

ARM_COLOURS = {"real": "#1f77b4", "real+synthetic": "#2ca02c", "synthetic": "#d62728"}
METRIC_NAMES = {"auc": "ROC AUC", "balanced_accuracy": "balanced accuracy", "mae": "MAE"}
ARMS_PLOT = "utility_arms.png"
CURVE_PLOT = "utility_learning_curve.png"


def write_outputs(out_dir: Path, summary: dict) -> list[Path]:
    """Write ``utility.json``, ``report.md`` and the plots as one group (all or none).

    Returns:
        The files written.
    """
    from engine.utility.experiment import REPORT_FILE, RESULT_FILE

    figures = render_figures(summary)
    targets = [out_dir / name for name in figures] + [out_dir / REPORT_FILE, out_dir / RESULT_FILE]
    with atomic_group() as group:
        for name, data in figures.items():
            group.path(out_dir / name, overwrite=True).write_bytes(data)
        group.path(out_dir / REPORT_FILE, overwrite=True).write_text(report_markdown(summary), encoding="utf-8")
        # The file readers look for goes last.
        group.path(out_dir / RESULT_FILE, overwrite=True).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return targets


def read_summary(out_dir: Path) -> dict:
    """``OUT/utility.json`` of an earlier experiment.

    Raises:
        UtilityError: missing or not a utility result.
    """
    from engine.utility.errors import UtilityError
    from engine.utility.experiment import RESULT_FILE, RESULT_FORMAT

    path = Path(out_dir) / RESULT_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UtilityError(
            f"{out_dir} holds no {RESULT_FILE}; run 'brainsynth-cli utility --out {out_dir}' first"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UtilityError(f"cannot read {path}: {exc}") from None
    if not isinstance(summary, dict) or summary.get("format") != RESULT_FORMAT:
        raise UtilityError(f"{path} is not a BrainSynth utility result")
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    return f"{_fmt(entry['mean'])} [{_fmt(entry['ci_low'])}, {_fmt(entry['ci_high'])}]"


def arm_rows(summary: dict) -> list[dict]:
    """One row per arm at the largest size (the table of the report and the app).

    Each row: ``arm``, ``n_real``, ``n_synthetic``, ``{metric}`` and ``{metric}_difference``
    (formatted text), and ``p_value`` (text) of the primary metric's difference.
    """
    names = summary["metrics"]
    primary = summary["primary_metric"]
    rows = []
    order = [("real", summary["arms"].get("real"))]
    order += [(f"real+synthetic ×{ratio}", arm) for ratio, arm in summary.get("arms_by_ratio", {}).items()]
    if "synthetic" in summary["arms"]:
        order.append(("synthetic", summary["arms"]["synthetic"]))
    for name, arm in order:
        if arm is None:
            continue
        runs = arm.get("runs", [])
        row = {
            "arm": name,
            "n_real": str(runs[0]["n_real"]) if runs else "",
            "n_synthetic": str(runs[0]["n_synthetic"]) if runs else "",
        }
        diff = arm.get("difference_vs_real", {})
        for metric in names:
            row[metric] = _cell(arm.get(metric))
            row[f"{metric}_difference"] = _cell(diff.get(metric)) if diff else "—"
        p = diff.get(primary, {}).get("p_value") if diff else None
        row["p_value"] = "—" if not diff else _fmt(p)
        rows.append(row)
    return rows


def report_markdown(summary: dict) -> str:
    """``report.md``: what was run, the table of arms, the learning curve and what it means."""
    p = summary["parameters"]
    names = summary["metrics"]
    primary = summary["primary_metric"]
    task = "classification" if summary["task"] == "classify" else "regression"
    what = (
        f"{summary['label']} = {summary['positive']} vs the rest" if summary["task"] == "classify" else summary["label"]
    )
    lines = [
        "# Does augmentation with synthetic scans help?",
        "",
        (
            f"Task: {task} of {what} on held-out real subjects; {p['repeats']} repeat(s), "
            f"{p['test_subjects_per_repeat'][0]} test subjects each (split by subject, stratified, "
            f"test fraction {p['test_fraction']:g})."
        ),
        (
            f"Real: {p['real_scans']} scans of {p['real_subjects']} subjects ({_counts(p['real_labels'])}); "
            f"synthetic: {p['synthetic_volumes']} volumes ({_counts(p['synthetic_labels']) or 'none'})."
        ),
        (
            f"Every run: MONAI Classifier (width {p['width']}) on the {'x'.join(map(str, p['grid_shape']))} grid, "
            f"{p['steps_per_run']} optimizer steps of {p['batch_size']} volumes (Adam, lr {p['lr']:g}), the same "
            f"augmentation, early stopping on a validation split ({p['val_fraction']:g}) of the arm's training "
            f"subjects; seed {p['seed']}."
        ),
        f"Intervals: {p['interval']}, {p['bootstrap']} resamples; p-values: {p['p_value']}.",
        "",
        f"## Arms at {max(p['real_train_sizes'])} real training subjects",
        "",
    ]
    header = ["arm", "real", "synthetic"] + [METRIC_NAMES[n] for n in names]
    header += [f"Δ {METRIC_NAMES[n]} vs real" for n in names] + [f"p (Δ {METRIC_NAMES[primary]})"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in arm_rows(summary):
        cells = [row["arm"], row["n_real"], row["n_synthetic"]] + [row[n] for n in names]
        cells += [row[f"{n}_difference"] for n in names] + [row["p_value"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![arms]({ARMS_PLOT})", "", "## Learning curve", ""]
    lines += [
        f"| real training subjects | arm | {METRIC_NAMES[primary]} | Δ vs real | p | worth (real subjects) |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary["learning_curve"]:
        arm = c["arm"] + (f" ×{c['ratio']:g}" if c.get("ratio") else "")
        diff = c.get("difference_vs_real", {}).get(primary)
        worth = c.get("equivalent_real_size")
        lines.append(
            f"| {c['real_train_size']} | {arm} | {_cell(c[primary])} | {_cell(diff) if diff else '—'} | "
            f"{_fmt(diff['p_value']) if diff else '—'} | {_fmt(worth, 1) if worth is not None else '—'} |"
        )
    lines += ["", f"![learning curve]({CURVE_PLOT})", "", "## Reading", ""]
    lines += [_verdict(summary)]
    lines += _fidelity_lines(summary)
    leak = summary["leakage_check"]
    lines += ["", "## Leakage check", ""]
    if leak["waived"]:
        lines.append("Skipped on request (--no-leakage-check): the generator's training subjects were not compared.")
    elif leak["checked"]:
        lines += [
            f"- {name}: training split {path} shares no subject with the test sets"
            for name, path in leak["checked"].items()
        ]
    else:
        lines.append("No synthetic volumes.")
    lines += [f"- note: {w}" for w in leak["warnings"]]
    return "\n".join(lines) + "\n"


#: Below this ROC AUC, the real-only model hardly tells the synthetic classes apart.
WEAK_FIDELITY_AUC = 0.6


def _fidelity_lines(summary: dict) -> list[str]:
    """The label check: how a real-trained model scores the synthetic volumes (see the engine)."""
    fidelity = summary.get("label_fidelity")
    if not fidelity:
        return []
    primary = summary["primary_metric"]
    figure = fidelity.get(primary, {})
    if figure.get("mean") is None:
        return []
    per = ", ".join(_fmt(v) for v in figure["per_repeat"])
    lines = [
        "",
        "## Do the synthetic volumes carry the label?",
        "",
        (
            f"The real-only model ({fidelity['real_train_size']} real training subjects) scoring the "
            f"{summary['parameters']['synthetic_volumes']} synthetic volumes against the conditions they were "
            f"generated with: {METRIC_NAMES[primary]} {_fmt(figure['mean'])} (mean over repeats; per repeat {per})."
        ),
    ]
    if primary == "auc" and figure["mean"] < WEAK_FIDELITY_AUC:
        lines.append(
            "The synthetic volumes hardly show the label as the real scans show it, so a model trained on them "
            "alone has little to transfer to real scans: its figure there is then near chance, and on few test "
            "subjects it can land anywhere from 0 to 1."
        )
    return lines


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _verdict(summary: dict) -> str:
    primary = summary["primary_metric"]
    name = METRIC_NAMES[primary]
    better = summary["higher_is_better"][primary]
    out = []
    for label, arm in [(f"real+synthetic ×{r}", a) for r, a in summary.get("arms_by_ratio", {}).items()] + [
        ("synthetic only", summary["arms"].get("synthetic"))
    ]:
        if not arm:
            continue
        d = arm["difference_vs_real"][primary]
        if d["mean"] is None or d["ci_low"] is None:
            out.append(f"- {label}: no figure.")
            continue
        if d["ci_low"] > 0 or d["ci_high"] < 0:
            helped = (d["ci_low"] > 0) == better
            word = "better" if helped else "worse"
            out.append(
                f"- {label}: {word} than real only ({name} {d['mean']:+.3f}, 95 % interval {d['ci_low']:+.3f} to "
                f"{d['ci_high']:+.3f}, p {_fmt(d['p_value'])})."
            )
        else:
            out.append(
                f"- {label}: no clear difference from real only ({name} {d['mean']:+.3f}, 95 % interval "
                f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}, p {_fmt(d['p_value'])})."
            )
    return "\n".join(out) or "Only the real-only arm was run (no synthetic volumes)."


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_figures(summary: dict) -> dict[str, bytes]:
    """File name → PNG bytes: the arms with intervals, and the learning curve."""
    return {ARMS_PLOT: _png(arms_figure(summary)), CURVE_PLOT: _png(curve_figure(summary))}


def arms_figure(summary: dict):
    """Each arm's primary metric (and balanced accuracy) with its 95 % interval."""
    names = summary["metrics"]
    fig = _figure(3.2 * len(names) + 1.0, 3.2)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    arms = [("real", summary["arms"].get("real"))]
    arms += [(f"real+syn ×{r}", a) for r, a in summary.get("arms_by_ratio", {}).items()]
    if "synthetic" in summary["arms"]:
        arms.append(("synthetic", summary["arms"]["synthetic"]))
    for ax, metric in zip(axes, names, strict=False):
        for i, (label, arm) in enumerate(arms):
            entry = arm.get(metric) if arm else None
            if not entry or entry["mean"] is None:
                continue
            colour = ARM_COLOURS["real+synthetic" if label.startswith("real+") else label]
            lo = entry["mean"] - (entry["ci_low"] if entry["ci_low"] is not None else entry["mean"])
            hi = (entry["ci_high"] if entry["ci_high"] is not None else entry["mean"]) - entry["mean"]
            ax.errorbar([i], [entry["mean"]], yerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", color=colour, capsize=4)
        ax.set_xticks(range(len(arms)), [a for a, _ in arms], rotation=30, ha="right")
        ax.set_ylabel(METRIC_NAMES[metric])
        if metric in ("auc", "balanced_accuracy"):
            ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
        ax.set_title(f"{METRIC_NAMES[metric]} on held-out real subjects", fontsize=9)
    return fig


def curve_figure(summary: dict):
    """The primary metric against the number of real training subjects, per arm."""
    primary = summary["primary_metric"]
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    series: dict[str, list[dict]] = {}
    for c in summary["learning_curve"]:
        key = c["arm"] + (f" ×{c['ratio']:g}" if c.get("ratio") else "")
        series.setdefault(key, []).append(c)
    for i, (key, points) in enumerate(series.items()):
        points = [p for p in points if p[primary]["mean"] is not None]
        if not points:
            continue
        x = [p["real_train_size"] for p in points]
        y = [p[primary]["mean"] for p in points]
        lo = [p[primary]["ci_low"] if p[primary]["ci_low"] is not None else m for p, m in zip(points, y, strict=True)]
        hi = [p[primary]["ci_high"] if p[primary]["ci_high"] is not None else m for p, m in zip(points, y, strict=True)]
        colour = ARM_COLOURS["real+synthetic" if key.startswith("real+") else key]
        alpha = 1.0 if key in ("real", "synthetic") else max(0.35, 1.0 - 0.2 * i)
        ax.plot(x, y, "o-", color=colour, alpha=alpha, label=key)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.12)
    synthetic = summary["arms"].get("synthetic")
    if synthetic and synthetic[primary]["mean"] is not None:
        ax.axhline(synthetic[primary]["mean"], color=ARM_COLOURS["synthetic"], ls=":", label="synthetic only")
    ax.set_xlabel("real training subjects")
    ax.set_ylabel(METRIC_NAMES[primary])
    ax.legend(fontsize=8)
    ax.set_title("Learning curve (95 % intervals)", fontsize=9)
    return fig
