"""MS-SSIM: window choice, agreement with MONAI and (per scale) with scikit-image, pair sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric
from skimage.measure import block_reduce
from skimage.metrics import structural_similarity

from engine.metrics.errors import EvaluationError
from engine.metrics.msssim import STANDARD_WEIGHTS, choose_settings, ms_ssim, sample_pairs, scale_fits
from tests.helpers_metrics import brain


def test_paper_grid_gets_five_scales_and_a_window_of_five():
    s = choose_settings((84, 128, 84))
    assert (s.n_scales, s.kernel_size) == (5, 5)
    assert s.weights == pytest.approx(STANDARD_WEIGHTS)
    assert s.sigma == pytest.approx(1.5 * 5 / 11)
    assert not scale_fits((84, 128, 84), n_scales=5, kernel_size=7)


def test_demo_grid_uses_fewer_scales_with_renormalised_weights():
    s = choose_settings((40, 48, 40))
    assert s.n_scales == 4
    assert s.kernel_size == 3
    assert sum(s.weights) == pytest.approx(1.0)
    assert s.weights[0] / s.weights[1] == pytest.approx(STANDARD_WEIGHTS[0] / STANDARD_WEIGHTS[1])
    assert "4 scales" in s.note


def test_too_small_volume_is_refused():
    with pytest.raises(EvaluationError, match="too small"):
        choose_settings((5, 40, 40))
    with pytest.raises(EvaluationError, match="odd"):
        choose_settings((84, 128, 84), kernel_size=4)


@pytest.mark.parametrize("shape", [(32, 32, 32), (40, 48, 40)])
def test_matches_monai_multiscale_ssim(shape):
    x, y = brain(1, shape=shape) / 1000.0, brain(2, shape=shape, offset=40.0) / 1000.0
    s = choose_settings(shape)
    ours = ms_ssim(x, y, s).value
    metric = MultiScaleSSIMMetric(
        spatial_dims=3, data_range=1.0, kernel_size=s.kernel_size, kernel_sigma=s.sigma, weights=s.weights
    )
    theirs = metric(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item()
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_each_scale_matches_scikit_image_ssim():
    shape = (40, 48, 40)
    x, y = brain(3, shape=shape) / 1000.0, brain(4, shape=shape) / 1000.0
    s = choose_settings(shape)
    ours = ms_ssim(x, y, s)
    xs, ys = x.astype(np.float64), y.astype(np.float64)
    for scale in range(s.n_scales):
        if scale:  # an independent 2x2x2 mean pool: crop odd sizes, then block means
            crop = tuple(slice(0, n // 2 * 2) for n in xs.shape)
            xs, ys = block_reduce(xs[crop], (2, 2, 2), np.mean), block_reduce(ys[crop], (2, 2, 2), np.mean)
        # Same Gaussian (scikit-image's window radius is int(3.5 σ + 0.5) = our window), population
        # covariances as MONAI; scikit-image crops the same border that "valid" filtering drops.
        ref = structural_similarity(
            xs, ys, data_range=1.0, gaussian_weights=True, sigma=s.sigma, use_sample_covariance=False
        )
        assert ours.ssim[scale] == pytest.approx(ref, abs=1e-5)


def test_identical_volumes_give_one():
    x = brain(5) / 1000.0
    assert ms_ssim(x, x.copy(), choose_settings(x.shape)).value == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_is_refused():
    s = choose_settings((32, 32, 32))
    with pytest.raises(EvaluationError, match="one shape"):
        ms_ssim(np.zeros((32, 32, 32)), np.zeros((32, 32, 34)), s)


def test_pairs_are_distinct_reproducible_and_capped():
    pairs, possible = sample_pairs(6, None, n_pairs=100, rng=np.random.default_rng(0))
    assert possible == 15
    assert len(pairs) == 15
    assert len(set(pairs)) == 15
    assert all(i < j for i, j in pairs)
    a, _ = sample_pairs(10, 7, n_pairs=20, rng=np.random.default_rng(3))
    b, _ = sample_pairs(10, 7, n_pairs=20, rng=np.random.default_rng(3))
    assert a == b
    assert len(set(a)) == 20
    with pytest.raises(EvaluationError, match="at least 2"):
        sample_pairs(1, None, n_pairs=5, rng=np.random.default_rng(0))
