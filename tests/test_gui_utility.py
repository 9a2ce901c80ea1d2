"""Tools ▸ Augmentation utility…: the experiment in the background, cancel, and the report viewer."""

from __future__ import annotations

import pytest

from brainsynth_gui.utility_dialog import UtilityDialog
from tests.helpers_qt import wait_until
from tests.helpers_utility import figures, write_real, write_synthetic

SMALL = {"width": 4, "batch_size": 4, "bootstrap": 50, "device": "cpu"}


@pytest.fixture
def data(tmp_path):
    write_real(tmp_path / "real", patients=8, controls=8, seed=11)
    write_synthetic(tmp_path / "synthetic", patients=8, controls=8)
    return tmp_path


def _dialog(qtbot, data) -> UtilityDialog:
    dialog = UtilityDialog(None, quiet=True)
    qtbot.addWidget(dialog)  # closed and deleted at teardown, not at interpreter exit
    dialog.real_field.setText(str(data / "real"))
    dialog.synthetic_field.setText(str(data / "synthetic"))
    dialog.out_field.setText(str(data / "out"))
    dialog.skip_leakage.setChecked(True)
    dialog.repeats.setValue(1)
    return dialog


def test_runs_in_the_background_and_shows_the_figures_and_plots(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.epochs.setValue(3)
    assert dialog.run(overrides=SMALL)
    assert dialog.running
    wait_until(lambda: not dialog.running, timeout=120)
    assert not dialog.errors, dialog.errors
    arms = [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())]
    assert arms == ["real", "real+synthetic ×1", "synthetic"]
    assert dialog.table.item(0, 3).text() == _cell(dialog.summary["arms"]["real"]["auc"])
    assert not dialog.plots.pixmap().isNull()
    assert any(e.stage == "training" for e in dialog.events)
    dialog.close()

    viewer = UtilityDialog(None, quiet=True)  # a second dialog only views the folder
    qtbot.addWidget(viewer)
    assert viewer.open_report(data / "out")
    assert viewer.table.rowCount() == 3
    assert viewer.summary["arms"]["real"]["auc"] == dialog.summary["arms"]["real"]["auc"]
    viewer.close()


