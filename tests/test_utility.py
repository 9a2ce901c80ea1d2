"""``brainsynth-cli utility`` and :mod:`engine.utility`: real tiny volumes, the real MONAI network.

A bright blob marks a patient, so the task is easy to learn; shuffled labels make it
unlearnable. Runs are tiny (16^3 volumes, a width-4 network, tens of steps).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import save_checkpoint
from engine.training.data import sha256_file
from engine.utility import stats
from engine.utility.errors import UtilityError
from engine.utility.experiment import UtilityOptions, prepare_experiment, run_experiment
from tests.helpers_utility import AFFINE, exported_arrays, figures, write_exported, write_real, write_synthetic
from tests.helpers_volumes import write_nifti, write_phantom
from training_cli.main import main

FAST = {"epochs": 10, "batch_size": 4, "width": 4, "bootstrap": 200, "device": "cpu"}


def _options(**kwargs) -> UtilityOptions:
    return UtilityOptions(label="group", positive="ftd", **{**FAST, **kwargs})


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    root = tmp_path_factory.mktemp("separable")
    write_real(root / "real", patients=12, controls=12, seed=1)
    write_synthetic(root / "synthetic", patients=12, controls=12, seed=2)
    options = _options(repeats=2, real_train_sizes=(6, None), synthetic_ratios=(1.0,))
    result = run_experiment(
        [root / "real"], [root / "synthetic"], options, out_dir=root / "out", waive_leakage_check=True
    )
    return root, options, result


def test_separable_task_reaches_auc_near_one_and_writes_the_schema(separable):
    root, _, result = separable
    summary = json.loads((root / "out" / "utility.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert set(summary["arms"]) == {"real", "real+synthetic", "synthetic"}
    for arm in summary["arms"].values():
        for metric in ("auc", "balanced_accuracy"):
            assert set(arm[metric]) == {"mean", "ci_low", "ci_high"}
            # The interval contains the point estimate.
            assert arm[metric]["ci_low"] <= arm[metric]["mean"] <= arm[metric]["ci_high"]
        assert len(arm["runs"]) == 2
    assert summary["arms"]["real"]["auc"]["mean"] >= 0.9
    assert summary["arms"]["real+synthetic"]["difference_vs_real"]["auc"]["p_value"] is not None
    assert [c["real_train_size"] for c in summary["learning_curve"]] == [6, 6, 16, 16]
    assert summary["leakage_check"]["waived"] is True
    for name in ("report.md", "utility_arms.png", "utility_learning_curve.png"):
        assert (root / "out" / name).stat().st_size > 0
    report = (root / "out" / "report.md").read_text()
    assert "| real | 16 | 0 |" in report
    assert "Skipped on request" in report


def test_auc_agrees_with_scikit_learn_on_the_runs(separable):
    from sklearn.metrics import roc_auc_score

    root, _, _ = separable
    for path in sorted((root / "out" / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        assert run["metrics"]["auc"] == pytest.approx(roc_auc_score(run["targets"], run["predictions"]))


def test_rerun_skips_finished_runs_and_a_fresh_run_gives_the_same_figures(separable, tmp_path):
    root, options, result = separable
    runs = sorted((root / "out" / "runs").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    events = []
    again = run_experiment(
        [root / "real"],
        [root / "synthetic"],
        options,
        out_dir=root / "out",
        waive_leakage_check=True,
        progress=events.append,
    )
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert sum("done earlier" in e.message for e in events) == len(runs)
    assert figures(again.summary) == figures(result.summary)
    fresh = run_experiment(
        [root / "real"], [root / "synthetic"], options, out_dir=tmp_path / "fresh", waive_leakage_check=True
    )
    assert figures(fresh.summary) == figures(result.summary)


def test_another_experiment_in_the_same_folder_is_refused(separable):
    root, _, _ = separable
    other = _options(repeats=2, real_train_sizes=(6, None), synthetic_ratios=(1.0,), seed=5)
    with pytest.raises(UtilityError, match="belongs to another experiment"):
        run_experiment([root / "real"], [root / "synthetic"], other, out_dir=root / "out", waive_leakage_check=True)


def test_shuffled_labels_give_auc_near_one_half(tmp_path):
    write_real(tmp_path / "real", patients=15, controls=15, seed=3, shuffle_labels=True)
    result = run_experiment([tmp_path / "real"], [], _options(repeats=3, test_fraction=0.4), out_dir=tmp_path / "out")
    auc = result.summary["arms"]["real"]["auc"]
    assert 0.25 <= auc["mean"] <= 0.75
    assert auc["ci_low"] < 0.5 < auc["ci_high"]


def test_the_split_never_leaks_subjects(tmp_path):
    # Two scans per subject (a longitudinal manifest): both always land on one side.
    real = tmp_path / "real"
    write_real(real, patients=9, controls=9, seed=4)
    with open(real / "participants.tsv", encoding="utf-8") as fh:
        groups = {r["participant_id"]: r["group"] for r in csv.DictReader(fh, delimiter="\t")}
    rows = ["path,subject_id,group"]
    rng = np.random.default_rng(0)
    for pid, group in groups.items():
        rows.append(f"{pid}.nii.gz,{pid},{group}")
        write_nifti(real / f"{pid}_b.nii.gz", rng.uniform(0, 900, (16, 16, 16)).astype(np.float32), AFFINE)
        rows.append(f"{pid}_b.nii.gz,{pid},{group}")
    (real / "manifest.csv").write_text("\n".join(rows) + "\n")
    write_synthetic(tmp_path / "synthetic", patients=10, controls=10)
    options = _options(repeats=3, real_train_sizes=(4, 8, None), synthetic_ratios=(1.0,))
    prepared = prepare_experiment([real / "manifest.csv"], [tmp_path / "synthetic"], options, waive_leakage_check=True)
    assert len(prepared.real) == 36
    for repeat, test in enumerate(prepared.tests):
        test_subjects = {s.key for s in test}
        # Stratified: the same share of each class is held out.
        assert sum(s.target for s in test) == len(test) / 2 == 3
        for plan in (p for p in prepared.plans if p.repeat == repeat):
            seen = {s.subject for s in plan.train + plan.val}
            assert not seen & test_subjects, plan.key
            train, val = {s.subject for s in plan.train}, {s.subject for s in plan.val}
            assert not train & val
        # Nested learning-curve subsets: a smaller size is inside every larger one.
        sizes = [{s.subject for s in p.train + p.val} for p in prepared.plans if p.repeat == repeat and p.arm == "real"]
        assert sizes[0] <= sizes[1] <= sizes[2]
        assert [len(s) for s in sizes] == [4, 8, 12]
    assert len({tuple(s.key for s in t) for t in prepared.tests}) > 1  # each repeat its own split


def test_regression_reports_mae(tmp_path):
    write_real(tmp_path / "real", patients=10, controls=10, seed=6)
    options = UtilityOptions(label="age", task="regress", repeats=1, **{**FAST, "epochs": 5})
    result = run_experiment([tmp_path / "real"], [], options, out_dir=tmp_path / "out")
    mae = result.summary["arms"]["real"]["mae"]
    assert mae["mean"] > 0
    assert mae["ci_low"] <= mae["mean"] <= mae["ci_high"]
    assert result.summary["metrics"] == ["mae"]


# ---------------------------------------------------------------- statistics against references
def test_auc_and_balanced_accuracy_match_scikit_learn_with_ties():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 40).astype(float)
    scores = np.round(rng.uniform(0, 1, 40) + 0.3 * targets, 1)  # ties on purpose
    assert stats.roc_auc(targets, scores) == pytest.approx(roc_auc_score(targets, scores))
    assert stats.balanced_accuracy(targets, scores) == pytest.approx(balanced_accuracy_score(targets, scores >= 0.5))
    assert np.isnan(stats.roc_auc(np.ones(5), scores[:5]))


def test_paired_difference_of_an_arm_with_itself_is_zero_with_p_one():
    rng = np.random.default_rng(1)
    runs = [stats.RepeatPredictions(rng.integers(0, 2, 20).astype(float), rng.uniform(0, 1, 20)) for _ in range(3)]
    draws = stats.bootstrap_draws([20, 20, 20], n_boot=200, seed=0)
    d = stats.paired_difference("auc", runs, runs, draws)
    assert (d.mean, d.ci_low, d.ci_high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    better = [stats.RepeatPredictions(r.targets, r.targets * 0.8 + 0.1) for r in runs]  # perfect scores
    d = stats.paired_difference("auc", better, runs, draws)
    assert d.ci_low > 0
    assert d.p_value < 0.05


# ---------------------------------------------------------------- bad input, before any training
def _refused(tmp_path, real, synthetic, match, **kwargs):
    options = kwargs.pop("options", None) or _options(repeats=1)
    with pytest.raises(UtilityError, match=match):
        run_experiment(real, synthetic, options, out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_labels_missing_for_some_scans(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6, missing=2)
    _refused(tmp_path, [tmp_path / "real"], [], r"2 of 12 real scans have no 'group' label: s000.nii.gz, s001")


def test_no_label_column(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    options = UtilityOptions(label="diagnosis", positive="ftd", **FAST)
    _refused(tmp_path, [tmp_path / "real"], [], "no real scan has that column", options=options)


def test_one_class_only(tmp_path):
    write_real(tmp_path / "real", patients=0, controls=10)
    options = UtilityOptions(label="group", positive="control", **FAST)
    _refused(tmp_path, [tmp_path / "real"], [], "one class only", options=options)


def test_test_set_too_small(tmp_path):
    write_real(tmp_path / "real", patients=4, controls=10)
    _refused(tmp_path, [tmp_path / "real"], [], r"test set would hold 1 positive subject\(s\)")


def test_no_positive_class_named(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    options = UtilityOptions(label="group", **FAST)
    _refused(tmp_path, [tmp_path / "real"], [], r"--positive: which value .* \(values: control, ftd\)", options=options)


def test_grids_that_differ(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4, shape=(16, 16, 12))
    _refused(
        tmp_path,
        [tmp_path / "real"],
        [tmp_path / "synthetic"],
        "8 volumes lie on another grid",
        waive_leakage_check=True,
    )


def test_synthetic_sidecars_without_the_label(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4, label=None)
    _refused(tmp_path, [tmp_path / "real"], [tmp_path / "synthetic"], "8 of 8 synthetic volumes have no 'group'")


def test_synthetic_volume_without_a_sidecar(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4)
    (tmp_path / "synthetic" / "synthetic_0000.json").unlink()
    _refused(tmp_path, [tmp_path / "real"], [tmp_path / "synthetic"], "synthetic_0000.nii.gz has no sidecar")


def test_too_few_synthetic_volumes_for_the_ratio(tmp_path):
    write_real(tmp_path / "real", patients=7, controls=7)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4)
    _refused(
        tmp_path,
        [tmp_path / "real"],
        [tmp_path / "synthetic"],
        r"20 synthetic volumes are needed \(10 negative\), but only 4",
        options=_options(repeats=1, synthetic_ratios=(2.0,)),
        waive_leakage_check=True,
    )


def test_real_scans_off_standard_space(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    scan = np.random.default_rng(0).uniform(0, 5000, (16, 16, 16)).astype(np.float32)
    write_nifti(tmp_path / "real" / "s003.nii.gz", scan, AFFINE)
    _refused(tmp_path, [tmp_path / "real"], [], "s003.nii.gz is not in standard intensity space")


# ---------------------------------------------------------------- leakage
def _generator(tmp_path, tiny_spec, tiny_weights, *, split_subjects=None, run_dir=None, training=True) -> Path:
    """A real checkpoint whose provenance names a training run; its split.csv lists ``split_subjects``."""
    run = run_dir or tmp_path / "gen-run"
    if split_subjects is not None:
        run.mkdir(parents=True, exist_ok=True)
        rows = ["split,path,subject_id,group,sha256"]
        rows += [f"train,/data/train/{s}.nii.gz,,ftd,{'1' * 64}" for s in split_subjects]
        (run / "split.csv").write_text("\n".join(rows) + "\n")
    provenance = {"source": "brainsynth-cli train", "training": {"run_dir": str(run)}} if training else {}
    path = tmp_path / "generator.safetensors"
    save_checkpoint(path, spec=tiny_spec, weights=tiny_weights, provenance=provenance)
    return path


def _made_by(folder: Path, checkpoint: Path) -> None:
    """Point every synthetic sidecar in ``folder`` at ``checkpoint`` (its SHA-256)."""
    for sidecar in folder.glob("*.json"):
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "checkpoint_sha256": sha256_file(checkpoint)}))


def _leak_setup(tmp_path, checkpoint: Path | None):
    write_real(tmp_path / "real", patients=6, controls=6)
    sha = sha256_file(checkpoint) if checkpoint else "f" * 64
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4, checkpoint_sha256=sha)
    options = _options(repeats=2)
    prepared = prepare_experiment([tmp_path / "real"], [], options)
    test = sorted({s.key for t in prepared.tests for s in t})
    train_only = sorted({f"s{i:03d}" for i in range(12)} - set(test))
    return options, test, train_only


def test_generator_trained_on_a_test_subject_is_refused(tmp_path, tiny_spec, tiny_weights):
    options, test, _ = _leak_setup(tmp_path, None)
    checkpoint = _generator(tmp_path, tiny_spec, tiny_weights, split_subjects=[test[0]])
    _made_by(tmp_path / "synthetic", checkpoint)
    _refused(
        tmp_path,
        [tmp_path / "real"],
        [tmp_path / "synthetic"],
        rf"generator.safetensors was trained on 1 subject\(s\) of the real test set \({test[0]} ",
        options=options,
        checkpoints=[checkpoint],
    )


def test_generator_trained_on_other_subjects_is_checked_and_recorded(tmp_path, tiny_spec, tiny_weights):
    _, _, train_only = _leak_setup(tmp_path, None)
    checkpoint = _generator(tmp_path, tiny_spec, tiny_weights, split_subjects=train_only)
    _made_by(tmp_path / "synthetic", checkpoint)
    prepared = prepare_experiment(
        [tmp_path / "real"], [tmp_path / "synthetic"], _options(repeats=2), checkpoints=[checkpoint]
    )
    assert prepared.leakage.checked == {"generator.safetensors": str(tmp_path / "gen-run" / "split.csv")}


def test_generator_not_given_or_its_split_unreachable(tmp_path, tiny_spec, tiny_weights):
    options, _, _ = _leak_setup(tmp_path, None)
    real, synthetic = [tmp_path / "real"], [tmp_path / "synthetic"]
    _refused(tmp_path, real, synthetic, r"pass that file with --checkpoint", options=options)
    checkpoint = _generator(tmp_path, tiny_spec, tiny_weights, run_dir=tmp_path / "elsewhere")
    _made_by(tmp_path / "synthetic", checkpoint)
    _refused(
        tmp_path, real, synthetic, r"split.csv\) is not reachable from here", options=options, checkpoints=[checkpoint]
    )


def test_a_checkpoint_copied_out_of_its_run_is_checked_by_the_split_beside_it(tmp_path, tiny_spec, tiny_weights):
    """As the bundled demo model is: its run folder is gone, ``NAME.split.csv`` came along."""
    options, test, train_only = _leak_setup(tmp_path, None)
    checkpoint = _generator(tmp_path, tiny_spec, tiny_weights, run_dir=tmp_path / "gone")
    _made_by(tmp_path / "synthetic", checkpoint)
    beside = tmp_path / "generator.split.csv"
    beside.write_text("split,path,subject_id,group,sha256\n" + f"train,/data/{test[0]}.nii.gz,,ftd,{'1' * 64}\n")
    real, synthetic = [tmp_path / "real"], [tmp_path / "synthetic"]
    _refused(tmp_path, real, synthetic, r"was trained on 1 subject\(s\) of the real test set", options=options,
             checkpoints=[checkpoint])  # fmt: skip
    beside.write_text(
        "split,path,subject_id,group,sha256\n"
        + "".join(f"train,/data/{s}.nii.gz,,ftd,{'1' * 64}\n" for s in train_only)
    )
    prepared = prepare_experiment(real, synthetic, options, checkpoints=[checkpoint])
    assert prepared.leakage.checked == {"generator.safetensors": str(beside)}


# ---------------------------------------------------------------- the command line
def test_cli_error_is_one_line_before_training(tmp_path, capsys):
    write_real(tmp_path / "real", patients=0, controls=10)
    code = main(
        ["utility", "--real", str(tmp_path / "real"), "--label", "group", "--positive", "control", "--out",
         str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("brainsynth-cli utility: error: the real scans hold one class only")
    assert not (tmp_path / "out" / "runs").exists()


def test_cli_runs_and_prints_the_arms(tmp_path, capsys):
    write_real(tmp_path / "real", patients=8, controls=8, seed=7)
    write_synthetic(tmp_path / "synthetic", patients=8, controls=8)
    args = ["utility", "--real", str(tmp_path / "real"), "--synthetic", str(tmp_path / "synthetic")]
    args += ["--label", "group", "--positive", "ftd", "--repeats", "1", "--epochs", "3", "--width", "4"]
    args += ["--batch-size", "4", "--bootstrap", "50", "--device", "cpu", "--no-leakage-check"]
    args += ["--real-train-sizes", "4,all", "--synthetic-ratio", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("real: auc ")
    assert "real+synthetic ×1: auc" in out
    assert "synthetic: auc" in out
    summary = json.loads((tmp_path / "out" / "utility.json").read_text())
    assert summary["parameters"]["real_train_sizes"] == [4, 12]


def test_prepare_carries_participants_tsv(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    write_phantom(source / "p01.nii.gz")
    write_phantom(source / "p02.nii.gz")
    (source / "participants.tsv").write_text("participant_id\tgroup\nother\tcontrol\np01\tftd\np02\tcontrol\n")
    assert main(["prepare", "--preset", "tiny", str(source), "--out", str(tmp_path / "prepared")]) == 0
    carried = (tmp_path / "prepared" / "participants.tsv").read_text()
    assert carried == "participant_id\tgroup\np01\tftd\np02\tcontrol\n"


def test_one_repeat_per_array_task_then_one_summary(tmp_path):
    write_real(tmp_path / "real", patients=8, controls=8, seed=8)
    options = _options(repeats=2, epochs=2)
    for repeat in (1, 0):  # array tasks finish in any order
        part = run_experiment([tmp_path / "real"], [], options, out_dir=tmp_path / "out", only_repeat=repeat)
        assert part.summary == {}
        assert not (tmp_path / "out" / "utility.json").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == [
        "repeat0_n12_real.json",
        "repeat1_n12_real.json",
    ]
    events = []
    merged = run_experiment([tmp_path / "real"], [], options, out_dir=tmp_path / "out", progress=events.append)
    assert sum("done earlier" in e.message for e in events) == 2
    assert len(merged.summary["arms"]["real"]["runs"]) == 2
    with pytest.raises(UtilityError, match="--only-repeat must be from 0 to 1"):
        run_experiment([tmp_path / "real"], [], options, out_dir=tmp_path / "out", only_repeat=2)


# ---------------------------------------------------------------- real and synthetic encoded alike
# Issue 18's smoke run gave a synthetic-only AUC of 0.000. These tests would catch the bugs that
# could cause it: labels encoded differently on the two sides, intensities on other scales,
# volumes in other orientations. Synthetic volumes go through the real export path here.
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    write_real(root / "real", patients=10, controls=10, seed=11)
    write_exported(root / "synthetic", patients=10, controls=10, seed=12)
    runs = {}
    for positive in ("ftd", "control"):
        options = UtilityOptions(label="group", positive=positive, repeats=1, **FAST)
        runs[positive] = run_experiment(
            [root / "real"], [root / "synthetic"], options, out_dir=root / positive, waive_leakage_check=True
        ).summary
    return root, runs


def _synthetic_run(root: Path, positive: str) -> dict:
    return json.loads((root / positive / "runs" / "repeat0_synthetic.json").read_text())


def test_synthetic_only_arm_on_exported_volumes_reaches_auc_near_one(exported):
    root, runs = exported
    summary = runs["ftd"]
    assert summary["parameters"]["synthetic_labels"] == {"control": 10, "ftd": 10}
    assert summary["arms"]["synthetic"]["auc"]["mean"] >= 0.9
    assert summary["arms"]["real"]["auc"]["mean"] >= 0.9
    run = _synthetic_run(root, "ftd")
    # Targets are the real test subjects' groups, read from participants.tsv.
    with open(root / "real" / "participants.tsv", encoding="utf-8") as fh:
        truth = {r["participant_id"]: r["group"] for r in csv.DictReader(fh, delimiter="\t")}
    assert run["targets"] == [float(truth[s] == "ftd") for s in run["test_subjects"]]
    # The real-only model recognises the synthetic volumes' conditions (the generator's labels hold).
    assert summary["label_fidelity"]["auc"]["mean"] >= 0.9
    report = (root / "ftd" / "report.md").read_text()
    assert "## Do the synthetic volumes carry the label?" in report
    assert "hardly show the label" not in report


def test_swapping_the_positive_class_swaps_what_the_scores_mean(exported):
    root, runs = exported
    # Trained and tested with control as the positive class: as good a classifier...
    assert runs["control"]["arms"]["synthetic"]["auc"]["mean"] >= 0.9
    ftd, control = _synthetic_run(root, "ftd"), _synthetic_run(root, "control")
    assert ftd["test_subjects"] == control["test_subjects"]
    assert control["targets"] == [1.0 - t for t in ftd["targets"]]
    # ...whose scores, read against the FTD labels, give 1 - AUC: they rank controls first.
    assert stats.roc_auc(np.array(ftd["targets"]), np.array(control["predictions"])) == pytest.approx(
        1.0 - control["metrics"]["auc"]
    )
    assert stats.roc_auc(np.array(ftd["targets"]), np.array(control["predictions"])) <= 0.1


def test_real_and_exported_volumes_reach_the_classifier_on_one_scale_and_orientation(tmp_path):
    from engine.utility.data import LabelledScan, check_intensity_scales, load_arrays

    groups, arrays = exported_arrays(patients=2, controls=2, seed=3)
    paths = write_exported(tmp_path / "synthetic", patients=2, controls=2, seed=3)
    # The same volumes as "prepared real scans", stored in another orientation (LPS on disk).
    real = [write_nifti(tmp_path / f"real{i}.nii.gz", array, AFFINE, axcodes="LPS") for i, array in enumerate(arrays)]
    scans = [LabelledScan(path=p, subject=p.name, label=g, kind="real") for p, g in zip(real, groups, strict=True)]
    scans += [
        LabelledScan(path=p, subject=p.name, label=g, kind="synthetic") for p, g in zip(paths, groups, strict=True)
    ]
    assert load_arrays(scans) == (16, 16, 16)
    for r, s, array in zip(scans[:4], scans[4:], arrays, strict=True):
        np.testing.assert_allclose(r.array, array / 1000.0, atol=1e-6)
        np.testing.assert_allclose(s.array, r.array, atol=1e-5)  # model space and back: rounding only
    levels = check_intensity_scales(scans)
    assert levels["real"] == pytest.approx(levels["synthetic"], rel=1e-4)
    assert 0.5 < levels["real"] <= 1.0


def test_synthetic_volumes_on_another_intensity_scale_are_refused(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4, gain=0.001)  # [0, 1], not [0, 1000]
    _refused(
        tmp_path,
        [tmp_path / "real"],
        [tmp_path / "synthetic"],
        r"synthetic volumes are on another intensity scale than the real scans \(.*median 0.000803 vs 0.806 of the",
        waive_leakage_check=True,
    )


@pytest.mark.parametrize(
    ("spelling", "match"),
    [
        ({"ftd": "FTD"}, r"spelt differently from the real labels \('FTD' for 'ftd'\)"),
        ({"ftd": " Ftd", "control": "Control"}, r"\('Control' for 'control', 'Ftd' for 'ftd'\)"),
        ({"ftd": "bvftd"}, r"4 of 8 synthetic volumes have a 'group' that no real scan has \(synthetic: 'bvftd' \(4\)"),
        ({"ftd": "control"}, r"--positive 'ftd': no synthetic volume has that 'group' \(synthetic: 'control' \(8\)\)"),
    ],
)
def test_synthetic_labels_must_spell_the_real_vocabulary(tmp_path, spelling, match):
    write_real(tmp_path / "real", patients=6, controls=6)
    write_synthetic(tmp_path / "synthetic", patients=4, controls=4, spelling=spelling)
    _refused(tmp_path, [tmp_path / "real"], [tmp_path / "synthetic"], match, waive_leakage_check=True)


def test_positive_spelt_otherwise_than_the_real_labels_names_their_spelling(tmp_path):
    write_real(tmp_path / "real", patients=6, controls=6)
    options = UtilityOptions(label="group", positive="FTD", **FAST)
    _refused(
        tmp_path,
        [tmp_path / "real"],
        [],
        r"no real scan has that 'group' .*the real scans spell it 'ftd'",
        options=options,
    )


def test_a_generator_with_swapped_conditions_is_exposed_by_the_label_check(tmp_path):
    # Synthetic patients labelled control and controls labelled ftd: a generator that swapped
    # its categories. The synthetic-only model then ranks real subjects backwards, and the
    # real-only model scoring the synthetic volumes says why.
    write_real(tmp_path / "real", patients=8, controls=8, seed=13)
    write_synthetic(
        tmp_path / "synthetic", patients=8, controls=8, seed=14, spelling={"ftd": "control", "control": "ftd"}
    )
    options = _options(repeats=1, real_train_sizes=(None,), synthetic_ratios=(0.5,))
    result = run_experiment(
        [tmp_path / "real"], [tmp_path / "synthetic"], options, out_dir=tmp_path / "out", waive_leakage_check=True
    )
    summary = result.summary
    assert summary["arms"]["real"]["auc"]["mean"] >= 0.9
    assert summary["arms"]["synthetic"]["auc"]["mean"] <= 0.1
    assert summary["label_fidelity"]["auc"]["mean"] <= 0.1
    assert len(summary["label_fidelity"]["auc"]["per_repeat"]) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "hardly show the label as the real scans show it" in report


def test_worth_in_real_subjects_reads_only_where_more_real_subjects_did_better():
    """A learning curve that dips (noise on small sets) must not turn a worse augmented figure
    into 'worth more real subjects' (the demo run's real-only AUC: 0.85 at 4 and 8, 0.65 at 16)."""
    from engine.utility.experiment import _add_worth

    def point(arm, n, auc):
        return {"arm": arm, "real_train_size": n, "auc": {"mean": auc}}

    curve = [
        point("real", 4, 0.6),
        point("real", 8, 0.8),
        point("real", 16, 0.65),
        point("real+synthetic", 4, 0.7),  # between the real figures at 4 and 8: worth 6
        point("real+synthetic", 8, 0.7),  # below real at 8, matched only on the dip: no worth
    ]
    _add_worth(curve, "auc")
    assert curve[3]["equivalent_real_size"] == pytest.approx(6.0)
    assert curve[4]["equivalent_real_size"] == pytest.approx(6.0)  # the rising segment, not 14 on the dip
    lower_better = [{"arm": c["arm"], "real_train_size": c["real_train_size"], "mae": c["auc"]} for c in curve]
    _add_worth(lower_better, "mae")  # for MAE, falling is better: only the 8 -> 16 segment counts
    assert lower_better[3]["equivalent_real_size"] == pytest.approx(16 - 8 * 0.05 / 0.15)
