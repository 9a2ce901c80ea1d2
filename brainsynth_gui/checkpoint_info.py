"""A checkpoint's metadata as short HTML for the Model panel (Qt-free)."""

from __future__ import annotations

from html import escape

from engine.checkpoint import Checkpoint
from engine.display_text import printable
from engine.samplers import default_settings

NO_MODEL_HTML = (
    "<b>No model loaded.</b><br>"
    "Open a checkpoint with <i>File ▸ Open checkpoint…</i> (Ctrl+O) or drop a "
    "<tt>.safetensors</tt> file on the window. "
    "<tt>brainsynth-cli train</tt> makes one; a bundled demo model, once installed, opens automatically."
)


def _value(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in list(value.items())[:6])
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value[:6])
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _latent_rows(spec) -> list[tuple[str, str]]:
    latent = spec.latent
    if latent is None:
        return []
    return [
        ("Latent", f"{latent.channels} x {' x '.join(map(str, latent.shape))}, scale {latent.scale_factor:.4g}"),
        ("Autoencoder", ", ".join(map(str, latent.autoencoder.channels))),
    ]


def describe_checkpoint(checkpoint: Checkpoint) -> str:
    """Preset, grid, network, schedule, weights and training provenance, as HTML."""
    spec = checkpoint.spec
    grid = spec.grid
    sampler = default_settings(spec)
    rows = [
        ("Preset", spec.name),
        ("Grid", f"{' x '.join(map(str, grid.shape))} voxels"),
        ("Voxel size", f"{' x '.join(f'{s:.2f}' for s in grid.spacing_mm)} mm, MNI152, RAS+"),
        ("UNet channels", ", ".join(map(str, spec.unet.channels))),
        *_latent_rows(spec),
        ("Schedule", f"{spec.schedule.schedule}, T = {spec.schedule.num_train_timesteps}"),
        ("Predicts", spec.schedule.prediction_type),
        ("Default sampler", f"{sampler.name}, {sampler.steps} steps, {sampler.describe_spacing()}"),
        ("Weights", "EMA" if checkpoint.has_ema else "raw (no EMA kept)"),
    ]
    provenance = checkpoint.provenance or {}
    for key in ("source", "created", "software_version"):
        if key in provenance:
            rows.append((key.replace("_", " ").capitalize(), _value(provenance[key])))
    training = provenance.get("training")
    if isinstance(training, dict):
        for key, value in list(training.items())[:8]:
            rows.append((f"Training {key}".replace("_", " "), _value(value)))
    name = checkpoint.path.name if checkpoint.path else "checkpoint"
    body = "".join(f"<tr><td><i>{escape(printable(k))}</i></td><td>{escape(printable(v))}</td></tr>" for k, v in rows)
    return f"<b>{escape(name)}</b><table cellspacing='2'>{body}</table>"


def summarise_checkpoint(checkpoint: Checkpoint) -> str:
    """One line under the checkpoint's name: preset, grid and weights (the details fold away)."""
    spec = checkpoint.spec
    name = checkpoint.path.name if checkpoint.path else "checkpoint"
    grid = " x ".join(map(str, spec.grid.shape))
    weights = "EMA" if checkpoint.has_ema else "raw"
    kind = " · latent diffusion" if spec.latent is not None else ""
    return f"<b>{escape(name)}</b><br>{escape(spec.name)} preset · {grid} voxels{kind} · {weights} weights"
