"""Brain masks, tissue histograms, brain volumes and the memorisation check."""

from __future__ import annotations

import numpy as np
import pytest

from engine.metrics.histograms import (
    HistogramSettings,
    brain_mask,
    brain_volumes,
    compare_histograms,
    set_statistics,
)
from engine.metrics.memorisation import assess, nearest, percentiles
from engine.metrics.volume_sets import make_set
from tests.helpers_metrics import brain, brains

SETTINGS = HistogramSettings()


def test_brain_mask_fills_enclosed_dark_ventricles():
    vol = brain(0)
    vol_with_hole = vol.copy()
    vol_with_hole[14:18, 14:18, 14:18] = 0.0  # an enclosed dark region
    assert brain_mask(vol_with_hole, threshold=20.0)[16, 16, 16]
    assert not brain_mask(vol, threshold=20.0)[0, 0, 0]


def test_thresholds_separate_the_three_phantom_tissues():
    stats = set_statistics(make_set("real", brains(range(3))), settings=SETTINGS)
    thresholds, comps = compare_histograms(stats, stats, settings=SETTINGS)
    # Phantom tissues sit near 200 (ventricles), 550 (grey) and 850 (white) standard units.
    assert 200 < thresholds[0] < 550 < thresholds[1] < 850
    assert comps[0].name == "whole brain"
    for c in comps:
        assert c.wasserstein == pytest.approx(0.0, abs=1e-9)
        assert c.js_distance == pytest.approx(0.0, abs=1e-6)
        assert c.real_fraction == pytest.approx(c.synthetic_fraction)
    assert sum(c.real_fraction[0] for c in comps[1:]) == pytest.approx(1.0)


def test_a_shift_shows_as_wasserstein_distance_in_standard_units():
    real = set_statistics(make_set("real", brains(range(3))), settings=SETTINGS)
    synth = set_statistics(make_set("synthetic", brains(range(3), offset=40.0)), settings=SETTINGS)
    _, comps = compare_histograms(real, synth, settings=SETTINGS)
    assert comps[0].wasserstein == pytest.approx(40.0, abs=6.0)  # whole brain, bins 10 units wide
    assert comps[0].js_distance > 0.1


def test_brain_volume_in_millilitres():
    vols = brains(range(2))
    stats = set_statistics(make_set("real", vols), settings=SETTINGS)
    result = brain_volumes(stats, stats, voxel_volume_ml=0.008)  # 2 mm isotropic voxels
    expected = [brain_mask(v, threshold=20.0).sum() * 0.008 for v in vols]
    assert result.real_ml == pytest.approx(expected)
    assert result.wasserstein_ml == 0.0


def test_out_of_range_volume_is_refused():
    from engine.metrics.errors import EvaluationError

    raw = brain(0) * 4.0  # scanner units, never mapped to standard space
    with pytest.raises(EvaluationError, match="outside BrainSynth's standard range"):
        set_statistics(make_set("real", [raw], labels=["sub-01"]), settings=SETTINGS)


def test_nearest_neighbours_and_near_copy_flags():
    r = np.array([[0.99, 0.5], [0.3, 0.7]])
    synth = nearest(r, ("s0", "s1"), ("t0", "t1"))
    assert [(n.train_label, n.r) for n in synth] == [("t0", 0.99), ("t1", 0.7)]
    train_r = np.array([[1.0, 0.9], [0.9, 1.0]])
    train = nearest(train_r, ("t0", "t1"), ("t0", "t1"), exclude_self=True)
    assert [n.r for n in train] == [0.9, 0.9]
    real = nearest(np.array([[1.0, 0.8]]), ("r0",), ("t0", "t1"))
    result = assess(synthetic=synth, real_reference=real, train_reference=train, threshold=0.98, n_mask_voxels=10)
    assert [n.label for n in result.flagged] == ["s0"]
    assert [n.label for n in result.closer_than_any_training_pair] == ["s0"]
    assert result.real_in_training == ("r0",)
    assert percentiles([n.r for n in synth])["max"] == 0.99
