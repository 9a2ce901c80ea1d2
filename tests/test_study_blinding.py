"""Blinding in the pixels: exports have background exactly 0, and displayed cases do not tell real from synthetic.

The demo case: the bundled demo model's own volumes against the bundled demo scans (held-out
controls and FTD-like subjects the model never saw), both through the study's one display pipeline. Simple
statistics a reader could see by eye must not separate the two kinds (no feature with AUC
>= 0.75 and a visible difference of medians).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from engine.checkpoint import load_checkpoint
from engine.export import ExportVolume, export_batch
from engine.generation import GenerationRequest, generate
from engine.masking import brain_region, zero_background
from engine.resources import bundled_checkpoint, bundled_demo_scans
from engine.samplers import SamplerSettings
from engine.study.display import DisplaySettings, display_array


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory):
    """Eight volumes of the bundled demo model (DPM-Solver++ 2M, 8 steps), exported as the app would."""
    ckpt = load_checkpoint(bundled_checkpoint())
    request = GenerationRequest(
        spec=ckpt.spec, seeds=list(range(8)), settings=SamplerSettings("dpmpp-2m", 8), device="cpu", batch_size=8
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        volumes = [v for e in generate(ckpt.build_model(), request) for v in e.finished]
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("demo_exports")
    paths = export_batch(
        [ExportVolume(i + 1, v.array, v.provenance) for i, v in enumerate(volumes)], spec=ckpt.spec, out_dir=out
    )
    return ckpt.spec, paths


#: Fixed histogram bins over the display window [0, 1000] (standard space), ten of them.
HISTOGRAM_BIN = 100.0
HISTOGRAM_EDGES = np.arange(0.0, 1000.0 + HISTOGRAM_BIN, HISTOGRAM_BIN)


def _auc(a: list[float], b: list[float]) -> float:
    """How well one number separates two groups (0.5 none, 1.0 perfectly), either direction."""
    a_, b_ = np.asarray(a)[:, None], np.asarray(b)[None, :]
    auc = float((a_ > b_).mean() + 0.5 * (a_ == b_).mean())
    return max(auc, 1.0 - auc)


def _visible_gap(feature: str) -> float:
    """The smallest difference of medians that counts: 10 display levels (1 % of the window) for
    a grey value, 1 % of the brain for a share. With 8 cases a side, a rank statistic separates
    differences far below that (0.1 % of the brain moving between two grey-level bins), which no
    reader sees; what the test guards is the pipeline (floor, rim, quantisation, scale)."""
    return 0.01 if "share" in feature else 10.0


def _features(data: np.ndarray) -> dict[str, float]:
    brain = data > 0
    values = data[brain]
    inner = ndimage.binary_erosion(brain)
    edge = brain & ~inner
    second = inner & ~ndimage.binary_erosion(inner)
    return {
        "lowest in-brain value": float(values.min()),
        "mean in-brain value": float(values.mean()),
        "share of dim voxels (< 150)": float((values < 150).mean()),
        "rim profile, outermost layer": float(data[edge].mean()),
        "rim profile, second layer": float(data[second].mean()),
        "histogram 1st percentile": float(np.percentile(values, 1)),
        "histogram 5th percentile": float(np.percentile(values, 5)),
        "histogram median": float(np.percentile(values, 50)),
        "brain share of the grid": float(brain.mean()),
        # What a reader's eye takes from the grey levels: the share of the brain in each tenth of
        # the display range (fixed bins, the same for every case).
        **{
            f"histogram share {lo:.0f}-{lo + HISTOGRAM_BIN:.0f}": float(share)
            for lo, share in zip(
                HISTOGRAM_EDGES[:-1], np.histogram(values, bins=HISTOGRAM_EDGES)[0] / values.size, strict=True
            )
        },
    }


@pytest.mark.slow
def test_exports_have_background_exactly_zero_and_say_so(demo_exports):
    spec, paths = demo_exports
    for path in paths:
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        brain = brain_region(data, scale=spec.intensity.scale)
        assert 0.1 < brain.mean() < 0.6
        assert np.all(data[~brain] == 0.0), "every voxel outside the brain is exactly 0"
        assert data[0, 0, 0] == data[-1, -1, -1] == 0.0
        # the rule is idempotent: the export passes it unchanged
        again, _ = zero_background(data, scale=spec.intensity.scale)
        np.testing.assert_array_equal(again, data)
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["background"]["value"] == 0.0
        assert "largest connected region" in sidecar["background"]["rule"]
        assert sidecar["background"]["brain_voxels"] == int(brain.sum())


@pytest.mark.slow
def test_displayed_cases_do_not_separate_real_from_synthetic(demo_exports):
    spec, paths = demo_exports
    settings = DisplaySettings.from_spec(spec)
    real = [_features(display_array(p, settings)) for p in bundled_demo_scans()]
    synthetic = [_features(display_array(p, settings)) for p in paths]
    separating = {}
    for name in real[0]:
        a, b = [r[name] for r in real], [s[name] for s in synthetic]
        auc, gap = _auc(a, b), abs(float(np.median(a) - np.median(b)))
        if auc >= 0.75 and gap >= _visible_gap(name):
            separating[name] = (round(auc, 3), round(gap, 4))
    assert not separating, separating
    for case in real + synthetic:  # one quantisation and one floor for both kinds
        assert case["lowest in-brain value"] >= 100.0
