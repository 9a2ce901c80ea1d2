"""PNG figures of an evaluation, drawn with matplotlib's object API.

``matplotlib.figure.Figure`` with the Agg canvas is used instead of ``pyplot`` so that no
global backend is chosen (the app runs Qt) and figures are freed as soon as they are rendered.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from engine.metrics.results import EvaluationResult

REAL_COLOUR = "#1f77b4"
SYNTH_COLOUR = "#d62728"
TRAIN_COLOUR = "#7f7f7f"
DPI = 110


def _horizontal_boxplot_kwargs() -> dict:
    # matplotlib 3.10 replaced vert=False by orientation="horizontal" (and deprecated vert).
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


_HORIZONTAL = _horizontal_boxplot_kwargs()


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def render_figures(result: EvaluationResult) -> dict[str, bytes]:
    """File name → PNG bytes of every figure the result supports."""
    out = {
        "intensity_histograms.png": _png(intensity_figure(result)),
        "brain_volume.png": _png(brain_volume_figure(result)),
        "msssim.png": _png(msssim_figure(result)),
    }
    if result.memorisation.available:
        out["nearest_neighbours.png"] = _png(nearest_figure(result))
        if result.memorisation.closest_pairs:
            out["closest_pairs.png"] = _png(closest_pairs_figure(result))
    return out


def intensity_figure(result: EvaluationResult) -> Figure:
    """Pooled brain-intensity densities, real vs synthetic: whole brain and each tissue class."""
    it = result.intensity
    edges = np.asarray(it.bin_edges)
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, len(it.comparisons))
    for ax, comp in zip(axes, it.comparisons, strict=True):
        sel = (centres >= comp.range[0]) & (centres <= comp.range[1])
        for density, colour, label in (
            (comp.real_density, REAL_COLOUR, f"real (n={result.n_real})"),
            (comp.synthetic_density, SYNTH_COLOUR, f"synthetic (n={result.n_synthetic})"),
        ):
            d = np.asarray(density)[sel] / width
            ax.step(centres[sel], d, where="mid", color=colour, label=label)
            ax.fill_between(centres[sel], d, step="mid", color=colour, alpha=0.15)
        if comp.name == "whole brain":
            for t in it.thresholds:
                ax.axvline(t, color="k", lw=0.8, ls="--")
        ax.set_title(comp.name, fontsize=10)
        ax.set_xlabel("intensity (standard units)")
        w = "n/a" if comp.wasserstein is None else f"{comp.wasserstein:.1f}"
        js = "n/a" if comp.js_distance is None else f"{comp.js_distance:.3f}"
        ax.text(0.02, 0.97, f"W1 {w}\nJS {js}", transform=ax.transAxes, va="top", fontsize=8)
    axes[0].set_ylabel("density (1 / unit)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle("Brain intensity histograms (dashed: tissue thresholds from the real set)", fontsize=11)
    return fig


def brain_volume_figure(result: EvaluationResult) -> Figure:
    """Histograms of brain-mask volumes (mL) of both sets."""
    bv = result.brain_volume
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    values = np.concatenate([bv.real_ml, bv.synthetic_ml])
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(lo - 1, hi + 1, 21) if hi > lo else 10
    ax.hist(bv.real_ml, bins=bins, color=REAL_COLOUR, alpha=0.5, label=f"real (n={len(bv.real_ml)})")
    ax.hist(bv.synthetic_ml, bins=bins, color=SYNTH_COLOUR, alpha=0.5, label=f"synthetic (n={len(bv.synthetic_ml)})")
    ax.set_xlabel("brain-mask volume (mL)")
    ax.set_ylabel("volumes")
    ax.set_title(f"Brain-mask volume (Wasserstein-1 {bv.wasserstein_ml:.1f} mL)", fontsize=11)
    ax.legend(fontsize=8)
    return fig


def msssim_figure(result: EvaluationResult) -> Figure:
    """Box plots of the sampled MS-SSIM pairs: within real, within synthetic, between."""
    ms = result.msssim
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    groups = [
        (ms.within_real.values, "within real"),
        (ms.within_synthetic.values, "within synthetic"),
        (ms.between.values, "real vs synthetic"),
    ]
    ax.boxplot([g[0] for g in groups], showfliers=False)
    ax.set_xticks([1, 2, 3], [f"{g[1]}\n({len(g[0])} pairs)" for g in groups])
    for i, (vals, _) in enumerate(groups, start=1):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(vals))
        ax.scatter(np.full(len(vals), i) + jitter, vals, s=8, alpha=0.5, color=[REAL_COLOUR, SYNTH_COLOUR, "k"][i - 1])
    ax.set_ylabel("MS-SSIM")
    ax.set_title(
        f"MS-SSIM ({ms.settings.n_scales} scales, window {ms.settings.kernel_size}, seed {ms.seed})", fontsize=11
    )
    return fig


def nearest_figure(result: EvaluationResult) -> Figure:
    """Nearest-training-volume correlations per group (one row each), with the near-copy threshold."""
    mem = result.memorisation
    groups = [
        ([n.r for n in mem.train_reference], TRAIN_COLOUR, "training → other\ntraining (reference)"),
        ([n.r for n in mem.real_reference], REAL_COLOUR, "real → training\n(reference)"),
        ([n.r for n in mem.synthetic], SYNTH_COLOUR, "synthetic → training"),
    ]
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    for row, (vals, colour, _) in enumerate(groups):
        if not vals:
            continue
        vals = np.asarray(vals)
        ax.boxplot(vals, positions=[row], widths=0.5, showfliers=False, **_HORIZONTAL)
        jitter = np.random.default_rng(row).uniform(-0.18, 0.18, len(vals))
        ax.scatter(vals, row + jitter, s=12, alpha=0.6, color=colour, zorder=3)
    for n in mem.flagged[:5]:  # name the worst offenders on the plot itself
        ax.annotate(n.label, (n.r, 2), xytext=(0, 10), textcoords="offset points", fontsize=7, ha="center")
    ax.axvline(mem.threshold, color="k", ls="--", lw=1)
    ax.text(mem.threshold, 2.45, f" near copy: r > {mem.threshold:g}", fontsize=8, va="bottom")
    ax.set_yticks(range(3), [f"{g[2]}\n(n={len(g[0])})" for g in groups], fontsize=8)
    ax.set_ylim(-0.6, 2.8)
    ax.set_xlabel("Pearson r with the nearest training volume (within brain masks)")
    title = f"Memorisation check: {len(mem.flagged)} of {len(mem.synthetic)} synthetic volumes flagged"
    ax.set_title(title, fontsize=11)
    return fig


def closest_pairs_figure(result: EvaluationResult) -> Figure:
    """One row per closest pair: synthetic sagittal/coronal/axial, then the training volume's."""
    pairs = result.memorisation.closest_pairs
    fig = _figure(12, 2.2 * len(pairs) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(pairs), 6))
    views = ("sagittal", "coronal", "axial")
    sx, sy, sz = result.spacing_mm
    # Height / width of one pixel in mm for each view (rows = axis 2 after the transpose).
    aspects = (sz / sy, sz / sx, sy / sx)
    for row, pair in zip(axes, pairs, strict=True):
        n = pair.neighbour
        for col, (img, who) in enumerate(
            [(s, "synthetic") for s in pair.synthetic_slices] + [(s, "training") for s in pair.train_slices]
        ):
            ax = row[col]
            # RAS+ arrays: transpose and flip so anterior/superior point up, as radiologists expect.
            ax.imshow(
                np.asarray(img).T,
                origin="lower",
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                aspect=aspects[col % 3],
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{who} {views[col % 3]}", fontsize=8)
        row[0].set_ylabel(f"{n.label}\nr = {n.r:.4f}", fontsize=8)
        row[3].set_ylabel(n.train_label, fontsize=8)
    fig.suptitle(
        "Synthetic volumes closest to a training volume (left) and that training volume (right); "
        "neurological view (patient's left on the left)",
        fontsize=10,
    )
    return fig
