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
