"""Per-volume statistics of generated sets beside the held-out scans: where do they differ?

    python benchmarks/volume_set_statistics.py --heldout DIR GENERATED.npy [GENERATED.npy ...]

Each GENERATED.npy is the ``generated.npy`` that ``demo_model_quality.py --out`` writes (one
volume per row, standard intensities / 1000). Prints, for the held-out scans (prepared onto
the model grid) and for each set, the mean over volumes of: brain mean and 90th percentile
(brain = voxels above 0.05), background SD, mean squared Laplacian (sharpness and noise),
and the variance along the held-out scans' first three principal components (for the demo
population: head size, then position), which shows a set that varies less than the scans.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.checkpoint import load_checkpoint
from engine.resources import default_checkpoint

from heldout_scans import prepared_scans, principal_components

BRAIN_THRESHOLD = 0.05
COMPONENTS = 3


def set_statistics(volumes: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> dict[str, float | list[float]]:
    """Statistics of ``volumes`` (n, *grid) in standard intensities / 1000."""
    brain = volumes > BRAIN_THRESHOLD
    scores = (volumes.reshape(len(volumes), -1) - mean) @ axes.T
    return {
        "brain mean": float(np.mean([v[m].mean() for v, m in zip(volumes, brain, strict=True)])),
        "brain p90": float(np.mean([np.percentile(v[m], 90) for v, m in zip(volumes, brain, strict=True)])),
        "background SD": float(np.mean([v[~m].std() for v, m in zip(volumes, brain, strict=True)])),
        "Laplacian^2": float(np.mean([(ndimage.laplace(v) ** 2).mean() for v in volumes])),
        "PC variance": [float(x) for x in scores.var(0, ddof=1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", required=True, help="folder of held-out demo scans (1 mm)")
    parser.add_argument("--checkpoint", help="the model whose grid to prepare the scans on (default: bundled)")
    parser.add_argument("generated", nargs="+", help="generated.npy files from demo_model_quality.py")
    args = parser.parse_args()

    spec = load_checkpoint(default_checkpoint(args.checkpoint)).spec
    heldout = prepared_scans(args.heldout, spec).astype(np.float64) / spec.intensity.scale
    mean, axes, _ = principal_components(heldout.reshape(len(heldout), -1), COMPONENTS)

    rows = [(f"held-out ({len(heldout)})", heldout)]
    for name in args.generated:
        volumes = np.load(name).astype(np.float64).reshape(-1, *spec.grid.shape)
        rows.append((f"{Path(name).parent.name or name} ({len(volumes)})", volumes))
    print(f"{'set':<28} {'brain mean':>10} {'brain p90':>10} {'bg SD':>8} {'Lapl^2':>8}  PC1-3 variance")
    for label, volumes in rows:
        s = set_statistics(volumes, mean, axes)
        pcs = " / ".join(f"{v:.0f}" for v in s["PC variance"])
        print(
            f"{label:<28} {s['brain mean']:10.3f} {s['brain p90']:10.3f} "
            f"{s['background SD']:8.4f} {s['Laplacian^2']:8.4f}  {pcs}"
        )


if __name__ == "__main__":
    main()
