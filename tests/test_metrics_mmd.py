"""Unbiased MMD: the reference study's definition (MONAI's MMDMetric) and its companions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import MMDMetric

from engine.metrics.errors import EvaluationError
from engine.metrics.gram import gram_statistics
from engine.metrics.mmd import mmd_from_gram, unbiased_mmd
from engine.metrics.volume_sets import make_set
from tests.helpers_metrics import brain, brains


def _scaled(volumes):
    return np.stack(volumes).astype(np.float64) / 1000.0


def test_matches_monai_mmdmetric():
    # MONAI's MMDMetric needs sets of equal size; ours does not (the estimator does not either).
    x, y = _scaled(brains(range(4))), _scaled(brains(range(10, 14), offset=30.0))
    ours = unbiased_mmd(x, y).value
    theirs = MMDMetric()(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None]).item()
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def _subjects(n: int, *, seed: int, offset: float = 0.0) -> np.ndarray:
    """One anatomy with subject-specific noise of 20 standard units (sd), optionally shifted."""
    base = brain(0)
    rng = np.random.default_rng(seed)
    inside = base > 0
    vols = [np.where(inside, base + offset + 20.0 * rng.standard_normal(base.shape), 0.0) for _ in range(n)]
    return _scaled(vols)


def test_identical_sets_near_zero_and_shift_larger():
    real = _subjects(6, seed=1)
    same = unbiased_mmd(real, real.copy()).value
    shifted = unbiased_mmd(real, _subjects(6, seed=2, offset=100.0)).value
    assert abs(same) < 0.05 * shifted
    copies = np.stack([real[0]] * 3)
    assert unbiased_mmd(copies, copies).value == pytest.approx(0.0, abs=1e-9)
    assert unbiased_mmd(copies, copies).rbf_value == 0.0


def test_identical_sets_give_minus_mean_pairwise_distance_over_m():
    # The unbiased estimator on X vs X is exactly -(1/m) * mean_{i != j} ||x_i - x_j||^2: ~0 only
    # when the set is large or homogeneous. Worth knowing when reading a small-set MMD.
    x = _scaled(brains(range(4)))
    flat = x.reshape(4, -1)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    expected = -d2[~np.eye(4, dtype=bool)].mean() / 4
    assert unbiased_mmd(x, x.copy()).value == pytest.approx(expected, rel=1e-9)


def test_rbf_kernel_sees_shift_and_is_bounded():
    real = _subjects(6, seed=1)
    shifted = unbiased_mmd(real, _subjects(6, seed=2, offset=100.0))
    same = unbiased_mmd(real, real.copy())
    assert shifted.rbf_value > same.rbf_value
    assert -2.0 <= shifted.rbf_value <= 2.0
    assert shifted.rbf_sigma > 0


def test_blockwise_gram_equals_direct():
    real, synth = brains(range(3)), brains(range(5, 8), offset=20.0)
    sets = [make_set("real", real), make_set("synthetic", synth)]
    # A budget far below one volume forces many blocks.
    stats = gram_statistics(sets, scale=1000.0, budget_bytes=10_000)
    flat = np.concatenate([_scaled(real), _scaled(synth)]).reshape(6, -1)
    np.testing.assert_allclose(stats.gram, flat @ flat.T, rtol=1e-12)
    np.testing.assert_allclose(stats.sums, flat.sum(1), rtol=1e-12)
    direct = unbiased_mmd(_scaled(real), _scaled(synth)).value
    assert mmd_from_gram(stats.gram, 3, n_voxels=flat.shape[1]).value == pytest.approx(direct, rel=1e-10)


def test_correlation_from_gram_matches_numpy():
    vols = brains(range(4))
    mask = vols[0] > 20
    stats = gram_statistics([make_set("x", vols)], scale=1000.0, budget_bytes=10_000, voxel_mask=mask)
    direct = np.corrcoef(np.stack([v[mask] for v in vols]).astype(np.float64))
    np.testing.assert_allclose(stats.correlation(), direct, atol=1e-10)


def test_a_set_of_one_is_refused():
    with pytest.raises(EvaluationError, match="at least 2"):
        unbiased_mmd(_scaled(brains([0])), _scaled(brains([1, 2])))
