"""Checkpoints: round trip, MONAI state_dict import, and every bad file a user can give."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from engine.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from engine.errors import BrainSynthError, CheckpointError
from engine.specs import PRESETS
from training_cli.main import main as cli


def test_round_trip_keeps_weights_ema_spec_and_provenance(tiny_checkpoint, tiny_spec, tiny_weights):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.spec == tiny_spec
    assert ckpt.has_ema
    for key, value in tiny_weights.items():
        assert torch.equal(ckpt.weights[key], value)
    assert ckpt.provenance["source"] == "test"
    assert "created" in ckpt.provenance
    assert "software_version" in ckpt.provenance
    meta = read_metadata(tiny_checkpoint)
    assert meta["spec"]["grid"]["affine"] == tiny_spec.grid.affine.tolist()


def test_build_model_prefers_ema(tiny_checkpoint, tiny_weights):
    ckpt = load_checkpoint(tiny_checkpoint)
    key = next(k for k, v in tiny_weights.items() if v.is_floating_point())
    ema_model = ckpt.build_model()
    raw_model = ckpt.build_model(use_ema=False)
    assert torch.allclose(ema_model.state_dict()[key], tiny_weights[key] + 0.01)
    assert torch.equal(raw_model.state_dict()[key], tiny_weights[key])
    assert not ema_model.training


def test_save_refuses_to_overwrite(tiny_checkpoint, tiny_spec, tiny_weights):
    before = tiny_checkpoint.read_bytes()
    with pytest.raises(BrainSynthError, match="already exists"):
        save_checkpoint(tiny_checkpoint, spec=tiny_spec, weights=tiny_weights)
    assert tiny_checkpoint.read_bytes() == before


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "unet_state_dict", "ddp", "model+ema"])
def test_imports_monai_state_dicts(tmp_path, tiny_spec, tiny_weights, layout):
    if layout == "plain":
        obj = tiny_weights
    elif layout == "ddp":
        obj = {f"module.{k}": v for k, v in tiny_weights.items()}
    elif layout == "model+ema":
        obj = {"model": tiny_weights, "ema": tiny_weights, "epoch": 3}
    else:
        obj = {layout: tiny_weights, "epoch": 3}
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    ckpt = load_checkpoint(path, preset="tiny")
    assert ckpt.spec == tiny_spec
    assert set(ckpt.weights) == set(tiny_weights)
    assert ckpt.has_ema == (layout == "model+ema")
    ckpt.build_model()


class _Exploit:
    """Unpickling this would create a marker file: the attack a checkpoint must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load evil\.pt.*arbitrary code"):
        load_checkpoint(path, preset="tiny")
    assert not marker.exists()
    raw = tmp_path / "evil.pkl.pt"
    raw.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw, preset="tiny")
    assert not marker.exists()
    # The same bytes through a plain pickle.loads do run: the test above can fail.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_wrong_architecture_names_keys_and_shapes(tmp_path, tiny_weights):
    path = tmp_path / "weights.pt"
    torch.save(tiny_weights, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, preset="demo")
    message = str(info.value)
    assert "does not fit preset 'demo'" in message
    assert "wrong shapes" in message
    assert "conv_in.conv.weight" in message
    assert "It fits preset 'tiny'" in message


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_weights):
    weights = dict(tiny_weights)
    dropped = sorted(weights)[0]
    del weights[dropped]
    weights["extra.bias"] = torch.zeros(3)
    path = tmp_path / "weights.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match=rf"1 missing keys: {dropped}.*1 unexpected keys: extra.bias"):
        load_checkpoint(path, preset="tiny")


def test_plain_state_dict_needs_a_preset(tmp_path, tiny_weights):
    path = tmp_path / "weights.pt"
    torch.save(tiny_weights, path)
    with pytest.raises(CheckpointError, match="--preset"):
        load_checkpoint(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_files_give_clear_errors(tmp_path, tiny_checkpoint, tiny_weights, suffix):
    if suffix == ".pt":
        source = tmp_path / "full.pt"
        torch.save(tiny_weights, source)
    else:
        source = tiny_checkpoint
    data = source.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut, preset="tiny")


def test_not_a_checkpoint_and_wrong_extension(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(text)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"\x1f\x8b")
    with pytest.raises(CheckpointError, match="not a checkpoint: expected"):
        load_checkpoint(scan)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_preset_that_disagrees_with_checkpoint(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="holds a 'tiny' model but preset 'demo'"):
        load_checkpoint(tiny_checkpoint, preset="demo")


