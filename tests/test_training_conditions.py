"""Conditional training: covariates from participants.tsv or a manifest, checked; dropout; init-from."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.training.config import read_toml
from engine.training.covariates import parse_conditions
from engine.training.errors import TrainingError
from engine.training.trainer import train
from tests.training_data import tiny_run_config, write_volumes

AGES = [50, 55, 60, 65, 70, 75, 80, 85]
SEXES = ["F", "M", "F", "M", "F", "M", "F", "M"]
GROUPS = ["control", "control", "ftd", "control", "ftd", "control", "ftd", "control"]


def _dataset(folder, rows=None, *, header="participant_id\tage\tsex\tgroup"):
    from engine.specs import PRESETS

    paths = write_volumes(folder, PRESETS["tiny"], 8)
    if rows is None:
        rows = [f"scan_{i:03d}\t{AGES[i]}\t{SEXES[i]}\t{GROUPS[i]}" for i in range(8)]
    (folder / "participants.tsv").write_text("\n".join([header, *rows]) + "\n")
    return paths


def _config(tmp_path, data, **overrides):
    return tiny_run_config(
        tmp_path, data, **{"val_timesteps": 1, "conditions": "age,sex:categorical,group", **overrides}
    )


def test_a_conditional_run_stores_its_covariates(tmp_path, capsys):
    _dataset(tmp_path / "data")
    events = []
    train(_config(tmp_path, tmp_path / "data", sample_every=1, sample_count=1, sample_steps=2), callback=events.append)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    conditions = ckpt.spec.conditions
    assert conditions.names == ("age", "sex", "group")
    age, sex, group = conditions.covariates
    assert (age.kind, age.minimum, age.maximum) == ("continuous", 50.0, 85.0)  # inferred, all scans' range
    assert sex.categories == ("F", "M")
    assert group.categories == ("control", "ftd")
    assert conditions.dropout == 0.1
    assert age.dropout == 0.1
    assert any(k.startswith("class_embedding.") for k in ckpt.weights)
    assert any("conditions: age: continuous, 50 to 85" in e.message for e in events)


def test_manifest_columns_are_covariates(tmp_path):
    paths = _dataset(tmp_path / "data")
    (tmp_path / "data" / "participants.tsv").unlink()
    manifest = tmp_path / "manifest.csv"
    lines = ["path,subject_id,group,age"] + [f"{p},s{i},{GROUPS[i]},{AGES[i]}" for i, p in enumerate(paths)]
    manifest.write_text("\n".join(lines) + "\n")
    train(_config(tmp_path, manifest, conditions="age:continuous:0.3,group"))
    conditions = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").spec.conditions
    assert conditions.names == ("age", "group")
    assert conditions.covariates[0].dropout == 0.3


@pytest.mark.parametrize(
    ("rows", "conditions", "message"),
    [
        (None, "age,height", "no covariate column 'height'; the covariate files have: age, group, sex"),
        (
            [f"scan_{i:03d}\t{'sixty' if i == 2 else AGES[i]}\tF\tcontrol" for i in range(8)],
            "age:continuous",
            r"'age' is continuous but not a number in: 'sixty' \(scan_002.nii.gz\)",
        ),
        (
            [f"scan_{i:03d}\t{AGES[i]}\tF\t{'als' if i == 3 else 'control'}" for i in range(8)],
            "group",
            r"'als' \(scan_003.nii.gz\) appear in only one scan",
        ),
        (
            [f"scan_{i:03d}\t{AGES[i]}\tF\tcontrol" for i in range(6)],
            "age",
            r"2 of 8 scans have no covariates .*: scan_006.nii.gz, scan_007.nii.gz",
        ),
    ],
)
def test_bad_covariate_files_are_clear_errors(tmp_path, rows, conditions, message):
    _dataset(tmp_path / "data", rows)
    with pytest.raises(TrainingError, match=message):
        train(_config(tmp_path, tmp_path / "data", conditions=conditions))


def test_missing_values_are_a_listed_warning(tmp_path):
    rows = [f"scan_{i:03d}\t{'n/a' if i in (1, 4) else AGES[i]}\tF\tcontrol" for i in range(8)]
    _dataset(tmp_path / "data", rows)
    events = []
    train(_config(tmp_path, tmp_path / "data", conditions="age"), callback=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("age is missing for 2 scan(s)" in w and "scan_001.nii.gz, scan_004.nii.gz" in w for w in warnings)


def test_condition_options_are_checked_and_read_from_toml(tmp_path):
    assert [(r.name, r.kind, r.dropout) for r in parse_conditions("age:continuous:0.2, sex ,group:auto")] == [
        ("age", "continuous", 0.2),
        ("sex", None, None),
        ("group", None, None),
    ]
    for text, message in (("age:number", "must be continuous or categorical"), ("age,age", "twice")):
        with pytest.raises(TrainingError, match=message):
            parse_conditions(text)
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\n[conditions]\nage = "continuous"\nsex = {kind = "categorical", dropout = 0.2}\n')
    assert read_toml(toml)["conditions"] == "age:continuous,sex:categorical:0.2"
    with pytest.raises(TrainingError, match="condition-dropout must be in"):
        _config(tmp_path, tmp_path, condition_dropout=1.5)


def test_init_from_an_unconditional_checkpoint_starts_as_that_model(tmp_path, tiny_checkpoint):
    from engine.conditions import ConditionSpec, Covariate
    from engine.training.networks import _load_init

    source = load_checkpoint(tiny_checkpoint)
    conditions = ConditionSpec((Covariate("age", "continuous", minimum=40, maximum=90),))
    spec = replace(source.spec, conditions=conditions)
    model = spec.build_model()
    config = _config(tmp_path, tmp_path, init_from=str(tiny_checkpoint))
    info = _load_init(config, spec, model, report=lambda *_: None)
    assert info["init_from_sha256"] == source.sha256
    old = source.build_model()
    x, t = torch.randn(2, 1, *spec.grid.shape), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        expected = old(x, timesteps=t)
        for labels in (conditions.encode([{"age": 45.0}, {}]), conditions.null(2)):
            assert torch.equal(model.eval()(x, timesteps=t, class_labels=labels), expected)


def test_bids_names_find_their_participant_rows(tmp_path):
    from engine.training.covariates import CovariateSources
    from engine.training.data import DataItem

    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t63\nsub-02\t71\n")
    sources = CovariateSources()
    assert sources.row(DataItem(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")) == {"age": "63"}
    assert sources.row(DataItem(root / "sub-02_T1w.nii.gz")) == {"age": "71"}
    assert sources.row(DataItem(root / "sub-03_T1w.nii.gz")) is None
    # A manifest's columns add to (and override) the table's.
    item = DataItem(root / "sub-02_T1w.nii.gz", group="ftd", covariates=(("age", "72"),))
    assert sources.row(item) == {"age": "72", "group": "ftd"}


def test_a_folder_run_is_split_by_the_participants_group_and_a_resume_keeps_it(tmp_path):
    import csv

    from engine.training.resume import resume_config

    _dataset(tmp_path / "data")  # 8 scans, 3 ftd; a quarter held out: 1 control and 1 ftd
    train(_config(tmp_path, tmp_path / "data", conditions="age"))
    split_file = tmp_path / "run" / "split.csv"
    with open(split_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["group"] for r in rows if r["split"] == "val") == ["control", "ftd"]
    before = split_file.read_text()
    # A participants.tsv edited after the start moves nothing: the resume reads the run's split.
    text = (tmp_path / "data" / "participants.tsv").read_text().replace("ftd", "control")
    (tmp_path / "data" / "participants.tsv").write_text(text)
    train(resume_config(tmp_path / "run", {"epochs": 2}), resume=True)
    assert split_file.read_text() == before
