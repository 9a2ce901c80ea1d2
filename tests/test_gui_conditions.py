"""The Generate panel builds one control per covariate of the loaded model, and guidance."""

from __future__ import annotations

from dataclasses import replace

from engine.checkpoint import Checkpoint
from engine.conditions import ConditionSpec, Covariate
from engine.specs import PRESETS

CONDITIONS = ConditionSpec(
    (
        Covariate("age", "continuous", minimum=45.0, maximum=85.0),
        Covariate("sex", "categorical", categories=("F", "M")),
        Covariate("group", "categorical", categories=("control", "ftd")),
    )
)


def test_the_panel_builds_controls_from_the_model(qtbot):
    from brainsynth_gui.generation_panel import CategoricalCovariate, ContinuousCovariate, GenerationPanel

    spec = replace(PRESETS["tiny"], conditions=CONDITIONS)
    panel = GenerationPanel(["cpu"])
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.conditions_box.isVisible()  # no model yet
    panel.set_model(spec)
    assert panel.conditions_box.isVisible()
    age, sex, group = (panel.covariate_controls[n] for n in ("age", "sex", "group"))
    assert isinstance(age, ContinuousCovariate)
    assert isinstance(sex, CategoricalCovariate)
    assert (age.field.minimum(), age.field.maximum()) == (45.0, 85.0)  # the training range
    assert [sex.itemText(i) for i in range(sex.count())] == ["any", "F", "M"]
    # Everything starts at "any": the whole population, as the command line without --condition.
    checkpoint = Checkpoint(spec=spec, weights=spec.build_model().state_dict())
    request = panel.choices().to_request(checkpoint)
    assert request.conditions == ({},)
    assert request.guidance is None

    age.any.setChecked(False)
    age.slider.setValue(age.slider.maximum())  # dragging the slider moves the field
    assert age.field.value() == 85.0
    age.field.setValue(70.0)
    assert age.slider.value() == 625
    group.setCurrentIndex(group.findData("ftd"))
    panel.guidance.setValue(2.0)
    choices = panel.choices()
    assert dict(choices.conditions) == {"age": 70.0, "sex": None, "group": "ftd"}
    request = choices.to_request(checkpoint)
    assert request.conditions == ({"age": 70.0, "group": "ftd"},)
    assert request.guidance == 2.0
    assert request.provenance(request.seeds[0])["conditions"] == {"age": 70.0, "group": "ftd"}

    # The choices come back into the controls (the command line uses this).
    panel.set_model(spec)
    panel.set_choices(choices)
    assert dict(panel.choices().conditions) == dict(choices.conditions)
    assert panel.guidance.value() == 2.0

    # An unconditional model: no controls, and its request has no conditions.
    panel.set_model(PRESETS["tiny"])
    assert not panel.conditions_box.isVisible()
    assert panel.covariate_controls == {}
    plain = Checkpoint(spec=PRESETS["tiny"], weights=PRESETS["tiny"].build_model().state_dict())
    assert panel.choices().to_request(plain).conditions == ()


def test_the_volume_list_shows_conditions():
    import numpy as np

    from brainsynth_gui.volume_library import SyntheticEntry, describe_conditions
    from engine.generation import GeneratedVolume
    from engine.samplers import SamplerSettings

    base = {"seed": 3, "sampler": "ddim", "steps": 5, "weights": "ema"}
    conditional = {**base, "conditions": {"age": 70.0, "group": "ftd"}, "guidance": 2.0}
    volume = GeneratedVolume(0, 3, SamplerSettings("ddim", 5), np.zeros((2, 2, 2), np.float32), provenance=conditional)
    assert "age 70, group ftd, guidance 2" in SyntheticEntry(1, volume, PRESETS["tiny"]).label
    assert describe_conditions({**base, "conditions": {}, "guidance": None}) == "  ·  any condition"
    assert describe_conditions(base) == ""


