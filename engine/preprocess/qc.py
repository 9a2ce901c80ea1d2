"""Quality control: per-scan figures, the edge overlay PNG and the batch report.

Figures per scan: brain volume (mL, in the scan's own space, so head size stays visible),
registration similarity (correlation with the template within both brain masks) and mask
compactness (sphericity: 1 for a ball; an extraction that leaks into the neck or loses a lobe
moves it). A scan is flagged for a person to look at when a figure lies outside its plausible
range or far from the batch's others (more than 3.5 robust standard deviations, from the median
absolute deviation, with at least 5 scans).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Ranges outside which a figure is flagged whatever the batch looks like.
PLAUSIBLE = {
    "brain_volume_ml": (900.0, 2100.0),
    "similarity": (0.75, 1.0),
    "compactness": (0.3, 1.0),
}
LABELS = {"brain_volume_ml": "brain volume (mL)", "similarity": "similarity", "compactness": "compactness"}
ROBUST_Z_LIMIT = 3.5
MIN_SCANS_FOR_OUTLIERS = 5


def compactness(mask: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Sphericity of a mask: pi^(1/3) (6 V)^(2/3) / A, from a marching-cubes surface (mm)."""
    from skimage import measure

    if not mask.any():
        return 0.0
    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.5, spacing=tuple(float(s) for s in spacing_mm))
    area = float(measure.mesh_surface_area(verts, faces))
    volume = float(mask.sum()) * float(np.prod(spacing_mm))
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area) if area > 0 else 0.0


def flag_outliers(rows: Sequence[dict]) -> list[list[str]]:
    """For each row (a dict with the figures above), the reasons to look at it (may be empty)."""
    flags: list[list[str]] = [[] for _ in rows]
    for key, (lo, hi) in PLAUSIBLE.items():
        values = np.array([float(r.get(key, np.nan)) for r in rows])
        for i, v in enumerate(values):
            if np.isfinite(v) and not lo <= v <= hi:
                flags[i].append(f"{LABELS[key]} {v:.4g} outside {lo:g}-{hi:g}")
        finite = values[np.isfinite(values)]
        if finite.size >= MIN_SCANS_FOR_OUTLIERS:
            median = float(np.median(finite))
            spread = 1.4826 * float(np.median(np.abs(finite - median)))
            if spread > 0:
                for i, v in enumerate(values):
                    z = (v - median) / spread
                    if np.isfinite(z) and abs(z) > ROBUST_Z_LIMIT:
                        flags[i].append(f"{LABELS[key]} {v:.4g} far from the batch (median {median:.4g})")
    return flags


def edge_overlay_png(path: os.PathLike, scan: np.ndarray, template: np.ndarray, *, title: str) -> None:
    """Three planes of the template in grey with the registered scan's edges in colour.

    Args:
        path: PNG to write (the caller makes it atomic).
        scan: the registered scan in the MNI box (RAS+).
        template: the template in the MNI box (RAS+).
        title: caption (the scan's name).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from skimage import feature

    mask = scan > 0
    centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int) if mask.any() else np.array(scan.shape) // 2
    planes = [
        ("sagittal", scan[centre[0]], template[centre[0]]),
        ("coronal", scan[:, centre[1]], template[:, centre[1]]),
        ("axial", scan[:, :, centre[2]], template[:, :, centre[2]]),
    ]
    fig = Figure(figsize=(9, 3.4), dpi=100)
    fig.suptitle(f"{title}: edges over the MNI152 template", fontsize=9)
    for k, (name, s, t) in enumerate(planes):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(t.T, origin="lower", cmap="gray", interpolation="nearest")
        top = float(np.percentile(s[s > 0], 99)) if (s > 0).any() else 1.0
        edges = feature.canny(np.clip(s / top, 0, 1), sigma=1.5)
        overlay = np.zeros((*edges.T.shape, 4))
        overlay[edges.T] = (1.0, 0.25, 0.1, 1.0)
        ax.imshow(overlay, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, format="png")


def report_markdown(rows: Sequence[dict], *, failed: Sequence[tuple[str, str]], title: str) -> str:
    """The batch QC report: one table row per scan, flags, failures, then the overlay images.

    Args:
        rows: per-scan dicts with name, brain_volume_ml, similarity, compactness, notes, qc_png
            (relative path), total_s.
        failed: (input, reason) for each refused scan.
        title: heading.
    """
    flags = flag_outliers(rows)
    lines = [f"# {title}", ""]
    n_flagged = sum(1 for f in flags if f)
    lines.append(
        f"{len(rows)} scan{'s' if len(rows) != 1 else ''} preprocessed, {n_flagged} flagged for a look, "
        f"{len(failed)} refused."
    )
    lines += [
        "",
        "| scan | brain volume (mL) | similarity | compactness | seconds | notes | flags |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row, flag in zip(rows, flags, strict=True):
        lines.append(
            f"| {row['name']} | {row['brain_volume_ml']:.0f} | {row['similarity']:.3f} | "
            f"{row['compactness']:.3f} | {row.get('total_s', float('nan')):.1f} | "
            f"{'; '.join(row.get('notes', [])) or '-'} | {'; '.join(flag) or '-'} |"
        )
    if failed:
        lines += ["", "## Refused", ""]
        lines += [f"- {name}: {reason}" for name, reason in failed]
    lines += ["", "## Overlays", ""]
    for row, flag in zip(rows, flags, strict=True):
        lines += [f"### {row['name']}{' (flagged)' if flag else ''}", "", f"![{row['name']}]({row['qc_png']})", ""]
    return "\n".join(lines) + "\n"
