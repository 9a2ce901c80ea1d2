"""Raw scans through ``brainsynth-cli preprocess`` (engine.preprocess), with known answers.

The known answer comes from ``demo-data --raw``: a demo subject written as a raw head scan in
scanner space (scalp, skull, CSF, oblique affine, shift, anisotropic voxels, PIL axis order,
int16 with a scale factor) beside its MNI-space ground truth. To keep the suite fast the raw
scan is coarsened to 1.5 x 1.8 x 1.5 mm and the pipeline runs with ``fast`` settings; the
benchmark (benchmarks/bench_preprocess.py) runs the full-resolution, full-iteration pipeline.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.errors import BrainSynthError
from engine.geometry import MNI_BOX_SHAPE, mni_box_affine
from engine.preprocess import PreprocessError, PreprocessSettings, find_raw_scans
from engine.preprocess.checks import check_raw_scan, stripped_brain_mask
from engine.preprocess.qc import compactness, flag_outliers, report_markdown
from engine.volumes import Volume
from training_cli.main import main as cli

ants = pytest.importorskip("ants", reason="preprocessing needs antspyx (pip install 'brainsynth[preprocess]')")

FAST = ["--threads-per-job", "2"]


def _ellipsoid(shape=(180, 210, 170), radii_mm=(65.0, 80.0, 60.0), spacing=1.0) -> tuple[np.ndarray, np.ndarray]:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) * spacing / 2 for n in shape]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) * spacing
    centre = (np.array(shape) - 1) * spacing / 2
    inside = (((grid - centre) / np.array(radii_mm)) ** 2).sum(axis=-1) <= 1.0
    return inside, affine


# -- fast checks: no pipeline run -------------------------------------------------------------


def test_settings_refuse_unknown_steps_registrations_and_devices():
    with pytest.raises(BrainSynthError, match="cannot skip brain"):
        PreprocessSettings(skip=("brain",))
    with pytest.raises(BrainSynthError, match="registration must be one of affine, syn"):
        PreprocessSettings(registration="rigid")
    with pytest.raises(BrainSynthError, match="device must be cpu or cuda"):
        PreprocessSettings(device="tpu")
    # Threads and device do not change the result, so they are not part of the cache key.
    assert PreprocessSettings(threads=1).cache_key() == PreprocessSettings(threads=4, device="cuda").cache_key()
    assert PreprocessSettings().cache_key() != PreprocessSettings(skip=("denoise",)).cache_key()


def test_bids_folders_give_their_t1w_files_and_other_folders_their_scans(tmp_path):
    bids = tmp_path / "bids"
    for rel in [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii",
        "derivatives/x/sub-01/anat/sub-01_desc-brain_T1w.nii.gz",
        ".hidden/sub-09_T1w.nii.gz",
    ]:
        (bids / rel).parent.mkdir(parents=True, exist_ok=True)
        (bids / rel).write_bytes(b"")
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ["b.nii.gz", "a.mgz", "notes.txt"]:
        (plain / name).write_bytes(b"")
    found = find_raw_scans([bids, plain])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "bids/sub-01/anat/sub-01_T1w.nii.gz",
        "bids/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii",
        "plain/a.mgz",
        "plain/b.nii.gz",
    ]


def test_stripped_scans_are_recognised_and_raw_heads_are_not():
    inside, affine = _ellipsoid()
    rng = np.random.default_rng(0)
    brain = np.where(inside, 800.0 + 50 * rng.standard_normal(inside.shape), 0.0).astype(np.float32)
    mask = stripped_brain_mask(Volume(brain, affine))
    assert mask is not None
    assert np.array_equal(mask, inside)
    # The same image with noise in the air (a raw scan) is not stripped...
    noisy = np.abs(brain + 20 * rng.standard_normal(brain.shape)).astype(np.float32)
    assert stripped_brain_mask(Volume(noisy, affine)) is None
    # ...nor is a zero-filled head: 4.5 litres is no brain.
    head, _ = _ellipsoid(radii_mm=(85.0, 100.0, 80.0))
    assert stripped_brain_mask(Volume(np.where(head, 500.0, 0.0).astype(np.float32), affine)) is None


def test_tiny_fields_of_view_and_blank_images_are_refused():
    inside, affine = _ellipsoid()
    slab = Volume(np.ones((180, 210, 20), np.float32), affine)
    with pytest.raises(PreprocessError, match=r"covers only 180 x 210 x 20 mm; .* at least 100 mm"):
        check_raw_scan(slab)
    with pytest.raises(PreprocessError, match="one value everywhere"):
        check_raw_scan(Volume(np.zeros(inside.shape, np.float32), affine))


def test_compactness_is_one_for_a_ball_and_lower_for_a_slab():
    ball, _ = _ellipsoid(shape=(61, 61, 61), radii_mm=(25.0, 25.0, 25.0))
    slab = np.zeros((61, 61, 61), bool)
    slab[5:56, 5:56, 28:33] = True
    assert 0.9 < compactness(ball) <= 1.05
    assert compactness(slab) < 0.5


def test_outliers_are_flagged_by_range_and_by_distance_from_the_batch():
    rows = [{"brain_volume_ml": v, "similarity": 0.9, "compactness": 0.8} for v in (1400, 1420, 1380, 1410, 1395)]
    rows.append({"brain_volume_ml": 1900.0, "similarity": 0.62, "compactness": 0.8})
    flags = flag_outliers(rows)
    assert flags[:5] == [[]] * 5
    assert any("similarity 0.62 outside" in f for f in flags[5])
    assert any("brain volume (mL) 1900 far from the batch" in f for f in flags[5])
    text = report_markdown(
        [{**r, "name": f"s{i}", "qc_png": f"qc/s{i}.png", "notes": []} for i, r in enumerate(rows)],
        failed=[("bad.nii", "is 4-D")],
        title="QC",
    )
    assert "6 scans preprocessed, 1 flagged for a look, 1 refused." in text
    assert "![s5](qc/s5.png)" in text
    assert "- bad.nii: is 4-D" in text


def test_ants_images_keep_the_world_position_of_an_oblique_scan():
    """ANTs (ITK, LPS), nibabel and BrainSynth's own resampler (scipy, RAS) agree on where voxels are."""
    from nibabel.processing import resample_from_to
    from scipy import ndimage

    from engine.preprocess.ants_io import to_ants, to_array
    from engine.preprocessing import resample

    rng = np.random.default_rng(1)
    data = ndimage.gaussian_filter(rng.random((40, 36, 30)).astype(np.float32), 2.0)
    c, s = np.cos(0.3), np.sin(0.3)
    # Oblique, anisotropic, axes permuted and one flipped (a left-handed voxel frame).
    affine = np.array([[0, 0, -1.5, 30.0], [c * 1.2, -s, 0, -20.0], [s * 1.2, c, 0, 10.0], [0, 0, 0, 1]])
    centre = affine[:3, :3] @ (np.array(data.shape) - 1) / 2 + affine[:3, 3]
    target = np.eye(4)
    target[:3, 3] = centre - 14.5
    shape = (30, 30, 30)
    by_ants = to_array(ants.resample_image_to_target(to_ants(data, affine), to_ants(np.zeros(shape), target)))
    by_scipy = resample(data, source_affine=affine, target_affine=target, target_shape=shape, order=1)
    by_nibabel = resample_from_to(nib.Nifti1Image(data, affine), (shape, target), order=1).get_fdata()
    inside = (by_ants > 0) & (by_scipy > 0) & (by_nibabel > 0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(by_ants[inside], by_nibabel[inside], atol=1e-4)
    np.testing.assert_allclose(by_scipy[inside], by_nibabel[inside], atol=1e-4)


def test_nibabels_own_odd_files_are_refused_with_one_line_each(tmp_path, capsys):
    from nibabel.testing import data_path

    names = [
        "example4d.nii.gz",
        "functional.nii",
        "anatomical.nii",
        "reoriented_anat_moved.nii",
        "standard.nii.gz",
        "test.mgz",
    ]
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in names:
        shutil.copy(Path(data_path) / name, raw / name)
    nib.save(nib.Nifti1Image(np.ones((256, 256, 1), np.int16), np.eye(4)), raw / "slice.nii.gz")  # 2-D
    names.append("slice.nii.gz")
    out = tmp_path / "out"
    assert cli(["preprocess", str(raw), "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"none of the {len(names)} scans could be preprocessed" in err
    with open(out / "failed.csv", newline="") as fh:
        reasons = {Path(r["input"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert set(reasons) == set(names)
    assert "4-D (128x96x24x2)" in reasons["example4d.nii.gz"]
    assert "4-D" in reasons["functional.nii"]
    assert "covers only 66 x 82 x 50 mm" in reasons["anatomical.nii"]
    assert "covers only" in reasons["standard.nii.gz"]
    assert "covers only" in reasons["reoriented_anat_moved.nii"]
    assert "4-D (3x4x5x2)" in reasons["test.mgz"]
    assert "a 3-D T1 volume is needed" in reasons["slice.nii.gz"]
    assert not list(out.glob("*.nii*"))  # nothing written for a refused scan
    # Run again: the same content is not examined again, and says so.
    assert cli(["preprocess", str(raw), "--out", str(out), *FAST]) == 1
    assert capsys.readouterr().err.count("(refused before; --overwrite tries again)") == len(names)


# -- the pipeline on a raw demo subject (known answer) ----------------------------------------


def _coarsen(src: Path, dst: Path, factors=(1.5, 1.5, 1.5)) -> None:
    """The raw scan on a coarser grid of the same orientation (anti-aliased), int16 + slope again."""
    from engine.demo_raw import save_int16_nifti
    from engine.preprocessing import resample

    img = nib.load(src)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    step = np.diag([*factors, 1.0])
    step[:3, 3] = [(f - 1) / 2 for f in factors]
    affine = img.affine @ step
    shape = tuple(int(np.floor(n / f)) for n, f in zip(img.shape, factors, strict=True))
    coarse = resample(data, source_affine=img.affine, target_affine=affine, target_shape=shape, order=1)
    save_int16_nifti(dst, coarse, affine)


@pytest.fixture(scope="module")
def raw_subject(tmp_path_factory):
    """demo-data --raw (one subject), the raw scan coarsened; (raw, ground truth, raw sidecar)."""
    root = tmp_path_factory.mktemp("raw_demo")
    assert cli(["demo-data", "--out", str(root / "demo"), "--count", "1", "--seed", "3", "--raw"]) == 0
    truth = root / "demo" / "demo_s3_0000.nii.gz"
    full = root / "demo" / "raw" / "demo_s3_0000.nii.gz"
    raw = root / "input" / "sub-03_T1w.nii.gz"
    raw.parent.mkdir()
    _coarsen(full, raw)
    return raw, truth, full


@pytest.mark.slow
def test_demo_data_raw_is_a_scanner_space_head_scan(raw_subject):
    _, truth, full = raw_subject
    img = nib.load(full)
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope not in (0.0, 1.0)
    assert "".join(nib.aff2axcodes(img.affine)) == "PIL"
    zooms = np.round(img.header.get_zooms(), 3)
    assert sorted(zooms) == [1.0, 1.0, 1.2]
    assert int(img.header["sform_code"]) == 1  # scanner coordinates, not MNI
    rotation = img.affine[:3, :3] / zooms
    assert np.abs(np.abs(rotation) - np.round(np.abs(rotation))).max() > 0.1  # oblique
    sidecar = json.loads(full.with_name("demo_s3_0000.json").read_text())
    assert sidecar["ground_truth"] == "../demo_s3_0000.nii.gz"
    assert "not a patient" in sidecar["kind"]
    data = np.asarray(img.dataobj, dtype=np.float32)
    # Noise in the air, a bright scalp: far more signal outside the brain than a stripped scan has
    # (the brain fills about a fifth of the box). 0.86 for this subject since age and sex drive its head.
    assert (data > 0).mean() > 0.8
    ground_truth = nib.load(truth)
    assert ground_truth.shape == MNI_BOX_SHAPE
    assert int(ground_truth.header["sform_code"]) == 4


@pytest.fixture(scope="module")
def preprocessed(raw_subject, tmp_path_factory):
    raw, truth, _ = raw_subject
    from engine.preprocess import run_preprocess

    out = tmp_path_factory.mktemp("preprocessed")
    result = run_preprocess([raw.parent], out, settings=PreprocessSettings(threads=2, fast=True))
    return out, result, truth


@pytest.mark.slow
def test_raw_scan_gives_its_ground_truth(preprocessed):
    out, result, truth = preprocessed
    assert [o.status for o in result.outcomes] == ["done"], [o.message for o in result.outcomes]
    scan_img = nib.load(out / "sub-03_T1w.nii.gz")
    assert scan_img.shape == MNI_BOX_SHAPE
    np.testing.assert_allclose(scan_img.affine, mni_box_affine())
    assert int(scan_img.header["sform_code"]) == 4
    assert int(scan_img.header["qform_code"]) == 4
    scan = np.asarray(scan_img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(out / "masks" / "sub-03_T1w_mask.nii.gz").dataobj) > 0
    gt = np.asarray(nib.load(truth).dataobj, dtype=np.float32)
    gt_mask = gt > 0
    assert np.corrcoef(scan.ravel(), gt.ravel())[0, 1] >= 0.95
    dice = 2 * (mask & gt_mask).sum() / (mask.sum() + gt_mask.sum())
    assert dice >= 0.95
    # No skull or scalp left: outside the mask everything is 0, and nothing bright lies more
    # than 3 mm outside the true brain.
    from scipy import ndimage

    assert scan[~mask].max() == 0
    far = ndimage.distance_transform_edt(~gt_mask) > 3
    assert (scan[far] > 0).mean() < 0.001
    # The study's normalisation: the brain's 99.5th percentile at 1000.
    assert abs(np.percentile(scan[mask], 99.5) - 1000) < 5
    record = json.loads((out / "sub-03_T1w.json").read_text())
    assert record["registration"] == "affine"
    assert record["notes"] == []
    assert record["metrics"]["similarity"] > 0.85
    assert 1000 < record["metrics"]["brain_volume_ml"] < 2300
    assert {"brain_extraction", "denoise", "bias_field", "registration"} <= set(record["seconds"])
    assert (out / record["outputs"]["transform"]).stat().st_size > 0
    assert (out / "qc" / "sub-03_T1w.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "qc_report.md").read_text()
    assert "| sub-03_T1w |" in report
    assert "![sub-03_T1w](qc/sub-03_T1w.png)" in report
    assert (out / "failed.csv").read_text() == "input,reason\n"


@pytest.mark.slow
def test_the_output_is_what_prepare_takes(preprocessed, tmp_path):
    out, _, _ = preprocessed
    assert cli(["prepare", str(out), "--out", str(tmp_path / "prepared"), "--preset", "tiny"]) == 0
    assert (tmp_path / "prepared" / "sub-03_T1w.nii.gz").exists()


@pytest.mark.slow
def test_finished_scans_are_skipped_and_other_content_is_not_overwritten(preprocessed, raw_subject, tmp_path, capsys):
    out, _, _ = preprocessed
    raw, _, _ = raw_subject
    before = (out / "sub-03_T1w.nii.gz").stat().st_mtime_ns
    from engine.preprocess import run_preprocess

    again = run_preprocess([raw], out, settings=PreprocessSettings(threads=2, fast=True))
    assert [o.status for o in again.outcomes] == ["cached"]
    assert (out / "sub-03_T1w.nii.gz").stat().st_mtime_ns == before
    # Other settings are another result: refused without --overwrite, nothing touched.
    other = run_preprocess([raw], out, settings=PreprocessSettings(threads=2, fast=True, skip=("denoise",)))
    assert other.outcomes[0].status == "failed"
    assert "--overwrite" in other.outcomes[0].message
    assert (out / "sub-03_T1w.nii.gz").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_stripped_scan_in_mni_space_skips_extraction_and_registration(raw_subject, tmp_path):
    _, truth, _ = raw_subject
    from engine.preprocess import preprocess_file

    outcome = preprocess_file(truth, tmp_path, settings=PreprocessSettings(threads=2, fast=True, skip=("denoise",)))
    assert outcome.status == "done"
    notes = " ".join(outcome.record["notes"])
    assert "already skull-stripped: brain extraction skipped" in notes
    assert "already in MNI space" in notes
    assert "registration skipped" in notes
    assert outcome.record["registration"] == "identity"
    gt = np.asarray(nib.load(truth).dataobj, dtype=np.float32)
    scan = np.asarray(nib.load(tmp_path / "demo_s3_0000.nii.gz").dataobj, dtype=np.float32)
    assert np.corrcoef(scan.ravel(), gt.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_a_non_brain_image_is_refused(tmp_path):
    """A head-sized block of noise: deepbet finds no plausible brain (or registration fails)."""
    rng = np.random.default_rng(5)
    from scipy import ndimage

    data = ndimage.gaussian_filter(rng.random((90, 90, 90)).astype(np.float32), 2.0) * 1000
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    out = tmp_path / "out"
    from engine.preprocess import run_preprocess

    result = run_preprocess([path], out, settings=PreprocessSettings(threads=2, fast=True))
    (outcome,) = result.outcomes
    assert outcome.status == "failed"
    assert (
        "does not look like a brain" in outcome.message or "registration to the MNI template failed" in outcome.message
    )
    assert not (out / "noise.nii.gz").exists()
    assert not (out / "noise.json").exists()
    assert "noise.nii.gz" in (out / "failed.csv").read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_error_for_the_batch(tmp_path, capsys):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    assert cli(["preprocess", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_missing_antspyx_gives_the_install_hint(monkeypatch, tmp_path):
    import sys

    from engine.preprocess import MissingDependencyError
    from engine.preprocess.ants_io import require_ants

    monkeypatch.setitem(sys.modules, "ants", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'brainsynth\[preprocess\]'"):
        require_ants()


@pytest.mark.slow
def test_prepare_preprocess_runs_the_pipeline_first_and_caches_it(raw_subject, tmp_path, capsys):
    _, truth, _ = raw_subject
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(truth, raw / "sub-07_T1w.nii.gz")
    out = tmp_path / "prepared"
    args = ["prepare", str(raw), "--out", str(out), "--preset", "tiny", "--preprocess", "--preprocess-skip", "denoise"]
    assert cli([*args, "--preprocess-threads-per-job", "2"]) == 0
    assert (out / "preprocessed" / "sub-07_T1w.nii.gz").exists()
    assert nib.load(out / "sub-07_T1w.nii.gz").shape == (16, 24, 16)
    # Again, with --overwrite for prepare's own files: the preprocessing is not redone.
    assert cli([*args, "--overwrite"]) == 0
    assert "0 of 1" not in capsys.readouterr().out
    assert json.loads((out / "preprocessed" / "sub-07_T1w.json").read_text())["registration"] == "identity"


def test_train_preprocess_refuses_raw_scans_it_cannot_use_in_one_line(tmp_path, capsys):
    from nibabel.testing import data_path

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(Path(data_path) / "example4d.nii.gz", raw / "sub-01_T1w.nii.gz")
    run_dir = tmp_path / "run"
    code = cli(
        ["train", "--preset", "tiny", "--data", str(raw), "--out", str(run_dir), "--epochs", "1", "--preprocess"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "is 4-D" in err
    assert "none of the raw scans could be preprocessed" in err
    assert (run_dir / "preprocessed" / "failed.csv").read_text().count("\n") == 2


# -- the app: a scan that is not in MNI space is offered for preprocessing -----------------------


@pytest.mark.slow
def test_the_app_offers_preprocessing_and_opens_the_result(qapp, preprocessed, raw_subject, tmp_path, monkeypatch):
    from brainsynth_gui.main_window import MainWindow
    from brainsynth_gui.recent_files import RecentFiles
    from tests.helpers_qt import wait_until

    out, _, _ = preprocessed
    raw, _, _ = raw_subject
    # The app preprocesses into <user cache>/preprocessed: point that at the batch above, so the
    # scan is found done (same content, same settings) instead of computed again.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "preprocessed").symlink_to(out, target_is_directory=True)
    monkeypatch.setenv("BRAINSYNTH_CACHE_DIR", str(tmp_path / "cache"))
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        assert window.open_checkpoint(None, wait=True)  # the bundled demo model
        assert window.open_scans([raw])
        wait_until(lambda: not window.scans.paths)  # not in MNI space: taken out, not kept anywhere
        assert window.real_layer.data is None
        assert window.preprocess_scan(raw, settings=PreprocessSettings(threads=2, fast=True), wait=True)
        assert [p.name for p in window.scans.paths] == [raw.name]
        assert window.scans.paths[0].parent.resolve() == out.resolve()
        wait_until(lambda: window.real_layer.data is not None)  # shown beside the synthetic volumes
        assert not window.errors
    finally:
        window.close()