def test_cli_info(tiny_checkpoint, capsys):
    assert cli(["info", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out
    assert "16 x 24 x 16" in out
    assert "EMA weights: yes" in out
    assert "dpmpp-2m, 25 steps by default (the engine's; the model names none)" in out


def test_cli_info_error_is_one_line(tmp_path, capsys):
    assert cli(["info", str(tmp_path / "nope.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "does not exist" in err
    assert "Traceback" not in err


def test_paper_preset_is_the_reference_study():
    spec = PRESETS["paper"]
    assert spec.grid.shape == (84, 128, 84)
    assert spec.unet.channels == (128, 128, 256)
    assert spec.unet.attention_levels == (False, False, True)
    assert spec.unet.num_head_channels == 256
    assert spec.unet.num_res_blocks == 2
    assert spec.schedule.num_train_timesteps == 1000
    assert spec.schedule.schedule == "scaled_linear_beta"
    assert (spec.schedule.beta_start, spec.schedule.beta_end) == (0.0005, 0.0195)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda spec: spec.update(default_sampler={"name": "euler", "steps": 5}),
            "unknown sampler 'euler'; choose one of: ddpm, ddim, dpmpp-2m",
        ),
        (lambda spec: spec.update(default_sampler={"name": "ddpm"}), "damaged model description (KeyError: 'steps')"),
        (lambda spec: spec.pop("grid"), "damaged model description (KeyError"),
    ],
)
def test_damaged_model_description_is_one_clear_error(tmp_path, tiny_checkpoint, edit, message):
    import json

    from safetensors.torch import load_file, save_file

    header = read_metadata(tiny_checkpoint)
    edit(header["spec"])
    bad = tmp_path / "edited.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(bad), metadata={"brainsynth": json.dumps(header)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(info.value).startswith("edited.safetensors")
    assert message in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_one_read_gives_the_files_sha256_and_reports_progress_to_the_end(
    tmp_path, tiny_checkpoint, tiny_weights, suffix, monkeypatch
):
    import hashlib

    if suffix == ".pt":
        path = tmp_path / "weights.pt"
        torch.save(tiny_weights, path)
    else:
        path = tiny_checkpoint
    # Small chunks, so even the tiny file is read in several pieces.
    chunk = 64 * 1024
    assert path.stat().st_size > 4 * chunk
    monkeypatch.setattr("engine.checkpoint._READ_CHUNK_BYTES", chunk)
    fractions: list[float] = []
    ckpt = load_checkpoint(path, preset="tiny" if suffix == ".pt" else None, progress=fractions.append)
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(fractions) >= 4
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert 0.0 < fractions[0] < 1.0
    assert set(ckpt.weights) == set(tiny_weights)


def test_a_checkpoint_made_in_memory_has_no_file_hash(tiny_spec, tiny_weights):
    assert Checkpoint(spec=tiny_spec, weights=dict(tiny_weights)).sha256 is None


def test_our_safetensors_reader_agrees_with_safetensors_own(tiny_checkpoint):
    from safetensors.torch import load_file

    reference = load_file(str(tiny_checkpoint))
    ckpt = load_checkpoint(tiny_checkpoint)
    ours = {f"model.{k}": v for k, v in ckpt.weights.items()} | {f"ema.{k}": v for k, v in ckpt.ema_weights.items()}
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key


def test_misaligned_and_damaged_tensor_entries(tmp_path):
    import json

    from engine.checkpoint import _safetensors_header, _safetensors_tensors

    def file_bytes(layout: dict, payload: bytes) -> bytearray:
        header = json.dumps(layout).encode()
        return bytearray(len(header).to_bytes(8, "little") + header + payload)

    path = tmp_path / "hand-made.safetensors"
    values = torch.tensor([1.5, -2.0], dtype=torch.float32)
    # A float32 tensor starting one byte in: read correctly (copied, never a misaligned view).
    data = file_bytes(
        {"flag": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
         "x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}},
        b"\x07" + values.numpy().tobytes(),
    )  # fmt: skip
    layout, start = _safetensors_header(path, data)
    tensors = _safetensors_tensors(path, data, layout, start)
    assert torch.equal(tensors["x"], values)
    assert tensors["flag"].tolist() == [7]
    for entry, message in (
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "inconsistent offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}, "inconsistent offsets"),
        ({"dtype": "F32", "shape": [2000], "data_offsets": [0, 8000]}, "truncated"),
        ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, "described wrongly"),
    ):
        data = file_bytes({"x": entry}, values.numpy().tobytes())
        layout, start = _safetensors_header(path, data)
        with pytest.raises(CheckpointError, match=message):
            _safetensors_tensors(path, data, layout, start)
