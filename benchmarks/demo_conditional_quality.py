"""Issue 17's bar for a conditional demo model: per-group MMD, and how well conditions steer.

    python benchmarks/demo_conditional_quality.py --checkpoint CKPT \
        --heldout-control DIR --heldout-ftd DIR [--count 32] [--guidance 1] [--out DIR]

Held-out populations (seeds the model never saw), each with its ``participants.tsv``::

    brainsynth-cli demo-data --out heldout/control --count 64 --seed 2 --ftd-fraction 0
    brainsynth-cli demo-data --out heldout/ftd --count 64 --seed 3 --ftd-fraction 1

1. **Per-group MMD** (the demo issue's bar, per group): for each group, ``--count`` volumes
   generated with that group and the age and sex of the held-out set A, one per row, against
   A; beside MMD(B, A) of two held-out sets of the group. Target: ratio <= 3. The Gaussian
   kernel's sigma is fixed per group from its held-out scans (as ``demo_model_quality.py``),
   and both figures are repeated over ``--splits`` random half-splits of the held-out scans.
   Each group's mean ventricle volume and frontal tissue share beside its held-out scans, and the
   share of the held-out control-to-FTD difference that the generated groups carry.
2. **Ventricle volume against requested age**: ``--per-age`` volumes at each of 50, 60, 70
   and 80 years (group control, sex any; the same seeds at every age, so the pairs differ by
   the age alone); the least-squares slope of ventricle volume (ml per decade) beside the
   same slope over the held-out controls against their recorded ages.
3. **Frontal tissue by group**: the frontal (and anterior temporal) tissue fraction of
   generated controls and generated FTD volumes, beside held-out controls and FTD subjects.

``--paired-only N`` is a quick check during training: N seeds at age 65, each generated as a
control and as FTD, so each pair differs by the group alone (percentiles of the differences).

Each group's generated volumes are saved (``generated_GROUP.npy``) and the figures so far
written after each group, so a stopped run started again with the same arguments continues.

The measures are crude on purpose and identical for generated and held-out volumes (on the
model grid, standard intensities): ventricle volume counts CSF-dark voxels (10 to 450 of
1000) in a box around the lateral ventricles; frontal tissue is the share of bright voxels
(> 450) of the brain that lie in :func:`engine.demo_data.ftd_region`. Guidance above 1 runs
the network on twice the batch, so it doubles the time.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from demo_model_quality import median_distance, mmd_pair, split_spread

from engine.checkpoint import load_checkpoint
from engine.demo_data import ftd_region
from engine.generation import GenerationRequest, generate, seeds_from
from engine.samplers import default_settings

from heldout_scans import prepared_scans

AGES = (50.0, 60.0, 70.0, 80.0)
CSF = (10.0, 450.0)  # standard intensities of CSF-dark voxels inside the brain
TISSUE = 450.0


def participants(folder: str) -> list[dict[str, str]]:
    """The rows of ``participants.tsv`` in the order of the folder's scans."""
    with open(Path(folder) / "participants.tsv", newline="") as fh:
        rows = {r["participant_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    from engine.volumes import find_volumes

    return [rows[p.name[: -len(".nii.gz")]] for p in find_volumes([folder])]


def world_coordinates(spec) -> np.ndarray:
    grid = np.indices(spec.grid.shape, dtype=np.float64)
    affine = spec.grid.affine
    return np.tensordot(affine[:3, :3], grid, axes=1) + affine[:3, 3, None, None, None]


def measures(volumes: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """(ventricle volume in ml, frontal tissue fraction) per volume ``(n, *grid)``."""
    world = world_coordinates(spec)
    x, y, z = world
    box = (np.abs(x) < 25) & (y > -45) & (y < 30) & (z > 0) & (z < 35)
    frontal = ftd_region(world.astype(np.float32)) > 0.5
    voxel_ml = float(np.prod(spec.grid.spacing_mm)) / 1000.0
    ventricles, fractions = [], []
    for v in volumes:
        ventricles.append(float(((v > CSF[0]) & (v < CSF[1]) & box).sum()) * voxel_ml)
        tissue = v > TISSUE
        fractions.append(float((tissue & frontal).sum()) / max(float(tissue.sum()), 1.0))
    return np.array(ventricles), np.array(fractions)


def sample(model, spec, *, seeds, conditions, guidance, settings, precision="auto") -> np.ndarray:
    request = GenerationRequest(
        spec=spec,
        precision=precision,
        seeds=tuple(seeds),
        settings=settings,
        device="cpu",
        batch_size=4,
        conditions=tuple(conditions),
        guidance=guidance,
        allow_extrapolation=True,
    )
    out = []
    for event in generate(model, request):
        out += [np.asarray(spec.intensity.model_to_standard(v.array)) for v in event.finished]
    return np.stack(out)


def steering_shares(result: dict) -> dict:
    """How much of the held-out control-to-FTD difference the generated groups carry (1 = all of it)."""
    shares = {}
    for measure, key in (("frontal_tissue", "frontal_tissue_{}"), ("ventricles", "ventricles_{}_ml")):
        control, ftd = result[key.format("control")], result[key.format("ftd")]
        held = ftd["heldout_mean"] - control["heldout_mean"]
        shares[measure] = (ftd["generated_mean"] - control["generated_mean"]) / held if held else None
    return shares


def paired_contrast(model, spec, *, count: int, seed: int, guidance: float, settings, precision: str) -> dict:
    """The same seeds, age 65 and any sex, generated as control and as FTD: the group alone differs."""
    seeds = seeds_from(seed + 20_000, count)
    out = {}
    for group in ("control", "ftd"):
        vent, front = measures(
            sample(model, spec, seeds=seeds, conditions=[{"age": 65.0, "group": group}] * count,
                   guidance=guidance, settings=settings, precision=precision),
            spec,
        )  # fmt: skip
        out[group] = (vent, front)

    def spread(values):
        return [float(v) for v in np.percentile(values, [10, 50, 90])]

    return {
        "count": count,
        "frontal_tissue_ftd_minus_control": spread(out["ftd"][1] - out["control"][1]),
        "ventricles_ml_ftd_minus_control": spread(out["ftd"][0] - out["control"][0]),
    }


def slope_per_decade(ages, values) -> float:
    return float(np.polyfit(np.asarray(ages, float), np.asarray(values, float), 1)[0] * 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--heldout-control")
    parser.add_argument("--heldout-ftd")
    parser.add_argument("--count", type=int, default=32, help="volumes per set (generated, A, B)")
    parser.add_argument("--per-age", type=int, default=8, help="volumes per requested age")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="as `sample --precision` (auto)"
    )
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--splits", type=int, default=50, help="random held-out half-splits for the spread")
    parser.add_argument("--out", default="conditional-quality")
    parser.add_argument(
        "--paired-only", type=int, metavar="N",
        help="only the quick check: N seeds generated as control and as FTD (p10/p50/p90 of the paired differences)",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.paired_only and not (args.heldout_control and args.heldout_ftd):
        parser.error("--heldout-control and --heldout-ftd are needed (unless --paired-only)")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)
    spec = ckpt.spec
    if spec.conditions is None or "group" not in spec.conditions.names:
        raise SystemExit("this benchmark needs a model conditioned on group (and age, sex)")
    model = ckpt.build_model()
    settings = default_settings(spec, sampler=args.sampler, steps=args.steps)
    if args.paired_only:
        contrast = paired_contrast(
            model,
            spec,
            count=args.paired_only,
            seed=args.seed,
            guidance=args.guidance,
            settings=settings,
            precision=args.precision,
        )
        print(json.dumps({"guidance": args.guidance, **contrast}, indent=2))
        return
    n = args.count
    result: dict = {"checkpoint": str(args.checkpoint), "sampler": settings.name, "steps": settings.steps}
    result["guidance"] = args.guidance
    result["precision"] = args.precision
    held = {}
    start = time.perf_counter()
    for group, folder in (("control", args.heldout_control), ("ftd", args.heldout_ftd)):
        scans = prepared_scans(folder, spec, 2 * n)
        rows = participants(folder)[: 2 * n]
        if len(scans) < 2 * n:
            raise SystemExit(f"need {2 * n} held-out {group} scans in {folder}, found {len(scans)}")
        held[group] = (scans, rows)
        names = spec.conditions.names
        conditions = [
            {k: v for k, v in (("age", r["age"]), ("sex", r["sex"]), ("group", group)) if k in names} for r in rows[:n]
        ]
        saved = out / f"generated_{group}.npy"
        if saved.exists() and np.load(saved, mmap_mode="r").shape == (n, *spec.grid.shape):
            generated = np.load(saved)  # a stopped run continues: the same seeds give the same volumes
        else:
            generated = sample(
                model,
                spec,
                seeds=seeds_from(args.seed, n),
                conditions=conditions,
                guidance=args.guidance,
                settings=settings,
                precision=args.precision,
            )
            np.save(saved, generated.astype(np.float32))

        def stack(vols):
            return np.stack([v.ravel() / spec.intensity.scale for v in vols])

        a, b, g = stack(scans[:n]), stack(scans[n:]), stack(generated)
        sigma = median_distance(np.concatenate([a, b]))
        gen_a, b_a = mmd_pair(g, a, sigma), mmd_pair(b, a, sigma)
        result[f"mmd_{group}"] = {
            "rbf_sigma": sigma,
            "generated_vs_A": gen_a,
            "B_vs_A": b_a,
            "rbf_ratio": gen_a["rbf"] / b_a["rbf"] if b_a["rbf"] > 0 else None,
            "target": "rbf_ratio <= 3",
            # one draw of A and B; the unbiased baseline scatters around 0, so also its spread
            "random_splits": split_spread(g, a, b, sigma, splits=args.splits, seed=args.seed),
        }
        vent, front = measures(generated, spec)
        vent_h, front_h = measures(scans, spec)
        result[f"frontal_tissue_{group}"] = {
            "generated_mean": float(front.mean()),
            "heldout_mean": float(front_h.mean()),
        }
        result[f"ventricles_{group}_ml"] = {"generated_mean": float(vent.mean()), "heldout_mean": float(vent_h.mean())}
        if group == "control":
            result["ventricles_vs_age_heldout_ml_per_decade"] = slope_per_decade([r["age"] for r in rows], vent_h)
        (out / "conditional_quality.json").write_text(json.dumps(result, indent=2))  # figures so far

    # Steering by age: the same seeds at every requested age.
    seeds = seeds_from(args.seed + 10_000, args.per_age)
    ages, volumes = [], []
    for age in AGES:
        condition = {"age": age, "group": "control"}
        generated = sample(
            model,
            spec,
            seeds=seeds,
            conditions=[condition] * len(seeds),
            guidance=args.guidance,
            settings=settings,
            precision=args.precision,
        )
        ages += [age] * len(seeds)
        volumes.append(measures(generated, spec)[0])
    volumes = np.concatenate(volumes)
    result["ventricles_vs_age_generated_ml_per_decade"] = slope_per_decade(ages, volumes)
    result["ventricles_by_requested_age_ml"] = {
        f"{a:g}": float(volumes[i * len(seeds) : (i + 1) * len(seeds)].mean()) for i, a in enumerate(AGES)
    }
    result["group_steering"] = steering_shares(result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / "conditional_quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
