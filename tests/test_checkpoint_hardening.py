"""Damaged and hostile checkpoints: each one a single clear CheckpointError, found before
anything is built (one reproducer per case the fuzzing run of issue 15 found)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import load_checkpoint, read_metadata
from engine.checkpoint_checks import MAX_JSON_DEPTH, estimate_memory
from engine.display_text import printable
from engine.errors import CheckpointError
from engine.specs import PRESETS
from training_cli.main import main as cli


def _write(tmp_path, tiny_checkpoint, *, header=None, text=None, tensors=None, name="edited.safetensors"):
    """A copy of the tiny checkpoint with its metadata (or tensors) replaced."""
    if text is None:
        text = json.dumps(header if header is not None else read_metadata(tiny_checkpoint))
    path = tmp_path / name
    save_file(tensors or load_file(str(tiny_checkpoint)), str(path), metadata={"brainsynth": text})
    return path


def _refused(path, *match: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(path.name)
    assert "\n" not in text
    for part in match:
        assert part in text, text
    return text


@pytest.mark.parametrize(
    ("text", "says"),
    [("[1, 2]", "is a list, not an object"), ('"spec"', "is a string"), ("3", "is a number"), ("null", "is null")],
)
def test_metadata_that_is_not_an_object(tmp_path, tiny_checkpoint, text, says):
    _refused(_write(tmp_path, tiny_checkpoint, text=text), says)


@pytest.mark.parametrize("version", [None, "one", True, 0, -1, 1.5])
def test_format_version_of_the_wrong_type(tmp_path, tiny_checkpoint, version):
    header = read_metadata(tiny_checkpoint)
    header["format_version"] = version
    _refused(_write(tmp_path, tiny_checkpoint, header=header), "format_version")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_in_the_json(tmp_path, tiny_checkpoint, literal):
    text = json.dumps(read_metadata(tiny_checkpoint))
    for key in ('"format_version": 1', '"scale": 1000.0'):
        bad = text.replace(key, key.split(":")[0] + ": " + literal)
        _refused(_write(tmp_path, tiny_checkpoint, text=bad), literal, "not a usable number")
    grid = text.replace('"shape": [16', '"shape": [' + literal)
    _refused(_write(tmp_path, tiny_checkpoint, text=grid), "not a usable number")


def test_json_nesting_bomb(tmp_path, tiny_checkpoint):
    deep = "[" * 100_000 + "]" * 100_000
    _refused(_write(tmp_path, tiny_checkpoint, text=deep), "nested 100,000 levels deep")
    header = read_metadata(tiny_checkpoint)
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = {"a": nested}
    header["provenance"]["training"] = nested
    _refused(_write(tmp_path, tiny_checkpoint, header=header), "levels deep")
    # brackets inside strings are text, not nesting
    header = read_metadata(tiny_checkpoint)
    header["provenance"]["note"] = "[" * 1000 + "{" * 1000
    assert load_checkpoint(_write(tmp_path, tiny_checkpoint, header=header)).provenance["note"].startswith("[[")


def test_huge_integer_is_refused(tmp_path, tiny_checkpoint):
    text = json.dumps(read_metadata(tiny_checkpoint)).replace('"shape": [16', '"shape": [' + "9" * 5000)
    _refused(_write(tmp_path, tiny_checkpoint, text=text), "not valid JSON")


@pytest.mark.parametrize("provenance", [[1, 2], "text", 3, None])
def test_provenance_that_is_not_an_object(tmp_path, tiny_checkpoint, provenance):
    header = read_metadata(tiny_checkpoint)
    header["provenance"] = provenance
    _refused(_write(tmp_path, tiny_checkpoint, header=header), "provenance")


@pytest.mark.parametrize(
    ("where", "field", "value", "says"),
    [
        ("unet", "norm_num_groups", 0, "unet.norm_num_groups must be a whole number from 1"),
        ("unet", "norm_num_groups", 3, "must divide every level's channels"),
        ("unet", "num_head_channels", 5, "unet.num_head_channels (5) must divide"),
        ("unet", "channels", [8, -16, 16], "unet.channels[1]"),
        ("unet", "channels", "816", "unet.channels must be a list"),
        ("unet", "attention_levels", [False, True], "unet.attention_levels must have 3 entries"),
        ("unet", "attention_levels", [0, 0, "yes"], "unet.attention_levels[0] must be true or false"),
        ("unet", "num_res_blocks", 10**6, "unet.num_res_blocks must be a whole number from 1 to 16, not 1,000,000"),
        ("unet", "spatial_dims", 2, "unet.spatial_dims must be 3"),
        ("grid", "shape", [-16, 24, 16], "grid.shape[0] must be a whole number from 1 to 1,024, not -16"),
        ("grid", "shape", [30000, 30000, 30000], "grid.shape[0]"),
        ("grid", "shape", [1024, 1024, 1024], "at most 134,217,728 are supported"),
        ("grid", "spacing_mm", [0.0, 1.0, 1.0], "grid.spacing_mm[0] must lie in (0, 100]"),
        ("schedule", "num_train_timesteps", 10**10, "num_train_timesteps must be a whole number from 1 to 100,000"),
        ("schedule", "num_train_timesteps", 2.5, "num_train_timesteps must be a whole number"),
        ("schedule", "beta_end", 2, "schedule.beta_end must lie in (0, 1), not 2"),
        ("schedule", "beta_start", 0, "schedule.beta_start must lie in (0, 1)"),
        ("schedule", "beta_end", 0.0001, "is smaller than beta_start"),
        ("schedule", "clip_sample", "no", "schedule.clip_sample must be true or false"),
        ("schedule", "schedule", "cosine", "unknown noise schedule 'cosine'"),
        ("intensity", "scale", 0, "intensity.scale must lie in (0, 1e+09], not 0"),
        ("intensity", "upper_percentile", 101, "intensity.upper_percentile"),
        ("unet", "colour", 1, "unet has unknown fields: 'colour'"),
    ],
)
def test_bad_spec_fields_are_named(tmp_path, tiny_checkpoint, where, field, value, says):
    header = read_metadata(tiny_checkpoint)
    header["spec"][where][field] = value
    _refused(_write(tmp_path, tiny_checkpoint, header=header), says)


def test_a_model_too_big_to_build_is_refused_with_its_size(tmp_path, tiny_checkpoint):
    header = read_metadata(tiny_checkpoint)
    header["spec"]["unet"].update(channels=[4096, 4096, 4096], num_head_channels=16)
    text = _refused(_write(tmp_path, tiny_checkpoint, header=header), "billion parameters", "GiB of weights")
    assert "at most 16.0 GiB" in text


def test_a_sampling_step_too_big_is_refused_with_its_size(tmp_path, tiny_checkpoint):
    header = read_metadata(tiny_checkpoint)
    header["spec"]["unet"].update(channels=[512, 512, 512], norm_num_groups=8, num_head_channels=16)
    header["spec"]["grid"].update(shape=[512, 512, 512])
    _refused(_write(tmp_path, tiny_checkpoint, header=header), "one sampling step", "would need at least", "TiB")


def test_memory_estimate_of_the_reference_model():
    estimate = estimate_memory(PRESETS["paper"])
    assert estimate.parameters == sum(p.numel() for p in PRESETS["paper"].build_model().parameters())
    assert estimate.model_bytes == 4 * estimate.parameters
    # 84 x 128 x 84 voxels x 128 channels x 4 bytes is 462 MB a tensor; a step keeps several
    assert 1 * 2**30 < estimate.step_bytes < 16 * 2**30
    assert estimate.attention_bytes > 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_weights_are_refused(tmp_path, tiny_checkpoint, dtype):
    tensors = load_file(str(tiny_checkpoint))
    key = next(k for k in tensors if k.startswith("model.") and k.endswith("weight"))
    tensors[key] = tensors[key].to(dtype)
    _refused(_write(tmp_path, tiny_checkpoint, tensors=tensors), "non-floating-point weights", key[6:])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_sampling(tmp_path, tiny_checkpoint, value):
    tensors = load_file(str(tiny_checkpoint))
    key = next(k for k in tensors if k.startswith("ema."))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    _refused(_write(tmp_path, tiny_checkpoint, tensors=tensors), "NaN or infinite weights", key[4:])


def test_a_flipped_exponent_bit_is_refused(tmp_path, tiny_checkpoint):
    # Finite, but 5.7e23 overflows float32 in the first convolution: every sample would be NaN.
    tensors = load_file(str(tiny_checkpoint))
    key = next(k for k in tensors if k.startswith("model.") and k.endswith("conv1.conv.weight"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[5] = 5.6771e23
    _refused(_write(tmp_path, tiny_checkpoint, tensors=tensors), "weights far beyond any trained network's", key[6:])


def test_the_bundled_weights_are_well_within_the_bound():
    from engine.checkpoint_checks import MAX_ABS_WEIGHT
    from tests.fuzz_cases import BUNDLED_CHECKPOINT

    largest = max(float(t.abs().max()) for t in load_file(str(BUNDLED_CHECKPOINT)).values())
    assert largest < MAX_ABS_WEIGHT / 1e4


def test_half_precision_weights_are_accepted(tmp_path, tiny_checkpoint):
    tensors = {k: v.half() for k, v in load_file(str(tiny_checkpoint)).items()}
    ckpt = load_checkpoint(_write(tmp_path, tiny_checkpoint, tensors=tensors))
    ckpt.build_model()


def test_a_network_that_monai_cannot_build_is_one_error(tiny_checkpoint, monkeypatch):
    ckpt = load_checkpoint(tiny_checkpoint)

    def broken(**_):
        raise RuntimeError("CUDA error: something deep inside torch\nwith a second line")

    monkeypatch.setattr(type(ckpt.spec), "build_model", lambda self, **kw: broken(**kw))
    with pytest.raises(CheckpointError, match=r"^tiny\.safetensors: its network cannot be built or loaded") as info:
        ckpt.build_model()
    assert "\n" not in str(info.value)


def test_printable_escapes_terminal_controls_and_bidi_overrides():
    assert printable("demo\x1b[2J\x1b]52;c;ZWNobw==\x07") == "demo\\x1b[2J\\x1b]52;c;ZWNobw==\\x07"
    assert printable("a\rb\nc\td\x7f\x9b") == "a\\x0db\\x0ac\\x09d\\x7f\\x9b"
    assert printable("abc\u202edef") == "abc\\u202edef"
    assert printable("Basile et al. — 3-D T1, ü ß 脑") == "Basile et al. — 3-D T1, ü ß 脑"
    assert printable("x" * 50, max_len=10) == "x" * 9 + "…"


def test_cli_info_prints_control_characters_escaped(tmp_path, tiny_checkpoint, capsys):
    header = read_metadata(tiny_checkpoint)
    header["spec"]["name"] = "tiny\x1b[2J\x1b[31m"
    header["provenance"]["source"] = "run\r\x1b]0;owned\x07"
    header["provenance"]["na\x1bme"] = "x"
    path = _write(tmp_path, tiny_checkpoint, header=header)
    assert cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\x07" not in out
    assert "tiny\\x1b[2J\\x1b[31m" in out
    assert "run\\x0d\\x1b]0;owned\\x07" in out
    assert "na\\x1bme" in out


def test_app_model_panel_escapes_control_characters(tmp_path, tiny_checkpoint):
    from brainsynth_gui.checkpoint_info import describe_checkpoint

    header = read_metadata(tiny_checkpoint)
    header["provenance"]["source"] = "evil\x1b[2J\u202e"
    header["provenance"]["training"] = {"no\x07te": "x\x00y"}
    html = describe_checkpoint(load_checkpoint(_write(tmp_path, tiny_checkpoint, header=header)))
    assert "\x1b" not in html
    assert "\u202e" not in html
    assert "\x07" not in html
    assert "\x00" not in html
    assert "evil\\x1b[2J\\u202e" in html


def test_cli_sample_of_a_damaged_checkpoint_is_one_line(tmp_path, tiny_checkpoint, capsys):
    header = read_metadata(tiny_checkpoint)
    header["spec"]["unet"]["norm_num_groups"] = 0
    path = _write(tmp_path, tiny_checkpoint, header=header)
    assert cli(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "out"), "--steps", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "norm_num_groups" in err
    assert "Traceback" not in err
