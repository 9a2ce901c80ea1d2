"""How much of the held-out scans' global layout one denoising step recovers, by timestep.

    python benchmarks/global_layout_recovery.py --scans DIR [--checkpoint CKPT] [--count 72]

The scans' first principal components are their largest modes of variation (for the demo
population: head size, then left-right and front-back position). Each scan is noised to
timestep t, the network asked once, and each component's score in the predicted x_0
regressed on its true score. A slope of 1 recovers the component fully, 0 not at all. The
linear (Wiener) estimate from x_t alone reaches ``lambda / (lambda + (1 - abar) / abar)``
(lambda: the component's variance); the Bayes-optimal denoiser does at least as well, so a
slope well below it means the network has not yet learnt that component at that noise
level. Samples from such a model vary less in it than the scans do.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.resources import default_checkpoint

from heldout_scans import prepared_scans, principal_components

TIMESTEPS = (500, 700, 800, 900, 950, 999)
COMPONENTS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", required=True, help="folder of held-out scans")
    parser.add_argument("--checkpoint", help="default: the bundled demo model")
    parser.add_argument("--count", type=int, default=72, help="scans used (the first N found)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(default_checkpoint(args.checkpoint))
    spec = ckpt.spec
    model = ckpt.build_model().eval()
    x0 = spec.intensity.standard_to_model(prepared_scans(args.scans, spec, args.count))
    if len(x0) <= COMPONENTS + 1:
        raise SystemExit(f"need more than {COMPONENTS + 1} scans, found {len(x0)} in {args.scans}")
    flat = x0.reshape(len(x0), -1).astype(np.float64)
    mean, axes, variance = principal_components(flat, COMPONENTS)
    true_scores = (flat - mean) @ axes.T

    abar = spec.schedule.alphas_cumprod()
    generator = torch.Generator().manual_seed(0)
    clean = torch.from_numpy(x0[:, None]).float()
    print(f"{len(x0)} scans from {args.scans}, {ckpt.path.name}; slope of predicted on true component score")
    print(f"{'t':>4}  {'abar':>9}  " + "  ".join(f"PC{k + 1} slope (linear bound)" for k in range(COMPONENTS)))
    for t in TIMESTEPS:
        a = float(abar[t])
        x_t = a**0.5 * clean + (1 - a) ** 0.5 * torch.randn(clean.shape, generator=generator)
        predicted = []
        with torch.inference_mode():
            for batch in torch.split(x_t, 8):
                output = model(batch, timesteps=torch.full((len(batch),), float(t)))
                predicted.append(spec.schedule.split_prediction(output, batch, a)[0].clamp(-1, 1))
        scores = (torch.cat(predicted).reshape(len(flat), -1).double().numpy() - mean) @ axes.T
        cells = []
        for k in range(COMPONENTS):
            slope = np.cov(true_scores[:, k], scores[:, k])[0, 1] / true_scores[:, k].var(ddof=1)
            bound = variance[k] / (variance[k] + (1 - a) / a)
            cells.append(f"{slope:5.2f} ({bound:4.2f})".rjust(len(f"PC{k + 1} slope (linear bound)")))
        print(f"{t:>4}  {a:9.3g}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
