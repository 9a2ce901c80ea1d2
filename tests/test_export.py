"""engine.export: NIfTI headers, sidecars, refusing to overwrite, atomicity and 1 mm resampling."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from engine import __version__
from engine.errors import CancelledError, ExportError
from engine.export import ExportVolume, export_batch, save_nifti, save_trajectory_nifti, sha256_file, sidecar_path
from engine.generation import GenerationRequest
from engine.geometry import MNI_BOX_SHAPE, mni_box_affine
from engine.masking import brain_region
from engine.sampler_registry import SamplerSettings
from engine.specs import get_preset
from tests.helpers_volumes import BLOB_MM

TINY = get_preset("tiny")
DEMO = get_preset("demo")


def _model_volume(spec, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, spec.grid.shape).astype(np.float32)


def _provenance(spec, seed: int) -> dict:
    request = GenerationRequest(
        spec=spec, seeds=[seed], settings=SamplerSettings("ddim", 50), device="cpu", checkpoint_sha256="ab" * 32
    )
    return request.provenance(seed)


def _batch(spec, tmp_path, volumes, *, start_index: int = 0, **kwargs):
    """Export (seed, array) pairs numbered from ``start_index``."""
    return export_batch(
        [
            ExportVolume(number=start_index + k, array=array, provenance=_provenance(spec, seed))
            for k, (seed, array) in enumerate(volumes)
        ],
        spec=spec,
        out_dir=tmp_path / "out",
        **kwargs,
    )


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- save_nifti ---------------------------------------------------------------------------------


def test_save_nifti_header(tmp_path):
    data = np.random.default_rng(0).random((30, 32, 34)).astype(np.float32)
    affine = TINY.grid.affine
    path = save_nifti(tmp_path / "x.nii.gz", data, affine, description="hello")
    img = nib.load(path)
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    assert int(scode) == 4
    assert int(qcode) == 4
    np.testing.assert_allclose(sform, affine, atol=1e-5)
    np.testing.assert_allclose(qform, affine, atol=1e-5)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"hello"


def test_save_nifti_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.nii.gz"
    save_nifti(path, np.ones((4, 4, 4)), np.eye(4))
    before = path.read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        save_nifti(path, np.zeros((4, 4, 4)), np.eye(4))
    assert path.read_bytes() == before
    save_nifti(path, np.zeros((4, 4, 4)), np.eye(4), overwrite=True)
    assert not nib.load(path).get_fdata().any()
    assert _listing(tmp_path) == ["x.nii.gz"]  # no temporary files left behind


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("x.nii.gz", np.full((4, 4, 4), np.nan), "NaN"),
        ("x.nii.gz", np.ones((4, 4)), "3-D volume"),
        ("x.png", np.ones((4, 4, 4)), r"\.nii\.gz or \.nii"),
    ],
)
def test_save_nifti_bad_input_writes_nothing(tmp_path, name, data, message):
    with pytest.raises(ExportError, match=message):
        save_nifti(tmp_path / name, data, np.eye(4))
    assert _listing(tmp_path) == []


def test_save_nifti_onto_a_folder(tmp_path):
    (tmp_path / "x.nii.gz").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        save_nifti(tmp_path / "x.nii.gz", np.ones((4, 4, 4)), np.eye(4), overwrite=True)


def meta_background(path):
    return json.loads(sidecar_path(path).read_text())["background"]


# --- export_batch ------------------------------------------------------------------------------


def test_export_batch_files_and_sidecars(tmp_path):
    volumes = [(7, _model_volume(TINY, 7)), (123, _model_volume(TINY, 123))]
    paths = _batch(TINY, tmp_path, volumes)
    assert [p.name for p in paths] == ["synthetic_0000_seed7.nii.gz", "synthetic_0001_seed123.nii.gz"]
    assert _listing(tmp_path / "out") == [
        "synthetic_0000_seed7.json",
        "synthetic_0000_seed7.nii.gz",
        "synthetic_0001_seed123.json",
        "synthetic_0001_seed123.nii.gz",
    ]
    for path, (seed, model) in zip(paths, volumes, strict=True):
        img = nib.load(path)
        assert img.shape == TINY.grid.shape
        for xform, code in (img.get_sform(coded=True), img.get_qform(coded=True)):
            assert int(code) == 4
            np.testing.assert_allclose(xform, TINY.grid.affine, atol=1e-5)
        expected = (model + 1.0) * TINY.intensity.scale / 2.0
        # inside the brain the linear mapping; outside exactly 0 (the one background rule)
        brain = brain_region(expected, scale=TINY.intensity.scale)
        expected = np.where(brain, expected, 0.0)
        np.testing.assert_allclose(img.get_fdata(dtype=np.float32), expected, rtol=1e-6, atol=1e-4)
        assert brain.mean() > 0.5
        assert meta_background(path)["brain_voxels"] == int(brain.sum())

        meta = json.loads(sidecar_path(path).read_text())
        assert meta["seed"] == seed
        assert meta["file"] == path.name
        assert meta["checkpoint_sha256"] == "ab" * 32
        assert meta["model_spec"] == json.loads(json.dumps(TINY.to_dict()))
        assert (meta["sampler"], meta["steps"], meta["eta"]) == ("ddim", 50, 0.0)
        assert (meta["weights"], meta["precision"], meta["device"]) == ("ema", "fp32", "cpu")
        assert meta["software_version"] == __version__
        assert datetime.fromisoformat(meta["created"]).tzinfo is not None
        assert meta["intensity"]["scale"] == TINY.intensity.scale
        assert meta["intensity"]["space"] == "standard"
        assert meta["grid"]["shape"] == list(TINY.grid.shape)
        assert meta["resampled_to_1mm"] is False
        np.testing.assert_allclose(meta["grid"]["affine"], TINY.grid.affine)


def test_export_clips_out_of_range_model_values(tmp_path):
    model = np.full(TINY.grid.shape, 1.7, np.float32)
    model[0] = -3.0
    (path,) = _batch(TINY, tmp_path, [(0, model)])
    data = nib.load(path).get_fdata()
    assert data.max() == TINY.intensity.scale
    assert data.min() == 0.0


def test_existing_file_refused_and_nothing_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    clash = out / "synthetic_0001_seed2.nii.gz"
    clash.write_bytes(b"precious")
    volumes = [(1, _model_volume(TINY, 1)), (2, _model_volume(TINY, 2))]
    with pytest.raises(ExportError, match=r"synthetic_0001_seed2\.nii\.gz already exists"):
        _batch(TINY, tmp_path, volumes)
    assert _listing(out) == ["synthetic_0001_seed2.nii.gz"]  # not even the first volume
    assert clash.read_bytes() == b"precious"
    _batch(TINY, tmp_path, volumes, overwrite=True)
    assert nib.load(clash).shape == TINY.grid.shape


def test_second_target_is_a_folder(tmp_path):
    out = tmp_path / "out"
    (out / "synthetic_0001_seed2.json").mkdir(parents=True)
    volumes = [(1, _model_volume(TINY, 1)), (2, _model_volume(TINY, 2))]
    for overwrite in (False, True):
        with pytest.raises(ExportError, match=r"synthetic_0001_seed2\.json"):
            _batch(TINY, tmp_path, volumes, overwrite=overwrite)
        assert _listing(out) == ["synthetic_0001_seed2.json"]


def test_failure_midway_leaves_no_partial_files(tmp_path):
    # The second target appears (as a folder) while the first volume is being written: the
    # batch fails, the first volume's files are rolled back and no temporary file remains.
    out = tmp_path / "out"

    def progress(done, total):
        assert total == 3
        (out / "synthetic_0001_seed2.nii.gz").mkdir()

    volumes = [(1, _model_volume(TINY, 1)), (2, _model_volume(TINY, 2)), (3, _model_volume(TINY, 3))]
    with pytest.raises(ExportError, match=r"synthetic_0001_seed2\.nii\.gz"):
        _batch(TINY, tmp_path, volumes, progress=progress)
    assert _listing(out) == ["synthetic_0001_seed2.nii.gz"]


def test_cancel_from_progress_rolls_back(tmp_path):
    def progress(done, total):
        if done == 2:
            raise CancelledError("cancelled")

    volumes = [(s, _model_volume(TINY, s)) for s in range(3)]
    with pytest.raises(CancelledError):
        _batch(TINY, tmp_path, volumes, progress=progress)
    assert _listing(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ([(0, np.zeros((4, 4, 4), np.float32))], "has shape"),
        ([(0, np.full(TINY.grid.shape, np.nan, np.float32))], "NaN"),
        ([], "empty"),
    ],
)
def test_bad_batches_write_nothing(tmp_path, volumes, message):
    with pytest.raises(ExportError, match=message):
        _batch(TINY, tmp_path, volumes)
    assert not (tmp_path / "out").exists()


def test_bad_prefix(tmp_path):
    with pytest.raises(ExportError, match="plain name"):
        _batch(TINY, tmp_path, [(0, _model_volume(TINY, 0))], prefix="../escape")


def test_prefix_and_start_index(tmp_path):
    (path,) = _batch(TINY, tmp_path, [(5, _model_volume(TINY, 5))], prefix="run1", start_index=12)
    assert path.name == "run1_0012_seed5.nii.gz"
    assert json.loads(sidecar_path(path).read_text())["index"] == 12


def test_resampled_to_1mm_keeps_world_positions(tmp_path):
    grid = DEMO.grid
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    blob = np.exp(-((grid.voxel_to_mm(ijk) - BLOB_MM) ** 2).sum(-1) / (2 * 8.0**2))
    model = (blob * 2.0 - 1.0).astype(np.float32)  # background -1 → standard 0
    (native,) = _batch(DEMO, tmp_path / "a", [(0, model)])
    (fine,) = _batch(DEMO, tmp_path / "b", [(0, model)], resample_to_1mm=True)

    img = nib.load(fine)
    assert img.shape == MNI_BOX_SHAPE == (181, 217, 181)
    for xform, code in (img.get_sform(coded=True), img.get_qform(coded=True)):
        assert int(code) == 4
        np.testing.assert_allclose(xform, mni_box_affine(), atol=1e-5)
    meta = json.loads(sidecar_path(fine).read_text())
    assert meta["resampled_to_1mm"] is True
    assert meta["grid"]["shape"] == [181, 217, 181]
    assert meta["model_grid"]["shape"] == list(grid.shape)

    def centre_mm(path):
        im = nib.load(path)
        return nib.affines.apply_affine(im.affine, ndimage.center_of_mass(im.get_fdata()))

    np.testing.assert_allclose(centre_mm(native), BLOB_MM, atol=0.3)
    np.testing.assert_allclose(centre_mm(fine), BLOB_MM, atol=0.3)


# --- trajectories and hashing -----------------------------------------------------------------


def test_trajectory_nifti(tmp_path):
    frames = np.random.default_rng(0).normal(size=(5, *TINY.grid.shape)).astype(np.float16)
    path = save_trajectory_nifti(
        tmp_path / "traj.nii.gz",
        frames,
        TINY.grid.affine,
        steps=[999, 750, 500, 250, 0],
        metadata={"space": "model", "seed": 3},
    )
    img = nib.load(path)
    assert img.shape == (*TINY.grid.shape, 5)
    assert int(img.get_sform(coded=True)[1]) == 4
    assert int(img.get_qform(coded=True)[1]) == 4
    np.testing.assert_allclose(img.get_fdata()[..., 2], frames[2].astype(np.float32))
    meta = json.loads((tmp_path / "traj.json").read_text())
    assert meta["steps"] == [999, 750, 500, 250, 0]
    assert meta["frame_axis"] == 3
    assert meta["space"] == "model"
    assert meta["seed"] == 3
    with pytest.raises(ExportError, match="already exists"):
        save_trajectory_nifti(path, frames, TINY.grid.affine, steps=[1, 2, 3, 4, 5])


def test_trajectory_step_count_must_match(tmp_path):
    with pytest.raises(ExportError, match="5 trajectory frames but 2 step numbers"):
        save_trajectory_nifti(tmp_path / "t.nii.gz", np.zeros((5, 4, 4, 4)), np.eye(4), steps=[1, 2])
    assert _listing(tmp_path) == []


def test_sha256_file_streams(tmp_path):
    blob = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(blob)
    assert sha256_file(path, chunk_size=65536) == hashlib.sha256(blob).hexdigest()
