"""Opening the MONAI brain LDM bundle, tested on a small fake bundle of the same structure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.bundle import bundle_spec, convert_old_keys, import_bundle, register_grid
from engine.checkpoint import load_checkpoint
from engine.errors import BrainSynthError, CheckpointError
from engine.generation import GenerationRequest, generate
from engine.geometry import GridGeometry
from engine.specs import PRESETS
from tests.helpers_bundle import DIFFUSION_DEF, build_networks, to_old_names, write_fake_bundle


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    return write_fake_bundle(tmp_path_factory.mktemp("bundle"))


def test_old_key_names_convert_as_monai_converts_them():
    """Our renaming against MONAI's own load_old_state_dict on the same old-named weights."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    autoencoder, unet = build_networks(seed=3)
    for network, cls in ((unet, DiffusionModelUNet), (autoencoder, AutoencoderKL)):
        old = to_old_names(network.state_dict())
        assert set(old) != set(network.state_dict())  # there is something to convert
        ours = convert_old_keys(old, list(network.state_dict()), source="model.pt")
        args = {
            k: v for k, v in (DIFFUSION_DEF if cls is DiffusionModelUNet else _ae_args()).items() if k != "_target_"
        }
        reference = cls(**args)
        reference.load_old_state_dict(dict(old))
        theirs = reference.state_dict()
        assert set(ours) == set(theirs)
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key


def _ae_args():
    from tests.helpers_bundle import AUTOENCODER_DEF

    return AUTOENCODER_DEF


def test_bundle_config_gives_the_spec(fake_bundle):
    root, _, _ = fake_bundle
    spec = bundle_spec(json.loads((root / "configs" / "inference.json").read_text()))
    assert spec.sample_shape == (3, 4, 8, 4)
    assert spec.grid.shape == (32, 64, 32)
    assert spec.grid.spacing_mm == (1.0, 1.0, 1.0)
    assert (spec.schedule.beta_start, spec.schedule.beta_end, spec.schedule.clip_sample) == (0.0015, 0.0205, False)
    assert (spec.default_sampler.name, spec.default_sampler.steps) == ("ddim", 50)
    assert spec.conditions.names == ("sex", "age", "ventricular_vol", "brain_vol")
    assert spec.unet.num_head_channels == (0, 32, 48)
    assert bundle_spec(None) == PRESETS["ldm-1mm"]


