"""Training data: discovery, manifests, the preparation cache, failures, the seeded split."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from engine.geometry import GridGeometry
from engine.training.data import (
    PreparationCache,
    check_failures,
    discover,
    make_split,
    read_manifest,
    write_split,
)
from engine.training.errors import TrainingError
from tests.training_data import blob_volume, write_volumes


def _read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def scans(tmp_path, tiny_spec):
    return write_volumes(tmp_path / "scans", tiny_spec, 6)


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.nii.gz"
    text.write_text("not an image")
    four_d = folder / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), four_d)
    return [text, four_d]


def test_cache_prepares_once_and_remembers_failures(tmp_path, tiny_spec, scans):
    bad = _bad_files(tmp_path / "scans")
    cache = PreparationCache(tmp_path / "cache", tiny_spec)
    items = discover([tmp_path / "scans"])
    assert len(items) == len(scans) + len(bad)
    first = [cache.prepare(it) for it in items]
    assert not any(r.from_cache for r in first)
    reasons = {r.item.path.name: r.reason for r in first if not r.ok}
    assert set(reasons) == {"notes.nii.gz", "fmri.nii.gz"}
    assert "not a readable NIfTI" in reasons["notes.nii.gz"]
    assert "4-D" in reasons["fmri.nii.gz"]
    # An on-grid, standard-space file is used exactly as it is (no second normalisation).
    good = next(r for r in first if r.ok)
    assert np.array_equal(np.load(good.array_path), nib.load(good.item.path).get_fdata(dtype=np.float32))

    second = [cache.prepare(it) for it in items]
    assert all(r.from_cache for r in second)
    assert [r.reason for r in second] == [r.reason for r in first]

    # A changed file is a new cache entry; another grid is another cache.
    scans[0].write_bytes(scans[1].read_bytes())
    again = cache.prepare(discover([scans[0]])[0])
    by_name = {r.item.path.name: r for r in first}
    assert again.from_cache
    assert again.sha256 == by_name[scans[1].name].sha256
    other = PreparationCache(tmp_path / "cache", tiny_spec.with_grid((16, 16, 16)))
    assert other.root != cache.root


def test_off_grid_scan_goes_through_the_engine_preprocessing(tmp_path, tiny_spec):
    coarse = GridGeometry.over_mni_box((20, 24, 20))  # 9 mm voxels over the MNI box
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(blob_volume(coarse.shape, 3) * 0.37, coarse.affine), path)
    result = PreparationCache(tmp_path / "cache", tiny_spec).prepare(discover([path])[0])
    assert result.ok, result.reason
    data = np.load(result.array_path)
    assert data.shape == tuple(tiny_spec.grid.shape)
    assert data.min() >= 0
    assert 990 <= data.max() <= 1000


def test_too_many_failures_stop_with_the_reasons(tmp_path, tiny_spec, scans):
    bad = _bad_files(tmp_path / "scans")
    cache = PreparationCache(tmp_path / "cache", tiny_spec)
    results = [cache.prepare(it) for it in discover([tmp_path / "scans"])]
    with pytest.raises(TrainingError, match=r"2 of 8 training files cannot be used") as info:
        check_failures(results, max_failed_fraction=0.2)
    assert "notes.nii.gz is not a readable NIfTI" in str(info.value)
    assert "fmri.nii.gz is 4-D" in str(info.value)
    usable = check_failures(results, max_failed_fraction=0.25)
    assert len(usable) == len(scans)
    assert len(bad) == 2


def test_manifest_with_subjects_and_groups(tmp_path, tiny_spec, scans):
    manifest = tmp_path / "list.csv"
    rows = [["path", "subject_id", "group"]]
    rows += [[f"scans/{p.name}", f"sub-{i // 2}", "FTD" if i < 2 else "HC"] for i, p in enumerate(scans)]
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    items = read_manifest(manifest)
    assert [it.path for it in items] == scans
    assert items[3].subject_id == "sub-1"
    assert items[3].group == "HC"
    # Without a header the columns are path, subject_id, group.
    (tmp_path / "plain.csv").write_text(f"{scans[0]},s1\n{scans[1]},s1\n")
    plain = read_manifest(tmp_path / "plain.csv")
    assert [it.subject_id for it in plain] == ["s1", "s1"]
    with pytest.raises(TrainingError, match="does not exist"):
        discover([tmp_path / "missing.csv"])


def test_split_is_by_subject_stratified_and_a_function_of_the_seed(tmp_path, tiny_spec):
    paths = write_volumes(tmp_path / "s", tiny_spec, 20)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,subject_id,group\n"
        + "".join(f"{p},sub-{i // 2},{'A' if i < 10 else 'B'}\n" for i, p in enumerate(paths)),
    )
    cache = PreparationCache(tmp_path / "cache", tiny_spec)
    prepared = [cache.prepare(it) for it in discover([manifest])]
    split = make_split(prepared, val_fraction=0.2, seed=5)
    val_subjects = {it.item.subject_id for it in split.val}
    train_subjects = {it.item.subject_id for it in split.train}
    assert not val_subjects & train_subjects  # no subject on both sides
    assert len(val_subjects) == 2  # 0.2 of 10 subjects
    assert {it.item.group for it in split.val} == {"A", "B"}  # one validation subject per group
    # Reproducible from the seed, whatever order the files are listed in; another seed differs.
    again = make_split(list(reversed(prepared)), val_fraction=0.2, seed=5)
    assert [it.sha256 for it in again.val] == [it.sha256 for it in split.val]
    assert [it.sha256 for it in again.train] == [it.sha256 for it in split.train]
    others = {tuple(it.sha256 for it in make_split(prepared, val_fraction=0.2, seed=s).val) for s in range(6)}
    assert len(others) > 1
    write_split(tmp_path / "split.csv", split)
    rows = _read_rows(tmp_path / "split.csv")
    assert sum(r["split"] == "val" for r in rows) == len(split.val) == 4


def test_a_folder_with_participants_tsv_is_split_by_group_as_a_manifest_is(tmp_path, tiny_spec):
    from engine.training.covariates import group_strata

    # 20 scans, each its own subject; 5 in the small group: 0.2 of each group validates (3 + 1),
    # which a split blind to the group would miss for some seeds.
    folder = tmp_path / "s"
    paths = write_volumes(folder, tiny_spec, 20)
    groups = ["ftd" if i % 4 == 1 else "control" for i in range(20)]
    rows = ["participant_id\tage\tgroup"] + [
        f"{p.name[:-7]}\t{50 + i}\t{g}" for i, (p, g) in enumerate(zip(paths, groups, strict=True))
    ]
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    cache = PreparationCache(tmp_path / "cache", tiny_spec)
    prepared = [cache.prepare(it) for it in discover([folder])]
    strata = group_strata(prepared)
    assert sorted(strata.values()) == sorted(groups)
    group_of = {it.sha256: strata[it.sha256] for it in prepared}
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,group\n" + "".join(f"{p},{g}\n" for p, g in zip(paths, groups, strict=True)))
    from_manifest = [cache.prepare(it) for it in discover([manifest])]
    for seed in range(6):
        split = make_split(prepared, val_fraction=0.2, seed=seed, strata=strata)
        assert sorted(group_of[it.sha256] for it in split.val) == ["control", "control", "control", "ftd"]
        # The same split as a manifest with the same groups gives, and the same again for the seed.
        manifest_split = make_split(from_manifest, val_fraction=0.2, seed=seed)
        assert [it.sha256 for it in manifest_split.val] == [it.sha256 for it in split.val]
        again = make_split(list(reversed(prepared)), val_fraction=0.2, seed=seed, strata=group_strata(prepared))
        assert [it.sha256 for it in again.train] == [it.sha256 for it in split.train]
    write_split(tmp_path / "split.csv", split, strata=strata)
    rows_out = _read_rows(tmp_path / "split.csv")
    assert sorted(r["group"] for r in rows_out if r["split"] == "val") == ["control", "control", "control", "ftd"]
