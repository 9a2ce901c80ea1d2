"""A figure of a conditional demo model's groups beside held-out scans of the same groups.

    python benchmarks/conditional_samples_figure.py --quality OUT --heldout-control DIR \
        --heldout-ftd DIR --checkpoint CKPT [--count 6] [--out FIGURE.png]

OUT is the folder of ``demo_conditional_quality.py`` (its ``generated_control.npy`` and
``generated_ftd.npy``: volumes made with the age and sex of held-out set A's subjects, in its
order). Four rows, one axial slice through the frontal horns each: generated controls,
generated FTD-like volumes, held-out controls and held-out FTD-like subjects. The generated
volume in column i was asked for the age and sex of the held-out subject of its group in that
column, and both generated rows use the same seeds, so a column's two differ by the condition.
No sampling here: the figure shows exactly the volumes the measured figures came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from engine.checkpoint import load_checkpoint

from heldout_scans import prepared_scans

#: Axial level through the frontal horns of the lateral ventricles, in MNI mm.
SLICE_Z_MM = 14.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", required=True, help="output folder of demo_conditional_quality.py")
    parser.add_argument("--heldout-control", required=True)
    parser.add_argument("--heldout-ftd", required=True)
    parser.add_argument("--checkpoint", required=True, help="the model those volumes came from (for its grid)")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--out", default="conditional_samples.png")
    args = parser.parse_args()
    spec = load_checkpoint(args.checkpoint).spec
    n = args.count
    generated = {g: np.load(Path(args.quality) / f"generated_{g}.npy")[:n] for g in ("control", "ftd")}
    held = {
        "control": prepared_scans(args.heldout_control, spec, n),
        "ftd": prepared_scans(args.heldout_ftd, spec, n),
    }
    rows = [
        ("generated, control", generated["control"]),  # saved in standard intensities, as the scans
        ("generated, FTD-like", generated["ftd"]),
        ("held-out, control", held["control"]),
        ("held-out, FTD-like", held["ftd"]),
    ]
    k = round(float(np.linalg.solve(spec.grid.affine, [0.0, 0.0, SLICE_Z_MM, 1.0])[2]))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.9 * len(rows)), squeeze=False)
    for r, (label, volumes) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            # RAS+ arrays: axis 0 left-right, axis 1 posterior-anterior; anterior up, left on the left.
            ax.imshow(volumes[c][:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1000)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(
        f"axial slice at z = {SLICE_Z_MM:g} mm; each generated volume has the age and sex of the held-out subject "
        "of its group in its column; both generated rows share their seeds",
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
