"""Latent-diffusion models: spec, presets, checkpoints, sampling in latent space and decoding."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from engine.checkpoint_checks import expected_state
from engine.errors import BrainSynthError, CheckpointError
from engine.generation import GenerationRequest, generate
from engine.latent import LatentDiffusionModel, decode_bytes, decode_tile
from engine.sampler_registry import SAMPLERS
from engine.samplers import SamplerSettings
from engine.specs import PRESETS, ModelSpec

TINY = PRESETS["ldm-tiny"]


@pytest.fixture(scope="module")
def tiny_ldm() -> LatentDiffusionModel:
    return TINY.build_random_model(seed=0)


def _volumes(model, request):
    return [v for event in generate(model, request) for v in event.finished]


def test_ldm_1mm_is_the_bundle_architecture_and_grid():
    """Shapes and parameter counts against MONAI's networks built from the bundle's own arguments."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    spec = PRESETS["ldm-1mm"]
    with torch.device("meta"):
        unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=7, out_channels=3, channels=(256, 512, 768), num_res_blocks=2,
            attention_levels=(False, True, True), norm_num_groups=32, norm_eps=1e-6, resblock_updown=True,
            num_head_channels=(0, 512, 768), with_conditioning=True, transformer_num_layers=1,
            cross_attention_dim=4, upcast_attention=True,
        )  # fmt: skip
        autoencoder = AutoencoderKL(
            spatial_dims=3, in_channels=1, out_channels=1, latent_channels=3, channels=(64, 128, 128, 128),
            num_res_blocks=2, norm_num_groups=32, norm_eps=1e-6, attention_levels=(False,) * 4,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )  # fmt: skip
    ours = expected_state(spec)
    theirs = {f"unet.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    theirs |= {f"autoencoder.{k}": tuple(v.shape) for k, v in autoencoder.state_dict().items()}
    assert {k: shape for k, (shape, _) in ours.items()} == theirs
    assert sum(p.numel() for p in unet.parameters()) == 553_168_899
    assert sum(p.numel() for p in autoencoder.parameters()) == 13_766_248
    assert spec.sample_shape == (3, 20, 28, 20)
    assert spec.grid.shape == (160, 224, 160)
    assert spec.grid.spacing_mm == (1.0, 1.0, 1.0)
    centre = spec.grid.voxel_to_mm([(n - 1) / 2 for n in spec.grid.shape])
    np.testing.assert_allclose(centre, [0.0, -18.0, 18.0])  # the 1 mm MNI box's centre
    s = spec.schedule
    assert (s.num_train_timesteps, s.schedule, s.beta_start, s.beta_end, s.clip_sample) == (
        1000, "scaled_linear_beta", 0.0015, 0.0205, False,
    )  # fmt: skip
    assert (spec.default_sampler.name, spec.default_sampler.steps) == ("ddim", 50)
    assert spec.conditions.names == ("sex", "age", "ventricular_vol", "brain_vol")


def test_latent_spec_round_trips_and_pixel_specs_are_written_as_before():
    for name in ("ldm-1mm", "ldm-demo", "ldm-tiny"):
        assert ModelSpec.from_dict(PRESETS[name].to_dict()) == PRESETS[name]
    paper = PRESETS["paper"].to_dict()
    assert "latent" not in paper
    assert set(paper["unet"]) == {
        "channels", "attention_levels", "num_res_blocks", "num_head_channels", "norm_num_groups",
        "spatial_dims", "in_channels", "out_channels",
    }  # fmt: skip


def test_latent_grid_must_decode_to_the_model_grid():
    with pytest.raises(BrainSynthError, match="decodes to 16 x 24 x 16"):
        replace(TINY, grid=PRESETS["tiny"].with_grid((32, 24, 16)).grid)
    with pytest.raises(BrainSynthError, match="latent grid 7 x 12 x 8 does not fit"):
        replace(TINY, latent=replace(TINY.latent, shape=(7, 12, 8)))


def test_latent_checkpoint_holds_both_networks(tmp_path, tiny_ldm, tiny_checkpoint):
    path = tmp_path / "ldm.safetensors"
    save_checkpoint(path, spec=TINY, weights=tiny_ldm.state_dict())
    assert read_metadata(path)["format_version"] == 2
    assert read_metadata(tiny_checkpoint)["format_version"] == 1  # pixel models are still format 1
    ckpt = load_checkpoint(path)
    assert ckpt.spec == TINY
    assert {k.split(".")[0] for k in ckpt.weights} == {"unet", "autoencoder"}
    model = ckpt.build_model()
    assert isinstance(model, LatentDiffusionModel)
    for key, value in tiny_ldm.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_latent_checkpoint_without_its_autoencoder_is_refused(tmp_path, tiny_ldm):
    weights = {k: v for k, v in tiny_ldm.state_dict().items() if not k.startswith("autoencoder.")}
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, spec=TINY, weights=weights)
    with pytest.raises(CheckpointError, match=r"missing keys: autoencoder\."):
        load_checkpoint(path)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_in_latent_space_and_decodes(tiny_ldm, sampler):
    request = GenerationRequest(spec=TINY, seeds=(3,), settings=SamplerSettings(sampler, 4), device="cpu")
    (volume,) = _volumes(tiny_ldm, request)
    assert volume.array.shape == TINY.grid.shape
    # The final latent, decoded: the same sampler run by hand on the latent, then the decoder.
    from engine.samplers import denoise, initial_noise

    noise, generators = initial_noise(TINY.sample_shape, [3], torch.device("cpu"), torch.float32)
    *_, last = denoise(tiny_ldm, TINY.schedule, noise, generators, request.settings)
    np.testing.assert_allclose(volume.array, tiny_ldm.decode(last.x_t)[0, 0].numpy(), atol=1e-5)


