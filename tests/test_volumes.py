"""engine.volumes: loading scans in any format/orientation, and every bad input's clear error."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from engine.errors import VolumeError
from engine.volumes import SUPPORTED_EXTENSIONS, Volume, find_volumes, is_supported, load_volume, strip_extension
from tests.helpers_volumes import phantom, write_nifti, write_phantom


def _small(shape=(30, 32, 34), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32) * 100
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    affine[:3, 3] = (-20.0, -30.0, -10.0)
    return data, affine


# --- good files ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".NII.GZ"])
def test_nifti_round_trip_ras(tmp_path, suffix):
    data, affine = _small()
    path = write_nifti(tmp_path / f"scan{suffix}", data, affine)
    vol = load_volume(path)
    assert vol.data.dtype == np.float32
    assert vol.data.shape == data.shape
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.source == path
    assert vol.warnings == []
    assert vol.spacing_mm == pytest.approx((1.5, 1.2, 2.0))


@pytest.mark.parametrize("suffix", [".mgh", ".mgz"])
def test_mgh_is_read_and_reoriented(tmp_path, suffix):
    # FreeSurfer's conformed orientation is LIA; the loader must hand back RAS+.
    data, affine = _small()
    img = nib.Nifti1Image(data, affine)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(("L", "I", "A"))
    )
    lia = img.as_reoriented(ornt)
    path = tmp_path / f"scan{suffix}"
    nib.save(nib.MGHImage(np.asarray(lia.dataobj, dtype=np.float32), lia.affine), path)
    vol = load_volume(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    np.testing.assert_allclose(vol.data, data, rtol=1e-6)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "ASL"])
def test_any_storage_orientation_loads_as_the_same_ras_volume(tmp_path, axcodes):
    data, affine = phantom((30, 36, 30))
    ras = load_volume(write_nifti(tmp_path / "ras.nii.gz", data, affine))
    other = load_volume(write_nifti(tmp_path / "other.nii.gz", data, affine, axcodes=axcodes))
    assert nib.aff2axcodes(other.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(other.data, ras.data)
    np.testing.assert_allclose(other.affine, ras.affine, atol=1e-5)


def test_reorientation_keeps_world_positions(tmp_path):
    # The voxel holding the maximum must sit at the same mm coordinate before and after.
    data, affine = _small()
    data[3, 20, 7] = 1000.0
    world = affine @ [3, 20, 7, 1]
    vol = load_volume(write_nifti(tmp_path / "s.nii.gz", data, affine, axcodes="LPI"))
    ijk = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose(vol.affine @ [*ijk, 1], world, atol=1e-5)


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    data, affine = _small()
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data[..., None], affine), path)
    vol = load_volume(path)
    assert vol.shape == data.shape


def test_scaled_integer_storage_gives_float32(tmp_path):
    data, affine = _small()
    img = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(img, path)
    vol = load_volume(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, np.round(data) * 0.5 + 10.0, rtol=1e-6)


def test_a_few_nans_are_replaced_with_a_warning(tmp_path):
    data, affine = _small()
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    vol = load_volume(write_nifti(tmp_path / "scan.nii.gz", data, affine))
    assert np.isfinite(vol.data).all()
    assert vol.data[0, 0, 0] == 0.0
    assert len(vol.warnings) == 1
    assert "4 NaN or infinite voxels replaced by 0" in vol.warnings[0]
    assert "replaced" in vol.describe()


def test_header_without_orientation_is_flagged(tmp_path):
    data, affine = _small()
    img = nib.Nifti1Image(data, affine)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    path = tmp_path / "analyze_like.nii"
    nib.save(img, path)
    vol = load_volume(path)
    assert any("no orientation" in w for w in vol.warnings)


def test_describe_is_one_informative_line(tmp_path):
    vol = load_volume(write_phantom(tmp_path / "sub-01_T1w.nii.gz", shape=(30, 36, 30)))
    text = vol.describe()
    assert "\n" not in text
    assert text.startswith("sub-01_T1w.nii.gz: 30 x 36 x 30 voxels")
    assert "RAS+" in text
    assert "mm" in text


def test_in_memory_volume_describe():
    data, affine = _small()
    assert Volume(data=data, affine=affine).describe().startswith("<in memory>: 30 x 32 x 34")


# --- bad files: each gets a message a user can act on ------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(VolumeError, match=r"scan\.nii\.gz does not exist"):
        load_volume(tmp_path / "scan.nii.gz")


def test_directory(tmp_path):
    folder = tmp_path / "scans.nii"
    folder.mkdir()
    with pytest.raises(VolumeError, match="is a folder, not a scan"):
        load_volume(folder)


@pytest.mark.parametrize("name", ["scan.png", "scan.dcm", "scan.nrrd", "scan.gz", "scan"])
def test_unsupported_extension_names_the_supported_ones(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\0" * 100)
    with pytest.raises(VolumeError, match="unsupported format") as info:
        load_volume(path)
    for ext in SUPPORTED_EXTENSIONS:
        assert ext in str(info.value)
    if name in ("scan.dcm", "scan"):
        assert "dcm2niix" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.nii.gz", b"patient notes, not an image\n" * 20),
        ("notes.nii", b"patient notes, not an image\n" * 20),
        ("renamed_png.nii", b"\x89PNG\r\n\x1a\n" + bytes(600)),
        ("renamed_png.nii.gz", gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(600))),
        ("empty.nii.gz", b""),
        ("notes.mgz", b"patient notes\n" * 50),
    ],
)
def test_not_an_image(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VolumeError, match=rf"{name.replace('.', '[.]')} is not a readable (NIfTI|MGH) image"):
        load_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mgz"])
def test_truncated_file(tmp_path, suffix):
    data, affine = _small()
    full = tmp_path / f"full{suffix}"
    if suffix == ".mgz":
        nib.save(nib.MGHImage(data, affine), full)
    else:
        nib.save(nib.Nifti1Image(data, affine), full)
    raw = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match=r"is damaged or incomplete.*export the file again"):
        load_volume(cut)


def test_four_d(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 30, 2), np.float32), np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"^scan\.nii\.gz is 4-D \(64x64x30x2\); a 3-D T1 volume is needed"):
        load_volume(path)


def test_two_d(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.float32), np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"slice\.nii\.gz is 2-D \(64x64\); a 3-D T1 volume is needed"):
        load_volume(path)


def test_single_slice_stored_as_3d(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(64, 64, 1).astype(np.float32), np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"single slice \(64x64x1\)"):
        load_volume(path)


@pytest.mark.parametrize(
    ("value", "message"), [(0.0, "every voxel is 0"), (7.0, r"every voxel has the same value \(7\)")]
)
def test_empty_or_constant(tmp_path, value, message):
    path = write_nifti(tmp_path / "blank.nii.gz", np.full((30, 30, 30), value, np.float32), np.eye(4))
    with pytest.raises(VolumeError, match=rf"blank\.nii\.gz is empty: {message}"):
        load_volume(path)


def test_all_nan(tmp_path):
    path = write_nifti(tmp_path / "nan.nii.gz", np.full((30, 30, 30), np.nan, np.float32), np.eye(4))
    with pytest.raises(VolumeError, match="no numbers: every voxel is NaN"):
        load_volume(path)


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 0.0, 1.0, 1.0]),  # a zero voxel size
        np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]),  # two axes coincide
    ],
)
def test_degenerate_affine(tmp_path, affine):
    path = tmp_path / "flat.nii.gz"
    # Built without an affine so nibabel does not try (and fail) to derive a qform from it.
    img = nib.Nifti1Image(np.random.rand(30, 30, 30).astype(np.float32), None)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    with pytest.raises(VolumeError, match="degenerate voxel-to-world affine"):
        load_volume(path)


def test_rgb_volume(tmp_path):
    rgb = np.zeros((30, 30, 30), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "colour.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"colour \(RGB\)"):
        load_volume(path)


# --- finding scans --------------------------------------------------------------------------


def test_find_volumes_expands_folders_sorted_and_filtered(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.nii.gz", "a.nii", "c.MGZ", "notes.txt", ".hidden.nii.gz", "d.json"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub" / "e.nii.gz").write_bytes(b"x")
    single = tmp_path / "single.mgh"
    single.write_bytes(b"x")
    explicit_bad = tmp_path / "explicit.png"

    found = find_volumes([folder, single, explicit_bad, folder / "a.nii"])
    assert [p.name for p in found] == ["a.nii", "b.nii.gz", "c.MGZ", "single.mgh", "explicit.png"]
    assert [p.name for p in find_volumes([folder], recursive=True)] == [
        "a.nii",
        "b.nii.gz",
        "c.MGZ",
        "e.nii.gz",
    ]


def test_find_volumes_nothing_found(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VolumeError, match=r"no scans found in .*NIfTI"):
        find_volumes([tmp_path])


def test_extension_helpers():
    assert is_supported("a.nii.gz")
    assert is_supported("B.MGZ")
    assert not is_supported("a.gz")
    assert not is_supported(".nii")
    assert strip_extension("sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert strip_extension("brain.mgz") == "brain"
