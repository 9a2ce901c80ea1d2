"""Metrics comparing synthetic volumes with real ones.

Modules, each small and named for what it holds:

* :mod:`~engine.metrics.mmd` – unbiased MMD (MONAI ``MMDMetric`` definition) and an RBF variant;
* :mod:`~engine.metrics.msssim` – 3-D MS-SSIM with a window chosen from the grid;
* :mod:`~engine.metrics.fid` – Fréchet distance and 2-D slice descriptors;
* :mod:`~engine.metrics.medicalnet` – MedicalNet's 3-D ResNet, built here, weights from a local file;
* :mod:`~engine.metrics.histograms` – brain masks, per-tissue histograms, brain volumes;
* :mod:`~engine.metrics.memorisation` – nearest training volume and near-copy flags;
* :mod:`~engine.metrics.gram` / :mod:`~engine.metrics.volume_sets` – block-wise inner products
  and set validation with bounded memory;
* :mod:`~engine.metrics.results` – what an evaluation is asked (``EvaluationOptions``) and what it
  finds (``EvaluationResult`` and its parts);
* :mod:`~engine.metrics.report` / :mod:`~engine.metrics.plots` – Markdown and PNG output of a result.

:mod:`engine.evaluation` runs them all; front ends call that, with options and results from
:mod:`~engine.metrics.results`, not the metric modules directly. Imports point one way:
``engine.evaluation`` uses ``engine.metrics``, never the reverse.
"""

from engine.metrics.errors import EvaluationError

__all__ = ["EvaluationError"]