def test_trajectory_frames_are_decoded_and_bounded(tiny_ldm):
    decoded = []
    original = tiny_ldm.decode

    def counting(z, **kw):
        decoded.append(z.shape[0])
        return original(z, **kw)

    tiny_ldm.decode = counting
    try:
        request = GenerationRequest(
            spec=TINY,
            seeds=(1, 2),
            settings=SamplerSettings("ddim", 10),
            device="cpu",
            trajectory_frames=3,
            batch_size=2,
        )
        volumes = _volumes(tiny_ldm, request)
    finally:
        del tiny_ldm.decode
    trajectory = volumes[0].trajectory
    assert trajectory.x0_frames.shape == (3, *TINY.grid.shape)
    assert trajectory.x_t_frames.shape == (3, *TINY.grid.shape)
    assert trajectory.start.shape == TINY.grid.shape
    # start + 3 x (x_t, x0) + the final volume: 8 decodes of the batch, whatever the step count
    assert decoded == [2] * 8
    np.testing.assert_allclose(trajectory.x_t_array()[-1], volumes[0].array, atol=2e-3)  # float16 frames


def test_tiled_decoding_stays_within_budget_and_near_the_whole(tiny_ldm):
    demo = PRESETS["ldm-demo"]
    model = demo.build_random_model(seed=1)
    z = torch.randn((1, *demo.sample_shape), generator=torch.Generator().manual_seed(0))
    whole = model.decode(z, tile=None)
    assert torch.equal(model.decode(z, tile=max(demo.latent.shape)), whole)  # a tile of the whole is the whole
    tiled = model.decode(z, tile=12)
    assert tiled.shape == whole.shape
    # Not equal: the decoder's group norms see a tile, not the whole (measured r = 0.95 for this
    # random decoder at tiles of 12 of 22-26 latent voxels, 0.99 at 16); a trained decoder's are steadier.
    r = np.corrcoef(tiled.flatten().numpy(), whole.flatten().numpy())[0, 1]
    assert r > 0.9
    budget = decode_bytes(demo.latent.autoencoder, (10, 10, 10))
    tile = decode_tile(demo.latent.autoencoder, demo.latent.shape, budget_bytes=budget)
    assert tile == 10
    assert decode_tile(demo.latent.autoencoder, demo.latent.shape) is None  # fits 2 GiB whole
    # the 1 mm bundle's whole decode is estimated above the default budget, so it is tiled
    bundle = PRESETS["ldm-1mm"].latent
    assert decode_bytes(bundle.autoencoder, bundle.shape) > 2 * 2**30
    assert decode_tile(bundle.autoencoder, bundle.shape) < 28


def test_context_conditions_reach_the_network_as_the_bundle_passes_them():
    """Our call with class_labels against MONAI's network called as the bundle's sampler calls it."""
    spec = _tiny_context_spec()
    model = spec.build_random_model(seed=0).eval()
    condition = {"sex": 1.0, "age": 0.7}
    encoded = spec.conditions.encode([spec.conditions.check(condition)])
    np.testing.assert_allclose(encoded.numpy(), [[1.0, 0.7, 0.2, 0.4]], rtol=1e-6)  # defaults fill the rest
    x = torch.randn((1, *spec.sample_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    with torch.inference_mode():
        ours = model(x, timesteps=t, class_labels=encoded)
        cond = encoded[:, None, :]
        concat = cond.squeeze(1)[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        theirs = super(type(model.unet), model.unet).forward(torch.cat([x, concat], 1), t, context=cond)
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(BrainSynthError, match="takes no guidance"):
        GenerationRequest(spec=spec, seeds=(1,), settings=SamplerSettings("ddim", 2), guidance=2.0)
    request = GenerationRequest(spec=spec, seeds=(1,), settings=SamplerSettings("ddim", 2), conditions=(condition,))
    (volume,) = _volumes(model, request)
    assert volume.provenance["conditions"] == {"sex": 1.0, "age": 0.7}


def _tiny_context_spec() -> ModelSpec:
    from engine.specs import bundle_conditions

    return replace(
        TINY,
        name="ldm-tiny-context",
        unet=replace(TINY.unet, in_channels=7, with_conditioning=True, cross_attention_dim=4, upcast_attention=True),
        conditions=bundle_conditions(),
    )


def test_latent_memory_estimate_uses_the_latent_grid():
    from engine.checkpoint_checks import estimate_memory

    estimate = estimate_memory(PRESETS["ldm-1mm"])
    assert estimate.parameters == 553_168_899 + 13_766_248
    # one UNet step on 20 x 28 x 20 latents, not on 160 x 224 x 160 voxels
    assert estimate.step_bytes < 2**30
    assert math.prod(PRESETS["ldm-1mm"].denoiser_shape) == 20 * 28 * 20
