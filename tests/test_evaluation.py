"""engine.evaluation: the in-memory entry point the app uses, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import DeviceError, SamplingError
from engine.evaluation import evaluate_volumes, write_report
from engine.metrics.errors import EvaluationError
from engine.metrics.results import EvaluationOptions
from tests.helpers_metrics import brain, brains

FAST = EvaluationOptions(n_pairs=3, memory_budget_mb=1.0)


def test_identical_sets_give_zero_mmd_and_cross_msssim_one():
    one = brain(0)
    real = [one.copy() for _ in range(3)]
    result = evaluate_volumes(real, [one.copy() for _ in range(3)], options=FAST)
    assert result.mmd.value == pytest.approx(0.0, abs=1e-9)
    assert result.msssim.between.mean == pytest.approx(1.0, abs=1e-12)
    assert result.msssim.within_real.mean == pytest.approx(1.0, abs=1e-12)
    assert result.intensity.comparisons[0].wasserstein == pytest.approx(0.0, abs=1e-9)


def test_shifted_set_scores_worse_and_everything_is_reported():
    real = brains(range(3))
    same = evaluate_volumes(real, [v.copy() for v in real], options=FAST)
    shifted = evaluate_volumes(real, brains(range(3), offset=120.0), train=brains(range(10, 13)), options=FAST)
    assert shifted.mmd.value > same.mmd.value + 1.0
    assert shifted.mmd.rbf_value > same.mmd.rbf_value
    assert shifted.msssim.between.mean < 1.0
    assert shifted.intensity.comparisons[0].wasserstein > 50.0
    assert not shifted.fid_3d.available
    assert "--fid-weights" in shifted.fid_3d.reason
    assert shifted.fid_2d is None
    mem = shifted.memorisation
    assert mem.available
    assert len(mem.synthetic) == 3
    assert len(mem.train_reference) == 3
    assert len(mem.closest_pairs) == 3
    assert mem.closest_pairs[0].synthetic_slices[2].shape == (32, 32)
    assert shifted.brain_volume.voxel_volume_ml > 0
    assert shifted.msssim.settings.n_scales == 4  # 32^3 cannot hold 5 scales


def test_a_copied_training_scan_is_flagged():
    train = brains(range(10, 14))
    synthetic = [train[2].copy(), brain(20), brain(21)]
    result = evaluate_volumes(brains(range(3)), synthetic, train=train, options=FAST)
    flagged = result.memorisation.flagged
    assert [(n.index, n.train_index) for n in flagged] == [(0, 2)]
    assert flagged[0].r == pytest.approx(1.0)
    assert result.memorisation.closest_pairs[0].neighbour.index == 0


def test_pairs_and_seed_are_reported_and_repeatable():
    real, synth = brains(range(5)), brains(range(5, 10))
    a = evaluate_volumes(real, synth, options=EvaluationOptions(n_pairs=4, seed=7))
    b = evaluate_volumes(real, synth, options=EvaluationOptions(n_pairs=4, seed=7))
    assert a.msssim.within_real.pairs == b.msssim.within_real.pairs
    assert a.msssim.within_real.n_pairs == 4
    assert a.msssim.within_real.n_possible == 10
    assert a.msssim.seed == 7


@pytest.mark.parametrize(
    ("real", "synthetic", "message"),
    [
        ([], brains(range(2)), "real set is empty"),
        (brains(range(2)), [brain(0)], "synthetic set has 1 volume.*at least 2"),
        (brains(range(2)), brains(range(2), shape=(32, 32, 30)), "real volumes are 32 x 32 x 32 but the synthetic"),
        ([brain(0), brain(1, shape=(32, 32, 30))], brains(range(2)), "real set mixes shapes"),
        (brains(range(2)), [brain(0), brain(1) * 3.0], "synthetic 1 has intensities .* outside"),
    ],
)
def test_bad_inputs_give_clear_errors(real, synthetic, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate_volumes(real, synthetic, options=FAST)


def test_a_device_this_machine_lacks_is_an_evaluation_error_naming_the_devices(tmp_path):
    weights = tmp_path / "resnet_10_23dataset.pth"
    weights.write_bytes(b"never read: the device is checked first")
    options = EvaluationOptions(n_pairs=3, memory_budget_mb=1.0, fid_weights=weights, device="cuda:99")
    with pytest.raises(EvaluationError, match=r"GPU.*available devices: .*cpu") as caught:
        evaluate_volumes(brains(range(2)), brains(range(2, 4)), options=options)
    # the device module's own type, which sampling callers still catch as a SamplingError
    assert isinstance(caught.value.__cause__, DeviceError)
    assert isinstance(caught.value.__cause__, SamplingError)


def test_progress_is_reported_through_the_callback():
    seen = []
    evaluate_volumes(brains(range(2)), brains(range(2, 4)), options=FAST, progress=lambda *a: seen.append(a))
    stages = {s for s, _, _ in seen}
    assert {"reading real volumes", "MMD", "MS-SSIM pairs"} <= stages
    assert all(done <= total for _, done, total in seen)


def test_report_files_json_and_overwrite(tmp_path):
    result = evaluate_volumes(
        brains(range(3)), brains(range(3, 6), offset=30.0), train=brains(range(6, 9)), options=FAST
    )
    written = write_report(result, tmp_path / "out")
    names = {p.name for p in written}
    assert {"evaluation.json", "report.md", "intensity_histograms.png", "closest_pairs.png"} <= names
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert data["mmd"]["kernel"].startswith("linear")
    assert data["msssim"]["settings"]["kernel_size"] == 3
    assert data["fid_3d"]["available"] is False
    assert "synthetic_slices" not in json.dumps(data)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Table 1" in md
    assert "| MMD" in md
    assert "unavailable" in md
    with pytest.raises(EvaluationError, match=r"already exists.*--overwrite"):
        write_report(result, tmp_path / "out")
    write_report(result, tmp_path / "out", overwrite=True)
    assert np.isfinite(data["mmd"]["value"])
