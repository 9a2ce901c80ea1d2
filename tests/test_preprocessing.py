"""engine.preprocessing: world-coordinate resampling, brain mask, prepare_scan and its refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from engine.errors import VolumeError
from engine.geometry import MNI_BOX_SHAPE, GridGeometry, mni_box_affine
from engine.intensity import IntensityMapping
from engine.preprocessing import (
    brain_mask,
    prepare_scan,
    resample_grid_to_grid,
    resample_to_grid,
)
from engine.specs import get_preset
from engine.volumes import Volume, load_volume
from tests.helpers_volumes import BLOB_MM, phantom, write_nifti

DEMO = get_preset("demo")


def _reoriented(volume: Volume, axcodes: str) -> Volume:
    """The same scan stored with other axes (in memory, not canonicalised)."""
    img = nib.Nifti1Image(volume.data, volume.affine)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    out = img.as_reoriented(ornt)
    return Volume(data=np.asarray(out.dataobj, dtype=np.float32), affine=out.affine)


@pytest.fixture(scope="module")
def brain() -> Volume:
    data, affine = phantom()
    return Volume(data=data, affine=affine)


# --- resampling ---------------------------------------------------------------------------------


def test_linear_function_is_reproduced_exactly(brain):
    # Trilinear interpolation and a symmetric Gaussian both leave a linear function of world
    # coordinates unchanged, so away from the edges the result must equal the function at the
    # target voxel centres: this checks the whole voxel→mm→voxel mapping.
    src_grid = GridGeometry(shape=(40, 44, 36), spacing_mm=(2.0, 2.5, 3.0), origin_mm=(-40.0, -50.0, -30.0))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in src_grid.shape], indexing="ij"), -1)
    coef = np.array([0.7, -0.3, 1.1])
    data = (src_grid.voxel_to_mm(ijk) @ coef + 200.0).astype(np.float32)
    target = GridGeometry(shape=(20, 24, 18), spacing_mm=(3.3, 3.7, 4.1), origin_mm=(-31.0, -38.5, -19.2))
    out = resample_to_grid(Volume(data=data, affine=src_grid.affine), target)
    expected = target.voxel_to_mm(np.stack(np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij"), -1))
    expected = expected @ coef + 200.0
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(out[inner], expected[inner], rtol=1e-4)


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "ASL"])
def test_resampling_ignores_storage_orientation(brain, axcodes):
    other = _reoriented(brain, axcodes)
    assert "".join(nib.aff2axcodes(other.affine)) == axcodes
    ras = resample_to_grid(brain, DEMO.grid)
    np.testing.assert_allclose(resample_to_grid(other, DEMO.grid), ras, atol=1e-5 * ras.max())


def test_orientation_round_trip_through_files(tmp_path, brain):
    # Same scan written as RAS and as LPS with nibabel's as_reoriented, read back, prepared.
    ras = load_volume(write_nifti(tmp_path / "ras.nii.gz", brain.data, brain.affine))
    lps = load_volume(write_nifti(tmp_path / "lps.nii.gz", brain.data, brain.affine, axcodes="LPS"))
    a, b = prepare_scan(ras, DEMO), prepare_scan(lps, DEMO)
    np.testing.assert_allclose(b.data, a.data, atol=1e-5 * a.data.max())
    np.testing.assert_array_equal(b.mask, a.mask)


def test_outside_the_scan_is_zero():
    data = np.ones((10, 10, 10), np.float32)
    vol = Volume(data=data, affine=np.diag([2.0, 2.0, 2.0, 1.0]))  # voxel centres 0..18 mm
    grid = GridGeometry(shape=(40, 40, 40), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(-30.0, -30.0, -30.0))
    out = resample_to_grid(vol, grid, order=1)
    assert out[0, 0, 0] == 0.0
    assert out[-1, -1, -1] == 0.0
    assert out[20, 20, 20] == pytest.approx(1.0)  # 10 mm: inside the scan


def test_downsampling_is_antialiased():
    # A 1 mm checkerboard cannot be represented on a 4.5 mm grid; without a prefilter it
    # aliases into a coarse pattern of full contrast, with one it averages out to grey.
    n = 60
    checker = (np.indices((n, n, n)).sum(0) % 2).astype(np.float32) * 100.0
    vol = Volume(data=checker, affine=np.eye(4))
    grid = GridGeometry(shape=(12, 12, 12), spacing_mm=(4.5, 4.5, 4.5), origin_mm=(2.25, 2.25, 2.25))
    out = resample_to_grid(vol, grid)[2:-2, 2:-2, 2:-2]
    assert out.mean() == pytest.approx(50.0, abs=2.0)
    assert out.std() < 3.0
    naive = ndimage.affine_transform(checker, np.diag([4.5] * 3), offset=2.25, output_shape=(12,) * 3, order=1)
    assert naive[2:-2, 2:-2, 2:-2].std() > 10 * out.std()  # the prefilter is what made the difference


def test_upsampling_is_not_blurred():
    data = np.zeros((20, 20, 20), np.float32)
    data[10, 10, 10] = 1.0
    vol = Volume(data=data, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    grid = GridGeometry(shape=(40, 40, 40), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    out = resample_to_grid(vol, grid)
    assert out.max() == pytest.approx(1.0)  # voxel centre (20 mm) lands on a target centre


def test_resample_grid_to_grid_onto_1mm_box_keeps_positions():
    grid = DEMO.grid
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    blob = np.exp(-((grid.voxel_to_mm(ijk) - BLOB_MM) ** 2).sum(-1) / (2 * 8.0**2)).astype(np.float32)
    for order in (1, 3):
        out = resample_grid_to_grid(blob, grid, target_affine=mni_box_affine(), target_shape=MNI_BOX_SHAPE, order=order)
        assert out.shape == MNI_BOX_SHAPE
        assert out.dtype == np.float32
        assert out.min() >= 0.0
        assert out.max() <= blob.max()
        centre = np.asarray(ndimage.center_of_mass(out))
        np.testing.assert_allclose(centre - [90, 126, 72], BLOB_MM, atol=0.3)  # voxel → mm in the 1 mm box


def test_resample_grid_to_grid_shape_mismatch():
    with pytest.raises(ValueError, match="does not match the grid"):
        resample_grid_to_grid(np.zeros((4, 4, 4)), DEMO.grid, target_affine=np.eye(4), target_shape=(4, 4, 4))


# --- brain mask ----------------------------------------------------------------------------------


def test_mask_of_stripped_scan_fills_ventricles_and_drops_islands(brain):
    data = brain.data.copy()
    data[2:5, 2:5, 2:5] = 800.0  # a disconnected bright island (e.g. a left-over eyeball)
    mask = brain_mask(data)
    assert not mask[2:5, 2:5, 2:5].any()
    assert mask[data == 150.0].all()  # dark ventricles enclosed by tissue are brain
    assert mask[data >= 600.0].sum() >= 0.99 * (brain.data >= 600.0).sum()
    assert not mask[data == 0.0].any()


def test_mask_of_non_stripped_scan_uses_otsu(brain):
    # A head: brain, a dark 4 mm gap (skull), a bright 8 mm scalp, and Rician-like noise
    # everywhere up to about 15 % of the maximum, which a fixed small fraction would take for
    # tissue. Otsu must keep the noise out; the brain must be in the mask.
    rng = np.random.default_rng(1)
    data = brain.data.copy()
    inside = brain.data > 0
    grown = ndimage.binary_dilation(inside, iterations=3)
    data[grown & ~ndimage.binary_dilation(inside, iterations=1)] = 1100.0
    data += np.abs(rng.normal(0, 60.0, data.shape) + 1j * rng.normal(0, 60.0, data.shape)).astype(np.float32)
    mask = brain_mask(data)
    assert mask[inside].mean() > 0.97
    assert mask[~ndimage.binary_fill_holes(grown)].mean() < 0.01


def test_mask_of_blank_input_is_empty():
    assert not brain_mask(np.zeros((8, 8, 8))).any()


# --- prepare_scan -------------------------------------------------------------------------------


def test_prepare_scan_outputs(brain):
    scan = prepare_scan(brain, DEMO)
    assert scan.data.shape == DEMO.grid.shape
    assert scan.data.dtype == np.float32
    assert scan.mask.dtype == bool
    assert 0.15 < scan.mask.mean() < 0.35
    np.testing.assert_allclose(scan.affine, DEMO.grid.affine)
    assert scan.data.min() == 0.0
    assert scan.data.max() == pytest.approx(DEMO.intensity.scale)
    assert not scan.data[~scan.mask].any()
    # The reported factor is the one applied: standard = clip(scanner * factor) in the mask.
    resampled = resample_to_grid(brain, DEMO.grid)
    expected = np.clip(resampled * scan.scale_factor, 0, DEMO.intensity.scale)
    np.testing.assert_allclose(scan.data[scan.mask], expected[scan.mask], rtol=1e-5)
    model = scan.to_model()
    assert model.min() == -1.0
    assert model.max() == pytest.approx(1.0)


def test_prepare_scan_scale_is_invariant_to_scanner_units(brain):
    a = prepare_scan(brain, DEMO)
    b = prepare_scan(Volume(data=brain.data * 37.0, affine=brain.affine), DEMO)
    np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-3)
    assert b.scale_factor == pytest.approx(a.scale_factor / 37.0)


def test_prepare_scan_custom_mapping(brain):
    from dataclasses import replace

    spec = replace(DEMO, intensity=IntensityMapping(upper_percentile=99.0, scale=1.0))
    scan = prepare_scan(brain, spec)
    assert scan.data.max() == pytest.approx(1.0)


def test_field_of_view_outside_mni_box_is_refused(brain):
    far = brain.affine.copy()
    far[:3, 3] += (400.0, 0.0, 0.0)
    with pytest.raises(VolumeError, match=r"not in MNI space: its field of view .* does not overlap the MNI box"):
        prepare_scan(Volume(data=brain.data, affine=far), DEMO)


def test_brain_far_from_mni_position_is_refused():
    # Scanner coordinates: the grid overlaps the box, but the head sits 70 mm higher.
    data, affine = phantom(shift_mm=(0.0, 20.0, 70.0))
    with pytest.raises(VolumeError, match=r"registered to MNI152 space first"):
        prepare_scan(Volume(data=data, affine=affine), DEMO)


def test_tiny_brain_is_refused(brain):
    # A brain at a quarter of its size: e.g. an image whose voxel sizes are wrong.
    small = brain.affine.copy()
    small[:3, :3] /= 4.0
    small[:3, 3] = (-20.0, -30.0, -10.0)
    with pytest.raises(VolumeError, match=r"covers only .* of the MNI (grid|box)"):
        prepare_scan(Volume(data=brain.data, affine=small), DEMO)


def test_negative_scan_is_refused(brain):
    with pytest.raises(VolumeError, match="not positive"):
        prepare_scan(Volume(data=brain.data - 2000.0, affine=brain.affine), DEMO)
