"""Training a latent-diffusion model end to end: the autoencoder, then the UNet on its latents."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from engine.autoencoder_checkpoint import load_autoencoder
from engine.checkpoint import load_checkpoint
from engine.errors import CheckpointError
from engine.specs import PRESETS
from engine.training.autoencoder import AutoencoderTrainConfig, perceptual_loss, train_autoencoder
from engine.training.errors import TrainingError
from tests.training_data import tiny_run_config, write_volumes

SPEC = PRESETS["ldm-tiny"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    write_volumes(folder, SPEC, 6)
    return folder


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory, scans):
    root = tmp_path_factory.mktemp("ae")
    config = AutoencoderTrainConfig(
        preset="ldm-tiny",
        data=[str(scans)],
        out=str(root / "run"),
        epochs=2,
        batch_size=2,
        lr=1e-3,
        adversarial_warmup_epochs=1,
        device="cpu",
        sample_every=1,
        cache_dir=str(root / "cache"),
        val_fraction=0.34,
    )
    lines: list[str] = []
    best = train_autoencoder(config, callback=lines.append)
    return config, best, lines


def test_autoencoder_run_writes_checkpoint_logs_and_pngs(autoencoder_run):
    config, best, lines = autoencoder_run
    ae = load_autoencoder(best)
    assert ae.spec == SPEC.latent.autoencoder
    assert ae.grid == SPEC.grid
    assert ae.ema_weights is not None
    rows = list(csv.DictReader((config.run_dir / "logs" / "epochs.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["generator_adv"] == ""  # warm-up: no adversarial term yet
    assert float(rows[1]["generator_adv"]) > 0
    for key in ("val_l1", "psnr", "ssim", "ms_ssim"):  # MS-SSIM: 2 scales, window 3 on 16 x 24 x 16
        assert np.isfinite(float(rows[1][key]))
    assert (config.run_dir / "samples" / "epoch_0002.png").exists()
    assert "PSNR" in lines[-1]
    assert ae.provenance["reconstruction"]["psnr"] is not None


def test_autoencoder_run_resumes_after_its_last_epoch(autoencoder_run, tmp_path):
    import shutil

    config, _, _ = autoencoder_run
    copy = tmp_path / "run"
    shutil.copytree(config.run_dir, copy)
    from engine.training.autoencoder import saved_config

    resumed = saved_config(copy, out=str(copy), epochs=3)
    lines: list[str] = []
    train_autoencoder(resumed, resume=True, callback=lines.append)
    assert "resuming after epoch 2" in lines
    rows = list(csv.DictReader((copy / "logs" / "epochs.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    with pytest.raises(TrainingError, match="not empty"):
        train_autoencoder(saved_config(copy, out=str(copy)))


def test_perceptual_loss_offline_is_one_clear_error(tmp_path, scans):
    try:
        import lpips  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("lpips is installed here")
    config = AutoencoderTrainConfig(
        preset="ldm-tiny", data=[str(scans)], out=str(tmp_path / "run"), perceptual_weight=1
    )
    with pytest.raises(TrainingError, match="--perceptual-weight 0"):
        train_autoencoder(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(TrainingError, match="LPIPS"):
        perceptual_loss(torch.device("cpu"))


def test_train_on_latents_of_the_autoencoder(autoencoder_run, scans, tmp_path):
    from engine.training.trainer import train

    _, best, _ = autoencoder_run
    config = tiny_run_config(tmp_path, scans, preset="ldm-tiny", autoencoder=str(best), epochs=1, sample_every=1)
    train(config)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert ckpt.spec.latent is not None
    assert ckpt.spec.latent.scale_factor != 1.0
    # the scale factor is 1 / std of the training latents, which the run cached
    from safetensors.torch import load_file

    cached = load_file(tmp_path / "run" / "latents.safetensors")
    assert ckpt.spec.latent.scale_factor == pytest.approx(1.0 / float(cached["train"].double().std()))
    # the autoencoder inside is the trained one, unchanged by training the UNet
    ae = load_autoencoder(best)
    for key, value in ae.select_weights().items():
        assert torch.equal(ckpt.weights[f"autoencoder.{key}"], value)
    assert ckpt.provenance["training"]["autoencoder_sha256"] == ae.sha256
    assert (tmp_path / "run" / "samples" / "epoch_0001.png").exists()


def test_latent_preset_without_autoencoder_and_wrong_files_are_refused(
    tmp_path, scans, autoencoder_run, tiny_checkpoint
):
    from engine.training.trainer import train

    with pytest.raises(TrainingError, match="train its autoencoder first"):
        train(tiny_run_config(tmp_path, scans, preset="ldm-tiny"))
    with pytest.raises(TrainingError, match="choose a latent preset"):
        train(tiny_run_config(tmp_path, scans, preset="tiny", autoencoder=str(autoencoder_run[1])))
    with pytest.raises(CheckpointError, match="not an autoencoder checkpoint"):
        train(tiny_run_config(tmp_path, scans, preset="ldm-tiny", autoencoder=str(tiny_checkpoint)))


def test_cli_train_autoencoder_and_resume(tmp_path, scans, capsys):
    from training_cli.main import main

    run = tmp_path / "run"
    common = ["--cache-dir", str(tmp_path / "cache")]
    args = ["train-autoencoder", "--data", str(scans), "--out", str(run), "--preset", "ldm-tiny", "--epochs", "1"]
    assert main([*args, "--device", "cpu", "--sample-every", "0", *common]) == 0
    assert (run / "autoencoder.safetensors").exists()
    assert main(["train-autoencoder", "--resume", str(run), "--epochs", "2"]) == 0
    assert "epoch 2" in capsys.readouterr().out
    assert main(["train-autoencoder", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "cannot be read" in capsys.readouterr().err


def test_cli_train_on_latents_then_sample(tmp_path, scans, autoencoder_run, capsys):
    """The command line path of the README: train --autoencoder, then sample the checkpoint."""
    import nibabel as nib

    from training_cli.main import main

    _, best, _ = autoencoder_run
    run = tmp_path / "ldm"
    args = ["train", "--preset", "ldm-tiny", "--autoencoder", str(best), "--data", str(scans), "--out", str(run)]
    options = ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--sample-every", "0", "--no-tensorboard"]
    assert main([*args, *options, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "scale factor" in capsys.readouterr().out
    checkpoint = run / "checkpoints" / "last.safetensors"
    assert load_checkpoint(checkpoint).spec.latent is not None
    out = tmp_path / "synth"
    sample = ["sample", "--checkpoint", str(checkpoint), "--num-samples", "1", "--steps", "2", "--out", str(out)]
    assert main([*sample, "--device", "cpu", "--seed", "0"]) == 0
    (volume,) = sorted(out.glob("*.nii.gz"))
    assert nib.load(volume).shape == SPEC.grid.shape  # decoded to the autoencoder's grid, not the latent's
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--autoencoder",
                str(best),
                "--data",
                str(scans),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    assert "choose a latent preset" in capsys.readouterr().err