def _cell(entry: dict) -> str:
    return f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def test_cancel_stops_within_a_run_and_keeps_the_finished_ones(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.epochs.setValue(2000)  # far longer than the test waits
    assert dialog.run(overrides=SMALL)
    wait_until(lambda: any(e.stage == "training" for e in dialog.events), timeout=60)
    dialog.progress_dialog.canceled.emit()  # the user presses Cancel
    wait_until(lambda: not dialog.running, timeout=60)
    assert dialog.status.text().startswith("Cancelled")
    assert not dialog.errors
    assert dialog.summary is None
    assert not list((data / "out" / "runs").glob("*.json"))  # the run in progress left nothing
    dialog.close()


def test_a_bad_input_is_one_message_and_a_missing_report_too(qtbot, data):
    dialog = _dialog(qtbot, data)
    dialog.positive_field.setText("als")
    assert dialog.run(overrides=SMALL)
    wait_until(lambda: not dialog.running, timeout=60)
    # The engine's message, in the dialog's own words: its field, not the CLI's flag.
    assert dialog.errors[-1].startswith("“Positive class” 'als': no real scan has that 'group'")
    assert "--" not in dialog.errors[-1]
    assert not dialog.open_report(data / "nowhere")
    assert "holds no utility.json" in dialog.errors[-1]
    dialog.real_field.clear()
    dialog.run_button.click()  # the button, as a user presses it
    assert dialog.errors[-1] == "choose the real scans and an output folder"
    assert not dialog.running
    dialog.close()


def test_the_tools_menu_opens_it(qapp, tmp_path):
    from brainsynth_gui.main_window import MainWindow
    from brainsynth_gui.recent_files import RecentFiles

    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        tools = next(a.menu() for a in window.menuBar().actions() if a.text() == "T&ools")
        assert "&Augmentation utility…" in [a.text() for a in tools.actions()]
        dialog = window.utility_dialog()
        assert isinstance(dialog, UtilityDialog)
        dialog.close()
    finally:
        window.close()


# ---------------------------------------------------------------- the session's own sets
def _write_split(run, rows) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = ["split,path,subject_id,group,sha256", *(f"train,/data/{s}.nii.gz,,ftd,{'1' * 64}" for s in rows)]
    (run / "split.csv").write_text("\n".join(lines) + "\n")


def test_the_session_volumes_and_scans_give_the_figures_of_a_cli_run_on_the_same_files(qapp, tmp_path):
    import json
    from dataclasses import replace

    from brainsynth_gui.generation_request import GenerationChoices
    from brainsynth_gui.main_window import MainWindow
    from brainsynth_gui.recent_files import RecentFiles
    from engine.checkpoint import save_checkpoint
    from engine.conditions import ConditionSpec, Covariate
    from engine.specs import PRESETS
    from training_cli.main import main

    spec = replace(
        PRESETS["tiny"], conditions=ConditionSpec((Covariate("group", "categorical", categories=("control", "ftd")),))
    )
    # Tiny phantom "prepared" scans on the model's grid, labelled by a participants.tsv beside them.
    scans = tmp_path / "scans"
    write_real(scans, patients=8, controls=8, seed=11, shape=spec.grid.shape, affine=spec.grid.affine)
    # The generator's training run trained on other subjects: the leakage check passes and is recorded.
    run = tmp_path / "gen-run"
    _write_split(run, ["other000", "other001"])
    checkpoint = save_checkpoint(
        tmp_path / "conditional.safetensors",
        spec=spec,
        weights=spec.build_random_model(seed=0).state_dict(),
        provenance={"source": "brainsynth-cli train", "training": {"run_dir": str(run)}},
    )
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        assert window.open_checkpoint(checkpoint, wait=True)
        assert window.open_scans([scans])
        wait_until(lambda: not window.busy)
        base = GenerationChoices(device="cpu", sampler="ddim", steps=2, count=6, batch_size=6, trajectory_frames=0)
        assert window.start_generation(replace(base, conditions=(("group", "ftd"),)))
        wait_until(lambda: not window.busy, timeout=120)
        assert window.start_generation(replace(base, seed=6, conditions=(("group", "control"),)))
        wait_until(lambda: not window.busy, timeout=120)
        assert not window.errors, window.errors

        dialog = window.utility_dialog()
        assert dialog.session_real.isChecked()  # the session's sets are chosen when it has them
        assert dialog.session_synthetic.isChecked()
        assert not dialog.real_field.isEnabled()
        assert "(16)" in dialog.session_real.text()
        assert "(12)" in dialog.session_synthetic.text()
        out = tmp_path / "out"
        dialog.out_field.setText(str(out))
        dialog.repeats.setValue(1)
        dialog.epochs.setValue(2)
        assert not dialog.skip_leakage.isChecked()
        assert dialog.run(overrides=SMALL)
        wait_until(lambda: not dialog.running, timeout=180)
        assert not dialog.errors, dialog.errors
        assert [e.stage for e in dialog.events][:2] == ["exporting", "exporting"]
        summary = dialog.summary
        assert [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())] == [
            "real",
            "real+synthetic ×1",
            "synthetic",
        ]
        # The synthetic set is the session's volumes, exported with their sidecars into the output folder.
        (folder,) = out.glob("session-volumes-*")
        assert summary["parameters"]["sources"]["synthetic"] == [str(folder)]
        assert summary["parameters"]["sources"]["real"] == [str(p) for p in sorted(scans.glob("*.nii.gz"))]
        assert summary["parameters"]["synthetic_labels"] == {"ftd": 6, "control": 6}
        assert summary["parameters"]["real_labels"] == {"ftd": 8, "control": 8}
        sidecars = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        assert [s["conditions"]["group"] for s in sidecars] == ["ftd"] * 6 + ["control"] * 6
        assert {s["checkpoint_sha256"] for s in sidecars} == {window.checkpoint.sha256}
        # The leakage check ran on the session's checkpoint and its run's split.
        assert summary["leakage_check"] == {
            "checked": {"conditional.safetensors": str(run / "split.csv")},
            "warnings": [],
            "waived": False,
        }

        # The command line on the same files gives the same figures.
        cli_out = tmp_path / "cli"
        args = ["utility", "--real", str(scans), "--synthetic", str(folder), "--checkpoint", str(checkpoint)]
        args += ["--label", "group", "--positive", "ftd", "--repeats", "1", "--epochs", "2", "--width", "4"]
        args += ["--batch-size", "4", "--bootstrap", "50", "--device", "cpu", "--out", str(cli_out)]
        assert main(args) == 0
        cli = json.loads((cli_out / "utility.json").read_text())
        assert cli["parameters"]["fingerprint"] == summary["parameters"]["fingerprint"]
        assert figures(cli) == figures(summary)

        # Running again reuses the exported folder and the finished runs.
        dialog.events = []
        assert dialog.run(overrides=SMALL)
        wait_until(lambda: not dialog.running, timeout=60)
        assert not dialog.errors, dialog.errors
        assert list(out.glob("session-volumes-*")) == [folder]
        assert sum("done earlier" in e.message for e in dialog.events) == 3

        # A generator that trained on the held-out subjects is refused, as on the command line.
        _write_split(run, sorted(p.name.split(".")[0] for p in scans.glob("*.nii.gz")))
        assert dialog.run(overrides=SMALL)
        wait_until(lambda: not dialog.running, timeout=60)
        assert "conditional.safetensors was trained on" in dialog.errors[-1]
        assert "would leak the test subjects" in dialog.errors[-1]
        dialog.close()
    finally:
        window.close()