def test_allow_extrapolation_in_the_panel_widens_the_range_and_is_recorded(qtbot):
    import pytest

    from brainsynth_gui.generation_panel import GenerationPanel
    from brainsynth_gui.generation_request import GenerationChoices
    from engine.errors import BrainSynthError

    spec = replace(PRESETS["tiny"], conditions=CONDITIONS)
    checkpoint = Checkpoint(spec=spec, weights=spec.build_model().state_dict())
    panel = GenerationPanel(["cpu"])
    qtbot.addWidget(panel)
    panel.show()
    panel.set_model(spec)
    age = panel.covariate_controls["age"]
    qtbot.waitUntil(panel.extrapolation.isVisible)  # rows added to a shown form appear on the next event
    assert not panel.extrapolation.isChecked()
    age.any.setChecked(False)
    age.field.setValue(95.0)  # off: the field keeps to the training range
    assert age.field.value() == 85.0
    request = panel.choices().to_request(checkpoint)
    assert request.provenance(request.seeds[0])["allow_extrapolation"] is False

    panel.extrapolation.setChecked(True)  # on: one range's width beyond either end
    assert (age.field.minimum(), age.field.maximum()) == (5.0, 125.0)
    age.field.setValue(95.0)
    assert age.field.value() == 95.0
    assert age.slider.value() == age.STEPS  # the slider stays on the training range
    choices = panel.choices()
    assert choices.allow_extrapolation
    request = choices.to_request(checkpoint)
    assert request.conditions == ({"age": 95.0},)
    provenance = request.provenance(request.seeds[0])
    assert provenance["allow_extrapolation"] is True
    assert provenance["extrapolated"] == ["age"]

    # The same value without the switch is refused, with the range.
    with pytest.raises(BrainSynthError, match="age=95 is outside the training range 45 to 85"):
        replace(choices, allow_extrapolation=False).to_request(checkpoint)
    # Choices come back into the panel with the switch first, so the value is not clamped.
    panel.set_model(spec)
    assert not panel.extrapolation.isChecked()
    panel.set_choices(choices)
    assert panel.extrapolation.isChecked()
    assert panel.covariate_controls["age"].field.value() == 95.0
    panel.extrapolation.setChecked(False)  # off again: back inside the range
    assert panel.covariate_controls["age"].field.value() == 85.0
    assert GenerationChoices().allow_extrapolation is False

    # A model with categorical covariates only has nothing to extrapolate: no switch.
    categorical = ConditionSpec((Covariate("group", "categorical", categories=("control", "ftd")),))
    panel.set_model(replace(PRESETS["tiny"], conditions=categorical))
    qtbot.waitUntil(lambda: "group" in panel.covariate_controls and panel.covariate_controls["group"].isVisible())
    assert not panel.extrapolation.isVisible()


def test_show_a_real_scan_of_the_same_group(qapp, tmp_path):
    from brainsynth_gui.generation_request import GenerationChoices
    from brainsynth_gui.main_window import MainWindow
    from brainsynth_gui.recent_files import RecentFiles
    from brainsynth_gui.scan_labels import ScanLabels
    from engine.checkpoint import save_checkpoint
    from tests.helpers_qt import wait_until
    from tests.helpers_volumes import write_phantom

    spec = replace(PRESETS["tiny"], conditions=CONDITIONS)
    checkpoint = tmp_path / "conditional.safetensors"
    save_checkpoint(checkpoint, spec=spec, weights=spec.build_model().state_dict(), provenance={"source": "test"})
    scans = tmp_path / "scans"
    scans.mkdir()
    paths = [write_phantom(scans / f"sub-0{i}_T1w.nii.gz") for i in range(1, 6)]
    # As training reads it: participant_id = the sub-<label> the file names start with; sub-05 has no row.
    (scans / "participants.tsv").write_text(
        "participant_id\tage\tgroup\nsub-01\t71\tcontrol\nsub-02\t50\tFTD\nsub-03\t66\tftd\nsub-04\tn/a\tftd\n"
    )
    window = MainWindow(recent=RecentFiles(tmp_path / "recent.json"), quiet=True)
    try:
        assert window.open_checkpoint(checkpoint, wait=True)
        assert window.open_scans([scans])
        wait_until(lambda: not window.busy)
        base = GenerationChoices(device="cpu", sampler="ddim", steps=2, count=1, trajectory_frames=0)
        conditions = (("age", 70.0), ("sex", None), ("group", "ftd"))
        assert window.start_generation(replace(base, conditions=conditions))
        wait_until(lambda: not window.busy)
        assert window.start_generation(replace(base, conditions=(("sex", "M"), ("group", "control"))))
        wait_until(lambda: not window.busy)
        assert not window.errors, window.errors
        window.state.display.set_compare("synthetic only")

        window.volume_list.setCurrentRow(0)  # age 70, ftd: sub-03 (66) beats sub-02 (50) and sub-04 (no age)
        match = window.show_matching_scan()
        assert match.path == paths[2]
        assert window.scan_list.currentRow() == 2
        assert window.state.display.compare == "side-by-side"
        wait_until(lambda: not window.busy and window.real_layer.title == "sub-03_T1w.nii.gz")
        assert window.real_layer.data is not None
        assert (
            window.statusBar().currentMessage()
            == "#1 beside sub-03_T1w.nii.gz (age 66, group ftd), the closest to age 70, group ftd"
        )

        window.volume_list.setCurrentRow(1)  # sex M: no open scan is labelled with a sex
        match = window.show_matching_scan()
        assert match.path is None
        assert match.message.startswith("no labelled real scan of sex M, group control is open")
        assert "(of the 4 labelled, none has a sex; group: control (1), ftd (3))" in match.message
        assert window.statusBar().currentMessage().startswith("No matching real scan:")
        assert window.scan_list.currentRow() == 2  # nothing else changed
    finally:
        window.close()

    labels = ScanLabels(CONDITIONS)
    assert labels.labels(paths[1]) == {"age": 50.0, "group": "ftd"}  # "FTD" is the model's "ftd"
    assert labels.labels(paths[4]) is None
    assert "no open real scan has labels (1 open)" in labels.match({"group": "ftd"}, [paths[4]]).message
    assert "any condition" in labels.match({}, paths).message
