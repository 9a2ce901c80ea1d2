"""Conditional models: the covariate spec and encoding, classifier-free guidance, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.conditions import ConditionError, ConditionSpec, Covariate, apply_dropout
from engine.errors import BrainSynthError
from engine.generation import GenerationRequest, generate
from engine.guidance import conditioned_call
from engine.samplers import SamplerSettings
from engine.specs import PRESETS

CONDITIONS = ConditionSpec(
    (
        Covariate("age", "continuous", minimum=45.0, maximum=85.0),
        Covariate("sex", "categorical", categories=("F", "M")),
        Covariate("group", "categorical", categories=("control", "ftd")),
    ),
    dropout=0.1,
)


@pytest.fixture(scope="module")
def conditional():
    """The damping network (see conftest) made conditional, its zero layers re-drawn: a contraction
    whose output depends on the condition."""
    base = PRESETS["tiny"]
    spec = replace(base, schedule=replace(base.schedule, prediction_type="sample"), conditions=CONDITIONS)
    model = spec.build_random_model(seed=0)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.weight.mul_(0.3)
        last.bias.mul_(0.3)
    return spec, model.eval()


def _request(spec, **kwargs) -> GenerationRequest:
    options = {"seeds": (7,), "settings": SamplerSettings("ddim", 6), "device": "cpu", **kwargs}
    return GenerationRequest(spec=spec, **options)


def _arrays(model, request) -> list[np.ndarray]:
    return [v.array for event in generate(model, request) for v in event.finished]


def test_paper_preset_is_unchanged_without_conditions():
    plain = PRESETS["paper"].build_model()
    assert not hasattr(plain, "class_embedding")
    assert plain.num_class_embeds is None
    conditional = replace(PRESETS["paper"], conditions=CONDITIONS).build_model()
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra
    assert all(k.startswith("class_embedding.") for k in extra)


def test_a_new_covariate_embedding_changes_nothing(conditional):
    """Zero-initialised output: a fresh conditional network computes what the unconditional one does."""
    spec, _ = conditional
    torch.manual_seed(3)
    fresh = spec.build_model().eval()
    plain = replace(spec, conditions=None).build_model().eval()
    state = {k: v for k, v in fresh.state_dict().items() if not k.startswith("class_embedding.")}
    plain.load_state_dict(state)
    x, t = torch.randn(2, 1, *spec.grid.shape), torch.tensor([10.0, 900.0])
    labels = CONDITIONS.encode([{"age": 60.0, "sex": "F"}, {}])
    with torch.no_grad():
        assert torch.equal(fresh(x, timesteps=t, class_labels=labels), plain(x, timesteps=t))


def test_conditioning_changes_the_output(conditional):
    spec, model = conditional
    young = _arrays(model, _request(spec, conditions=({"age": 46, "sex": "F", "group": "control"},)))[0]
    old = _arrays(model, _request(spec, conditions=({"age": 84, "sex": "F", "group": "control"},)))[0]
    ftd = _arrays(model, _request(spec, conditions=({"age": 46, "sex": "F", "group": "ftd"},)))[0]
    assert np.abs(young - old).max() > 1e-2
    assert np.abs(young - ftd).max() > 1e-2


def test_guidance_one_is_the_plain_conditional_prediction_and_zero_the_null(conditional):
    spec, model = conditional
    x, t = torch.randn(2, 1, *spec.grid.shape), torch.tensor([500.0, 500.0])
    encoded = CONDITIONS.encode([{"age": 70.0, "group": "ftd"}, {"sex": "M"}])
    with torch.no_grad():
        plain = model(x, timesteps=t, class_labels=encoded)
        null = model(x, timesteps=t, class_labels=CONDITIONS.null(2))
        batched = {g: conditioned_call(model, encoded, g)(x, timesteps=t) for g in (0.0, 1.0, 1.0 + 1e-9, 3.0)}
    assert torch.equal(batched[1.0], plain)
    # The batched (conditional + null) call at w = 1 + 1e-9 is the conditional prediction up to rounding.
    torch.testing.assert_close(batched[1.0 + 1e-9], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0.0], null)
    torch.testing.assert_close(batched[3.0], null + 3.0 * (plain - null), atol=1e-5, rtol=1e-5)


def test_no_condition_is_the_unconditional_branch(conditional):
    """Sampling without a condition, and guidance 0 with one, both run the null condition."""
    spec, model = conditional
    nothing = _arrays(model, _request(spec))[0]
    guided_zero = _arrays(model, _request(spec, conditions=({"age": 80, "group": "ftd"},), guidance=0.0))[0]
    all_any = _arrays(model, _request(spec, conditions=({"age": "any", "sex": None},)))[0]
    assert np.array_equal(nothing, guided_zero)
    assert np.array_equal(nothing, all_any)
    # ... which is what the network computes with all-null labels, step by step.
    assert not np.array_equal(nothing, _arrays(model, _request(spec, conditions=({"age": 80},)))[0])


@pytest.mark.parametrize("guidance", [None, 2.5])
def test_per_volume_conditions_in_one_batch_equal_single_runs(conditional, guidance):
    spec, model = conditional
    conditions = ({"age": 50, "sex": "F"}, {"age": 80, "group": "ftd"}, {})
    seeds = (3, 4, 5)
    batched = _arrays(model, _request(spec, seeds=seeds, conditions=conditions, guidance=guidance, batch_size=3))
    for k, seed in enumerate(seeds):
        single = _arrays(model, _request(spec, seeds=(seed,), conditions=(conditions[k],), guidance=guidance))[0]
        # The damping network contracts, so batched-convolution rounding (~1e-6) stays there.
        np.testing.assert_allclose(batched[k], single, atol=2e-4, rtol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_conditions_and_guidance_are_in_the_provenance(conditional):
    spec, model = conditional
    request = _request(
        spec, seeds=(1, 2), conditions=({"age": 90, "sex": "f"}, {}), guidance=2.0, allow_extrapolation=True
    )
    first, second = (request.provenance(s) for s in (1, 2))
    assert first["conditions"] == {"age": 90.0, "sex": "F"}
    assert first["guidance"] == 2.0
    assert first["allow_extrapolation"] is True
    assert first["extrapolated"] == ["age"]
    assert second["conditions"] == {}
    assert second["guidance"] is None
    volumes = [
        v for event in generate(model, replace(request, settings=SamplerSettings("ddim", 2))) for v in event.finished
    ]
    assert volumes[0].provenance["conditions"] == {"age": 90.0, "sex": "F"}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"age": 95}, "outside the training range 45 to 85"),
        ({"age": "old"}, "age must be a number"),
        ({"sex": "X"}, "not one of the model's categories: F, M"),
        ({"height": 180}, "no covariate 'height'; it is conditioned on age, sex, group"),
    ],
)
def test_bad_values_are_refused_with_what_is_allowed(conditional, condition, message):
    spec, _ = conditional
    with pytest.raises(ConditionError, match=message):
        _request(spec, conditions=(condition,))


def test_requests_that_do_not_fit_the_model():
    with pytest.raises(BrainSynthError, match="unconditional"):
        _request(PRESETS["tiny"], conditions=({"age": 60},))
    with pytest.raises(BrainSynthError, match="unconditional"):
        _request(PRESETS["tiny"], guidance=2.0)
    spec = replace(PRESETS["tiny"], conditions=CONDITIONS)
    with pytest.raises(BrainSynthError, match="2 conditions for 3 volumes"):
        _request(spec, seeds=(1, 2, 3), conditions=({"age": 60}, {"age": 61}))
    with pytest.raises(BrainSynthError, match="guidance must be a number of 0 or more"):
        _request(spec, conditions=({"age": 60},), guidance=-1.0)


def test_a_conditional_checkpoint_round_trips(tmp_path, conditional):
    spec, model = conditional
    path = save_checkpoint(tmp_path / "c.safetensors", spec=spec, weights=model.state_dict())
    loaded = load_checkpoint(path)
    assert loaded.spec == spec
    assert loaded.spec.conditions == CONDITIONS
    rebuilt = loaded.build_model()
    request = _request(spec, conditions=({"age": 60, "group": "ftd"},), guidance=2.0)
    assert np.array_equal(_arrays(model, request)[0], _arrays(rebuilt, request)[0])


def test_cli_info_lists_the_covariates(tmp_path, conditional, capsys):
    from training_cli.main import main

    spec, model = conditional
    path = save_checkpoint(tmp_path / "c.safetensors", spec=spec, weights=model.state_dict())
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "age: continuous, 45 to 85" in out
    assert "group: categorical, control / ftd" in out


def test_dropout_nulls_covariates_at_their_rates():
    encoded = CONDITIONS.encode([{"age": 60.0, "sex": "M", "group": "ftd"}] * 4000)
    spec = ConditionSpec((replace(CONDITIONS.covariates[0], dropout=0.5), *CONDITIONS.covariates[1:]), dropout=0.2)
    dropped = apply_dropout(encoded, spec, torch.Generator().manual_seed(0))
    present = dropped[:, 3:]
    assert torch.all(dropped[:, :3][present == 0] == 0)  # a dropped covariate's value is zeroed too
    whole = (present.sum(dim=1) == 0).float().mean()
    assert 0.18 < float(whole) < 0.27  # 0.2 whole + a little from all three dropping together
    assert 0.55 < float(1 - present[:, 0].mean()) < 0.65  # 1 - 0.8 * 0.5
    assert 0.24 < float(1 - present[:, 1].mean()) < 0.32  # 1 - 0.8 * 0.9


@pytest.fixture
def conditional_checkpoint(tmp_path, conditional):
    spec, model = conditional
    return save_checkpoint(tmp_path / "cond.safetensors", spec=spec, weights=model.state_dict())


def _cli_sample(ckpt, out, *extra):
    from training_cli.main import main

    return main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--steps", "3", *extra])


def test_cli_samples_with_conditions_guidance_and_a_csv(tmp_path, conditional_checkpoint, capsys):
    import json

    import nibabel as nib

    out = tmp_path / "a"
    args = ["--condition", "age=70", "--condition", "sex=F", "--condition", "group=ftd", "--guidance", "2"]
    assert _cli_sample(conditional_checkpoint, out, *args) == 0
    sidecar = json.loads((out / "synthetic_0000_seed0.json").read_text())
    assert sidecar["conditions"] == {"age": 70.0, "sex": "F", "group": "ftd"}
    assert sidecar["guidance"] == 2.0
    assert "guidance runs the network on twice the batch" in capsys.readouterr().err

    table = tmp_path / "cohort.csv"
    table.write_text("age,sex\n70,F\n50,\n")
    csv_args = ["--conditions-csv", str(table), "--guidance", "2", "--condition", "group=ftd"]
    for shard in ("0/2", "1/2"):  # each shard takes the CSV rows of its own volumes
        assert _cli_sample(conditional_checkpoint, tmp_path / "b", *csv_args, "--shard", shard) == 0
    first = json.loads((tmp_path / "b" / "synthetic_0000_seed0.json").read_text())
    second = json.loads((tmp_path / "b" / "synthetic_0001_seed1.json").read_text())
    assert first["conditions"] == {"age": 70.0, "sex": "F", "group": "ftd"}
    assert second["conditions"] == {"age": 50.0, "group": "ftd"}
    # The same volume as the single run with the same condition (the CSV row 0 equals the first run).
    a = np.asarray(nib.load(out / "synthetic_0000_seed0.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "synthetic_0000_seed0.nii.gz").dataobj)
    np.testing.assert_allclose(a, b, atol=0.1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--condition", "age=99"], "outside the training range 45 to 85; give a value inside it, or allow"),
        (["--condition", "age"], "--condition takes NAME=VALUE"),
        (["--condition", "sex=X"], "not one of the model's categories: F, M"),
        (["--num-samples", "3", "--conditions-csv", "CSV"], "has 2 rows but --num-samples is 3"),
    ],
)
def test_cli_refuses_bad_conditions_in_one_line(tmp_path, conditional_checkpoint, capsys, extra, message):
    table = tmp_path / "c.csv"
    table.write_text("age\n60\n70\n")
    extra = [str(table) if e == "CSV" else e for e in extra]
    assert _cli_sample(conditional_checkpoint, tmp_path / "o", *extra) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_extrapolation_is_allowed_on_request_and_recorded(tmp_path, conditional_checkpoint):
    import json

    assert _cli_sample(conditional_checkpoint, tmp_path / "o", "--condition", "age=95", "--allow-extrapolation") == 0
    sidecar = json.loads((tmp_path / "o" / "synthetic_0000_seed0.json").read_text())
    assert sidecar["allow_extrapolation"] is True
    assert sidecar["extrapolated"] == ["age"]


def test_an_unconditional_model_refuses_conditions(tmp_path, tiny_checkpoint, capsys):
    assert _cli_sample(tiny_checkpoint, tmp_path / "o", "--condition", "age=60") == 1
    assert "this model is unconditional" in capsys.readouterr().err
