"""The Markdown report: the reference study's Table 1 first, then the measures beyond it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.metrics.memorisation import NearestNeighbour, percentiles

if TYPE_CHECKING:
    from engine.metrics.results import EvaluationResult

_FIGURE_CAPTIONS = {
    "intensity_histograms.png": "Brain intensity histograms, whole brain and per tissue class",
    "brain_volume.png": "Brain-mask volumes",
    "msssim.png": "MS-SSIM of the sampled pairs",
    "nearest_neighbours.png": "Correlation with the nearest training volume",
    "closest_pairs.png": "The synthetic volumes closest to a training volume, next to it",
}


def _f(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _pm(mean: float, sd: float, digits: int = 4) -> str:
    return f"{_f(mean, digits)} ± {_f(sd, digits)}"


def render_markdown(result: EvaluationResult, *, figures: list[str]) -> str:
    """The report text.

    Args:
        result: the evaluation.
        figures: names of the PNG files written beside the report.
    """
    o = result.options
    m = result.mmd
    ms = result.msssim
    lines: list[str] = []
    add = lines.append
    add("# BrainSynth evaluation")
    add("")
    add(f"Evaluated {result.created} with BrainSynth {result.version}.")
    add("")
    for name, count in (("real", result.n_real), ("synthetic", result.n_synthetic), ("training", result.n_train)):
        where = result.sources.get(name)
        if name == "training" and not count:
            add("- training: not given (no memorisation check)")
            continue
        add(f"- {name}: {count} volumes" + (f" from `{where}`" if where else ""))
    spacing = " x ".join(f"{s:.4g}" for s in result.spacing_mm)
    add(f"- grid: {' x '.join(str(n) for n in result.shape)} voxels of {spacing} mm (RAS+)")
    add(f"- intensities: BrainSynth standard space [0, {o.scale:g}], divided by {o.scale:g} for every metric")
    add("")

    add("## Table 1: the reference study's metrics")
    add("")
    add("| Metric | Real | Synthetic | Real vs synthetic |")
    add("|---|---:|---:|---:|")
    add(f"| MMD ↓ (unbiased, linear kernel) | | | {_f(m.value)} |")
    fid = result.fid_3d
    add(f"| FID ↓ (3-D MedicalNet features) | | | {_f(fid.value, 2) if fid.available else 'unavailable'} |")
    add(
        f"| MS-SSIM (within set; lower = more diverse) | {_pm(ms.within_real.mean, ms.within_real.std)} "
        f"| {_pm(ms.within_synthetic.mean, ms.within_synthetic.std)} | |"
    )
    add(f"| MS-SSIM (between sets) | | | {_pm(ms.between.mean, ms.between.std)} |")
    add("")
    ratio = ms.within_real.mean / ms.within_synthetic.mean - 1 if ms.within_synthetic.mean > 0 else float("nan")
    add(
        f"Within-set MS-SSIM of the real set is {abs(ratio) * 100:.1f}% {'higher' if ratio >= 0 else 'lower'} than "
        f"that of the synthetic set. The reference study (Basile et al. 2024, section 5.2) reported MMD = 0.036 "
        f"over 86 real and 86 synthetic volumes and a real-set MS-SSIM about 16% higher than the synthetic one; "
        f"its data scaling is not stated, so compare MMD values across studies with care."
    )
    add("")
    add("How these were computed:")
    add("")
    add(
        f"- **MMD**: {m.kernel}, the unbiased estimator of Gretton et al. (2012), intensities {m.data_range}, "
        f"summed over {m.n_voxels} voxels; per voxel {_f(m.value_per_voxel)}. With a linear kernel the MMD only "
        f"compares the two mean images. Gaussian-kernel MMD (σ = median pairwise distance = {_f(m.rbf_sigma)}): "
        f"{_f(m.rbf_value)}."
    )
    if fid.available:
        note = fid.parameters.get("note")
        add(
            f"- **FID**: {fid.features}; {fid.feature_dim} features, {fid.n_real} real and {fid.n_synthetic} "
            f"synthetic volumes, input {fid.parameters.get('input_normalisation')}; weights "
            f"`{fid.parameters.get('weights_file')}` (SHA-256 {str(fid.parameters.get('weights_sha256'))[:12]}…)."
            + (f" Note: {note}." if note else "")
        )
    else:
        add(f"- **FID**: unavailable: {fid.reason}.")
    s = ms.settings
    add(
        f"- **MS-SSIM**: {s.n_scales} scales, Gaussian window {s.kernel_size} voxels, σ = {s.sigma:.3f} voxels, "
        f"weights ({', '.join(f'{w:.4f}' for w in s.weights)}), data range {s.data_range:g}, K1 = {s.k1}, "
        f"K2 = {s.k2}; {s.note}. Pairs (seed {ms.seed}): {ms.within_real.n_pairs} of {ms.within_real.n_possible} "
        f"real pairs, {ms.within_synthetic.n_pairs} of {ms.within_synthetic.n_possible} synthetic pairs, "
        f"{ms.between.n_pairs} of {ms.between.n_possible} real/synthetic pairs, drawn at random without replacement."
    )
    add("")

    add("## Beyond the reference study")
    add("")
    _intensity_section(result, add)
    _volume_section(result, add)
    _memorisation_section(result, add)
    if result.fid_2d is not None:
        f2 = result.fid_2d
        per = f2.parameters.get("per_orientation", {})
        add("### Fréchet distance on 2-D slice descriptors")
        add("")
        per_text = ", ".join(f"{k} {_f(v, 3)}" for k, v in per.items())
        add(
            f"{_f(f2.value, 3)} (mean of {per_text}). {f2.features}. "
            "No pretrained network is involved, so it is not comparable with published 2-D FIDs; use it to compare "
            "models evaluated the same way."
        )
        add("")

    if figures:
        add("## Figures")
        add("")
        for name in figures:
            add(f"![{_FIGURE_CAPTIONS.get(name, name)}]({name})")
            add("")
    return "\n".join(lines).rstrip() + "\n"


def _intensity_section(result: EvaluationResult, add) -> None:
    it = result.intensity
    add("### Intensity histograms per tissue class")
    add("")
    add(
        f"{it.method}. Thresholds: {it.thresholds[0]:.0f} and {it.thresholds[1]:.0f} standard units "
        f"(classes are intensity classes, not a segmentation)."
    )
    add("")
    add("| Class | Range (standard units) | Real share (%) | Synthetic share (%) | Wasserstein-1 | JS distance |")
    add("|---|---|---:|---:|---:|---:|")
    for c in it.comparisons:
        real = f"{100 * c.real_fraction[0]:.1f} ± {100 * c.real_fraction[1]:.1f}"
        synth = f"{100 * c.synthetic_fraction[0]:.1f} ± {100 * c.synthetic_fraction[1]:.1f}"
        add(
            f"| {c.name} | {c.range[0]:.0f}–{c.range[1]:.0f} | {real} | {synth} | {_f(c.wasserstein, 2)} | "
            f"{_f(c.js_distance, 3)} |"
        )
    add("")


def _volume_section(result: EvaluationResult, add) -> None:
    bv = result.brain_volume
    add("### Brain-mask volume")
    add("")
    add("| Set | Mean ± SD (mL) | Min–max (mL) |")
    add("|---|---:|---:|")
    for name, values, stats in (
        ("real", bv.real_ml, bv.real_mean_sd),
        ("synthetic", bv.synthetic_ml, bv.synthetic_mean_sd),
    ):
        add(f"| {name} | {stats[0]:.1f} ± {stats[1]:.1f} | {min(values):.1f}–{max(values):.1f} |")
    add("")
    add(
        f"Wasserstein-1 distance between the two distributions: {bv.wasserstein_ml:.1f} mL "
        f"(voxel volume {bv.voxel_volume_ml * 1000:.4g} mm³)."
    )
    add("")


def _row(name: str, items: tuple[NearestNeighbour, ...]) -> str:
    p = percentiles([n.r for n in items])
    if not p:
        return f"| {name} | – | – | – | – | – |"
    return f"| {name} | {p['min']:.4f} | {p['p5']:.4f} | {p['median']:.4f} | {p['p95']:.4f} | {p['max']:.4f} |"


def _memorisation_section(result: EvaluationResult, add) -> None:
    mem = result.memorisation
    add("### Memorisation check (nearest training volume)")
    add("")
    if not mem.available:
        add(f"Not run: {mem.reason}.")
        add("")
        return
    add(
        f"{mem.measure} ({mem.n_mask_voxels} voxels). A synthetic volume is flagged as a near copy when its "
        f"nearest training volume has r > {mem.threshold:g}. Reference distributions: each real scan's nearest "
        f"training scan, and each training scan's nearest other training scan."
    )
    add("")
    add("| Nearest training volume of … | min | 5th pct | median | 95th pct | max |")
    add("|---|---:|---:|---:|---:|---:|")
    add(_row("synthetic volumes", mem.synthetic))
    add(_row("real volumes (reference)", mem.real_reference))
    add(_row("training volumes, leave-one-out (reference)", mem.train_reference))
    add("")
    add(
        f"**{len(mem.flagged)} of {len(mem.synthetic)}** synthetic volumes are flagged as near copies "
        f"(r > {mem.threshold:g}); {len(mem.closer_than_any_training_pair)} are closer to a training scan than any "
        f"two training scans are to each other."
    )
    if mem.flagged:
        add("")
        add("| Synthetic | Nearest training | r |")
        add("|---|---|---:|")
        for n in mem.flagged:
            add(f"| {n.label} | {n.train_label} | {n.r:.4f} |")
    if mem.real_in_training:
        add("")
        add(
            f"Warning: {len(mem.real_in_training)} real volume(s) are identical to training volumes "
            f"({', '.join(mem.real_in_training[:5])}{' …' if len(mem.real_in_training) > 5 else ''}); the real "
            f"reference is then not held out. Evaluate against the held-out (validation) scans."
        )
    if mem.closest_pairs:
        add("")
        add("Closest pairs (figure `closest_pairs.png`):")
        add("")
        add("| Synthetic | Nearest training | r |")
        add("|---|---|---:|")
        for pair in mem.closest_pairs:
            n = pair.neighbour
            add(f"| {n.label} | {n.train_label} | {n.r:.4f} |")
    add("")
