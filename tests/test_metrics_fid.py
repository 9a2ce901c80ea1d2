"""FID: the Fréchet distance against MONAI's FIDMetric, MedicalNet weights loading, 2-D descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric

from engine.metrics.errors import EvaluationError
from engine.metrics.fid import fid_2d, frechet_distance, slice_descriptors
from engine.metrics.medicalnet import MedicalNetResNet, extract_features, load_medicalnet
from tests.helpers_metrics import brains, save_random_medicalnet


@pytest.fixture(scope="module")
def medicalnet_weights(tmp_path_factory):
    """A random ResNet-10 saved in MedicalNet's file layout."""
    return save_random_medicalnet(tmp_path_factory.mktemp("medicalnet") / "resnet_10_random.pth")


@pytest.mark.parametrize(("n", "dim"), [(60, 8), (10, 32)])  # well-posed and singular covariances
def test_frechet_distance_matches_monai_fidmetric(n, dim):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, dim))
    b = 0.7 * rng.standard_normal((n + 3, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim) + 0.3
    ours = frechet_distance(a, b)
    theirs = FIDMetric()(torch.from_numpy(b), torch.from_numpy(a)).item()
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def test_frechet_distance_of_identical_features_is_zero():
    a = np.random.default_rng(0).standard_normal((20, 6))
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_refuses_a_single_sample():
    with pytest.raises(EvaluationError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))


def test_loads_medicalnet_file_and_extracts_features(medicalnet_weights):
    net = load_medicalnet(medicalnet_weights)
    assert "ResNet-10" in net.name
    assert "shortcut B" in net.name
    assert len(net.sha256) == 64
    feats = extract_features(net, brains(range(3)), batch_size=2)
    assert feats.shape == (3, 512)
    assert np.isfinite(feats).all()
    # The loaded weights are the saved ones (module. prefix stripped), not a fresh random init.
    saved = torch.load(medicalnet_weights, weights_only=True)["state_dict"]["module.layer4.0.conv2.weight"]
    assert torch.equal(net.model.state_dict()["layer4.0.conv2.weight"], saved)


def test_bare_state_dict_with_shortcut_a_is_detected(tmp_path):
    model = MedicalNetResNet(block="basic", layers=(1, 1, 1, 1), shortcut_type="A")
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    net = load_medicalnet(path)
    assert "shortcut A" in net.name
    assert extract_features(net, brains([0])).shape == (1, 512)


def test_bottleneck_layout_gives_2048_features(tmp_path):
    path = save_random_medicalnet(tmp_path / "r50ish.pth", block="bottleneck", layers=(1, 1, 1, 1))
    net = load_medicalnet(path)
    assert net.model.feature_dim == 2048
    assert extract_features(net, brains([0])).shape == (1, 2048)


def test_wrong_files_give_clear_errors(tmp_path):
    with pytest.raises(EvaluationError, match=r"does not exist.*MedicalNet"):
        load_medicalnet(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(EvaluationError, match="cannot be read as PyTorch weights"):
        load_medicalnet(text)
    other = tmp_path / "unet.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(EvaluationError, match="not a MedicalNet ResNet"):
        load_medicalnet(other)
    broken = tmp_path / "broken.pth"
    state = MedicalNetResNet(block="basic", layers=(1, 1, 1, 1)).state_dict()
    del state["layer3.0.bn1.weight"]
    torch.save(state, broken)
    with pytest.raises(EvaluationError, match=r"missing: layer3\.0\.bn1\.weight"):
        load_medicalnet(broken)
    two_d = tmp_path / "2d.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, two_d)
    with pytest.raises(EvaluationError, match="not a 3-D single-channel"):
        load_medicalnet(two_d)


def test_slice_descriptors_and_2d_fid():
    vols = brains(range(3))
    desc = slice_descriptors(vols[0] / 1000.0, slices_per_axis=4)
    assert [d.shape for d in desc] == [(4, 512)] * 3
    same = fid_2d(vols, [v.copy() for v in vols], scale=1000.0, slices_per_axis=4)
    shifted = fid_2d(vols, brains(range(3), offset=150.0), scale=1000.0, slices_per_axis=4)
    assert same.value == pytest.approx(0.0, abs=1e-9)
    assert shifted.value > 1e-3
    assert set(shifted.parameters["per_orientation"]) == {"sagittal", "coronal", "axial"}