def test_what_the_session_lacks_is_one_message_before_anything_runs(qtbot, tmp_path):
    import numpy as np

    from brainsynth_gui.utility_session import SessionVolume, UtilitySession
    from engine.specs import PRESETS

    spec = PRESETS["tiny"]
    unlabelled = tmp_path / "unlabelled"
    write_real(unlabelled, patients=2, controls=2)
    (unlabelled / "participants.tsv").unlink()
    labelled = write_real(tmp_path / "labelled", patients=2, controls=2, missing=1)

    def dialog_for(session: UtilitySession) -> UtilityDialog:
        dialog = UtilityDialog(None, quiet=True, session=session)
        qtbot.addWidget(dialog)
        dialog.out_field.setText(str(tmp_path / "out"))
        dialog.session_real.setChecked(True)
        dialog.session_synthetic.setChecked(True)
        return dialog

    empty = dialog_for(UtilitySession())
    assert not empty.run()
    assert empty.errors[-1].startswith("no real scans are open in this session")
    empty.session_real.setChecked(False)
    empty.real_field.setText(str(tmp_path / "labelled"))
    assert not empty.run()
    assert empty.errors[-1].startswith("this session has no generated volumes: generate some")

    volumes = tuple(
        SessionVolume(n, np.zeros(spec.grid.shape, np.float32), {"seed": n, "conditions": c}, spec)
        for n, c in ((1, {"group": "ftd"}), (2, {}), (3, {"age": 60.0}))
    )
    dialog = dialog_for(UtilitySession(volumes=volumes, scans=tuple(sorted(unlabelled.glob("*.nii.gz")))))
    assert not dialog.run()
    assert dialog.errors[-1] == (
        "none of the 4 real scans open in this session has a 'group' label: put a participants.tsv "
        "(participant_id and group) beside them, as for training"
    )
    dialog = dialog_for(UtilitySession(volumes=volumes, scans=tuple(labelled)))
    assert not dialog.run()
    assert dialog.errors[-1].startswith("1 of 4 real scans open in this session have no 'group' label: s000.nii.gz;")
    dialog.session_real.setChecked(False)
    dialog.real_field.setText(str(tmp_path / "labelled"))
    assert not dialog.run()
    assert dialog.errors[-1].startswith("2 of 3 generated volumes have no 'group' condition (#2, #3): generate them")
    assert not dialog.running
    assert not (tmp_path / "out").exists()  # nothing was written


def test_every_flag_the_experiment_names_reads_as_the_dialog_names_it():
    import re
    from pathlib import Path

    from brainsynth_gui.utility_dialog import in_app_terms

    engine = "".join(p.read_text() for p in sorted(Path("engine/utility").glob("*.py")))
    flags = set(re.findall(r"--[a-z][a-z-]*", engine))
    assert {"--positive", "--label", "--condition", "--out"} <= flags
    # What the dialog itself cannot set (spin boxes and fixed values) never reaches it.
    unreachable = {"--steps", "--batch-size", "--width", "--bootstrap", "--val-fraction", "--synthetic-ratio",
                   "--real-train-sizes", "--device", "--only-repeat"}  # fmt: skip
    for flag in sorted(flags - unreachable):
        said = in_app_terms(f"{flag} x=1: try again")
        assert "--" not in said, (flag, said)
    assert in_app_terms("generate some with --condition group=ftd") == (
        "generate some with group=ftd chosen in the Generate panel"
    )


def test_a_cancelled_session_export_keeps_none_of_its_files(tmp_path):
    """Volumes of two specs are written by two batches: a cancel in the second removes the first's too."""
    import dataclasses

    import numpy as np

    from brainsynth_gui.utility_session import SessionVolume, UtilitySession
    from engine.errors import CancelledError
    from engine.specs import PRESETS

    spec = PRESETS["tiny"]
    other = dataclasses.replace(spec)  # equal, but another object: a second batch
    rng = np.random.default_rng(0)
    volumes = tuple(
        SessionVolume(number=i, array=rng.random(spec.grid.shape, dtype=np.float32), provenance={"seed": i}, spec=s)
        for i, s in enumerate((spec, spec, other, other), start=1)
    )
    session = UtilitySession(volumes=volumes)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) >= 3  # the first batch is complete by then

    with pytest.raises(CancelledError):
        session.export_volumes(tmp_path, cancel=cancel)
    assert len(asked) == 3
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    folder = session.export_volumes(tmp_path)  # and a run without a cancel writes them all
    assert len(list(folder.glob("*.nii.gz"))) == 4