def test_import_and_sample_end_to_end(fake_bundle, tmp_path):
    root, ae_state, unet_state = fake_bundle
    ckpt = import_bundle(root, geometry="mni-centre")
    path = ckpt.save(tmp_path / "ldm.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.provenance["geometry"]["method"] == "mni-centre"
    model = loaded.build_model()
    for key, value in unet_state.items():
        assert torch.equal(model.unet.state_dict()[key], value)
    for key, value in ae_state.items():
        assert torch.equal(model.autoencoder.state_dict()[key], value)
    # In real units (years, mL), mapped to the bundle's [0, 1] with the paper's ranges: 1, 0.7, 0.7, 0.5.
    condition = {"sex": 1.0, "age": 70.6, "ventricular_vol": 6.99568 + 0.7 * 164.37932, "brain_vol": 1469.075}
    request = GenerationRequest.for_checkpoint(loaded, seeds=(5,), steps=3, device="cpu", conditions=(condition,))
    assert request.settings.spacing == "leading"  # the bundle's own DDIM (its metadata: MONAI 1.4.0)
    (volume,) = [v for event in generate(model, request) for v in event.finished]
    assert volume.array.shape == (32, 64, 32)
    assert np.isfinite(volume.array).all()
    # The bundle's sampler, by hand: DDIM on the latent with the conditions concatenated and as
    # context, then the decoder's [0, 1] output mapped to model space.
    from engine.samplers import denoise, initial_noise

    noise, generators = initial_noise(loaded.spec.sample_shape, [5], torch.device("cpu"), torch.float32)
    cond = torch.tensor([[1.0, 0.7, 0.7, 0.5]])

    def bundle_call(x, *, timesteps):
        channels = cond[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        return torch.nn.Module.__call__(_plain_unet(model.unet), torch.cat([x, channels], 1), timesteps, cond[:, None])

    *_, last = denoise(bundle_call, loaded.spec.schedule, noise, generators, request.settings)
    with torch.inference_mode():
        decoded = model.autoencoder.decode_stage_2_outputs(last.x_t)
    np.testing.assert_allclose(volume.array, (decoded * 2 - 1)[0, 0].numpy(), atol=1e-5)


def _plain_unet(unet):
    """The same weights in MONAI's plain DiffusionModelUNet (no BrainSynth forward)."""
    from monai.networks.nets import DiffusionModelUNet

    plain = DiffusionModelUNet(**{k: v for k, v in DIFFUSION_DEF.items() if k != "_target_"})
    plain.load_state_dict(unet.state_dict())
    return plain.eval()


def test_cli_import_bundle_then_info_and_sample(fake_bundle, tmp_path, capsys):
    from training_cli.main import main

    root, _, _ = fake_bundle
    out = tmp_path / "ukb.safetensors"
    assert main(["import-bundle", str(root), "--out", str(out), "--geometry", "mni-centre"]) == 0
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "latent diffusion: 3 x 4 x 8 x 4 latent" in shown
    assert "mni-centre" in shown
    # the paper's ranges: age in years, the bundle's default age 0.1 shown as 47.8 years
    assert "age: continuous, 44 to 82 years (default 47.8)" in shown
    assert "arXiv:2209.07162v1, section 2.1" in shown
    assert "ddim, 50 steps by default (the model's own); leading timesteps" in shown
    samples = tmp_path / "samples"
    code = main(["sample", "--checkpoint", str(out), "--steps", "2", "--out", str(samples), "--condition", "age=74.4"])
    assert code == 0
    assert "leading timesteps" in capsys.readouterr().err
    import nibabel as nib

    (sidecar,) = sorted(samples.glob("*.json"))
    record = json.loads(sidecar.read_text())
    assert (record["sampler"], record["steps"], record["spacing"]) == ("ddim", 2, "leading")
    assert record["conditions"]["age"] == 74.4
    (written,) = sorted(samples.glob("*.nii.gz"))
    image = nib.load(written)
    assert image.shape == (32, 64, 32)
    np.testing.assert_allclose(image.affine, GridGeometry.centred_on_mni_box((32, 64, 32)).affine)
    # the same file again: refused before any work
    assert main(["import-bundle", str(root), "--out", str(out), "--geometry", "mni-centre"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_wrong_files_are_refused(tmp_path, fake_bundle):
    root, _, _ = fake_bundle
    with pytest.raises(CheckpointError, match=r"models/autoencoder\.pt, models/model\.pt not found"):
        import_bundle(tmp_path, geometry="mni-centre")
    # the two files swapped: keys missing and unexpected, named
    swapped = tmp_path / "swapped"
    (swapped / "models").mkdir(parents=True)
    (swapped / "configs").mkdir()
    (swapped / "configs" / "inference.json").write_bytes((root / "configs" / "inference.json").read_bytes())
    (swapped / "models" / "autoencoder.pt").write_bytes((root / "models" / "model.pt").read_bytes())
    (swapped / "models" / "model.pt").write_bytes((root / "models" / "autoencoder.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"autoencoder.pt does not fit the model spec: \d+ missing keys"):
        import_bundle(swapped, geometry="mni-centre")
    # a pickle that would run code
    (swapped / "models" / "autoencoder.pt").write_bytes((root / "models" / "autoencoder.pt").read_bytes())
    torch.save({"weights": _Evil()}, swapped / "models" / "model.pt")
    with pytest.raises(CheckpointError, match=r"refused to load model\.pt"):
        import_bundle(swapped, geometry="mni-centre")
    # the full-size bundle's config with the small weights: shapes named
    (swapped / "configs" / "inference.json").unlink()
    (swapped / "models" / "model.pt").write_bytes((root / "models" / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="wrong shapes"):
        import_bundle(swapped, geometry="mni-centre")
    with pytest.raises(CheckpointError, match="unknown geometry"):
        import_bundle(root, geometry="talairach")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_registration_recovers_a_known_shift():
    """register_grid on the template itself, laid on a grid shifted by a known amount."""
    pytest.importorskip("ants")
    from scipy import ndimage

    from engine.preprocess.template import load_template

    template = load_template()
    shape = (64, 80, 64)
    guess = GridGeometry.centred_on_mni_box(shape, spacing_mm=2.0)
    shift = np.array([6.0, -4.0, 3.0])
    true = GridGeometry(shape=shape, spacing_mm=(2.0,) * 3, origin_mm=tuple(np.asarray(guess.origin_mm) + shift))
    volume = ndimage.affine_transform(template.t1, np.linalg.inv(template.affine) @ true.affine, output_shape=shape)
    volume = volume / np.percentile(volume[volume > 0], 99.5) * 1000
    grid, record = register_grid(volume, PRESETS["ldm-tiny"], guess)
    np.testing.assert_allclose(grid.origin_mm, true.origin_mm, atol=1.0)  # measured 0.13 mm
    np.testing.assert_allclose(record["shift_mm"], shift, atol=1.0)
    assert record["rotation_deg"] < 2.0


@pytest.mark.slow
def test_import_with_registration_records_the_geometry(fake_bundle):
    """The default geometry path end to end (a random network's volume: the numbers mean nothing)."""
    pytest.importorskip("ants")
    root, _, _ = fake_bundle
    ckpt = import_bundle(root, geometry="register", register_steps=2)
    geometry = ckpt.provenance["geometry"]
    assert geometry["method"] == "registered"
    shift = np.asarray(geometry["shift_mm"])
    centred = GridGeometry.centred_on_mni_box((32, 64, 32))
    np.testing.assert_allclose(ckpt.spec.grid.origin_mm, np.asarray(centred.origin_mm) + shift, atol=0.01)


@pytest.mark.parametrize(
    ("version", "spacing"), [("1.4.0", "leading"), ("1.5.1", "leading"), ("1.6.1", "linspace"), (None, "leading")]
)
def test_import_records_the_ddim_of_the_bundle_s_monai(tmp_path, version, spacing):
    """The timestep layout follows the MONAI version configs/metadata.json names (none: 1.4.0's)."""
    root, _, _ = write_fake_bundle(tmp_path / "bundle", monai_version=version)
    ckpt = import_bundle(root, geometry="mni-centre")
    sampler = ckpt.spec.default_sampler
    assert (sampler.name, sampler.steps, sampler.spacing, sampler.steps_offset) == ("ddim", 50, spacing, 0)
    record = ckpt.provenance["sampling"]
    assert record["spacing"] == spacing
    assert record["timesteps"] == ("980, 960, 940, ..., 0" if spacing == "leading" else "999, 979, 958, ..., 0")
    assert record["scheduler"]["schedule"] == "scaled_linear_beta"
    assert (f"MONAI {version}" if version else "names no MONAI version") in record["why"]
    # saved and loaded, the layout is still the model's
    loaded = load_checkpoint(ckpt.save(tmp_path / "x.safetensors"))
    assert loaded.spec.default_sampler == sampler


def test_import_ddim_spacing_asked_for_and_schedulers_we_cannot_follow(fake_bundle, tmp_path):
    root, _, _ = fake_bundle
    ckpt = import_bundle(root, geometry="mni-centre", ddim_spacing="linspace")
    assert ckpt.spec.default_sampler.spacing == "linspace"
    assert "as asked for at import" in ckpt.provenance["sampling"]["why"]
    with pytest.raises(CheckpointError, match="unknown DDIM spacing 'trailing'"):
        import_bundle(root, geometry="mni-centre", ddim_spacing="trailing")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["scheduler"]["set_alpha_to_one"] = False
    with pytest.raises(CheckpointError, match="set_alpha_to_one"):
        bundle_spec(config)
    # a steps_offset of MONAI's is kept with the layout
    other = tmp_path / "offset"
    write_fake_bundle(other)
    config["scheduler"].pop("set_alpha_to_one")
    config["scheduler"]["steps_offset"] = 1
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    sampler = import_bundle(other, geometry="mni-centre").spec.default_sampler
    assert (sampler.spacing, sampler.steps_offset) == ("leading", 1)
    config["scheduler"]["steps_offset"] = 25  # 49 * 20 + 25 > 999
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"its scheduler cannot be followed.*beyond the model.s last"):
        import_bundle(other, geometry="mni-centre")


def test_import_stores_the_paper_s_covariate_ranges(fake_bundle):
    """Real units with the ranges of Pinaya et al. 2022 (section 2.1); the network still gets [0, 1]."""
    from engine.bundle import DOCUMENTED_RANGES

    root, _, _ = fake_bundle
    spec = import_bundle(root, geometry="mni-centre").spec
    age = spec.conditions.covariate("age")
    assert (age.minimum, age.maximum, age.unit, age.default) == (44.0, 82.0, "years", 47.8)
    vent = spec.conditions.covariate("ventricular_vol")
    assert (vent.minimum, vent.maximum) == (6.99568, 171.375)  # 6995.68 - 171375.0 mm3 in mL
    brain = spec.conditions.covariate("brain_vol")
    assert (brain.minimum, brain.maximum) == (1144.24, 1793.91)  # 1144240 - 1793910 mm3 in mL
    sex = spec.conditions.covariate("sex")
    assert (sex.minimum, sex.maximum) == (0.0, 1.0)
    assert "not documented" in sex.unit
    assert set(DOCUMENTED_RANGES) == set(spec.conditions.names)
    # the bundle's own defaults (0.0, 0.1, 0.2, 0.4) reach the network unchanged
    encoded = spec.conditions.encode([spec.conditions.check({})])
    np.testing.assert_allclose(encoded.numpy(), [[0.0, 0.1, 0.2, 0.4]], rtol=1e-6, atol=1e-7)
    encoded = spec.conditions.encode([spec.conditions.check({"age": 63.0, "brain_vol": 1793.91})])
    np.testing.assert_allclose(encoded.numpy(), [[0.0, 0.5, 0.2, 1.0]], rtol=1e-6, atol=1e-7)
    # a value on the bundle's old [0, 1] scale is now far outside the age range: refused, not misread
    with pytest.raises(BrainSynthError, match=r"age=0\.7 is outside the training range 44 to 82"):
        spec.conditions.check({"age": 0.7})


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_imported_bundle_samples_as_the_bundle_s_own_monai_loop(fake_bundle, spacing):
    """generate() on the imported checkpoint against the bundle's scripts/sampler.py loop: MONAI's
    DDIMScheduler (inference.json's arguments), set_timesteps(50) and step, MONAI's plain UNet called
    with the conditions concatenated and as context, then the decoder (leading: the layout MONAI
    1.4.0's set_timesteps left, as the installed MONAI lays linspace)."""
    from monai.networks.schedulers import DDIMScheduler

    from engine.samplers import initial_noise, leading_timesteps

    root, _, _ = fake_bundle
    ckpt = import_bundle(root, geometry="mni-centre", ddim_spacing=spacing)
    model = ckpt.build_model().eval()
    condition = {"sex": 1.0, "age": 70.6, "ventricular_vol": 6.99568 + 0.7 * 164.37932, "brain_vol": 1469.075}
    request = GenerationRequest.for_checkpoint(
        ckpt, seeds=(5,), device="cpu", precision="fp32", conditions=(condition,)
    )
    assert (request.settings.steps, request.settings.spacing) == (50, spacing)
    (volume,) = [v for event in generate(model, request) for v in event.finished]

    scheduler = DDIMScheduler(**{k: v for k, v in ckpt.provenance["sampling"]["scheduler"].items() if k != "_target_"})
    scheduler.set_timesteps(num_inference_steps=50)
    if spacing == "leading":
        scheduler.timesteps = torch.tensor(leading_timesteps(1000, 50))
    unet = _plain_unet(model.unet)
    image, _ = initial_noise(ckpt.spec.sample_shape, [5])
    conditioning = torch.tensor([[1.0, 0.7, 0.7, 0.5]]).unsqueeze(1)
    cond_concat = conditioning.squeeze(1)[:, :, None, None, None].expand(-1, -1, *image.shape[2:])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(
                torch.cat((image, cond_concat), dim=1), timesteps=torch.Tensor((t,)).long(), context=conditioning
            )
            image, _ = scheduler.step(out, t, image)
        decoded = model.autoencoder.decode_stage_2_outputs(image)
    np.testing.assert_allclose(volume.array, (decoded * 2 - 1)[0, 0].numpy(), atol=1e-4)
    assert volume.provenance["spacing"] == spacing
