"""Autoencoder checkpoints: one ``.safetensors`` file per trained ``AutoencoderKL``.

What ``brainsynth-cli train-autoencoder`` writes and ``brainsynth-cli train --autoencoder``
reads. The same safetensors layout and checks as a model checkpoint (:mod:`engine.checkpoint`):
tensors ``autoencoder.<key>`` (and ``ema.<key>``), and a ``"brainsynth"`` header entry::

    {"format": "brainsynth-autoencoder", "format_version": 1,
     "autoencoder": {...AutoencoderSpec...}, "grid": {...the decoded grid...},
     "intensity": {...}, "provenance": {...}}

Loading never runs code, reads the file once (its SHA-256 is what a latent model trained on it
records) and refuses weights that do not fit the spec, with the keys named.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import __version__
from engine.atomic import atomic_path
from engine.errors import BrainSynthError, CheckpointError
from engine.geometry import GridGeometry
from engine.intensity import IntensityMapping
from engine.latent import AutoencoderSpec

FORMAT_NAME = "brainsynth-autoencoder"
FORMAT_VERSION = 1


@dataclass
class AutoencoderCheckpoint:
    """A trained autoencoder: its spec, the grid it encodes, its weights.

    Attributes:
        spec: the ``AutoencoderKL`` arguments.
        grid: the grid of the volumes it encodes and decodes (RAS+, MNI).
        intensity: the intensity mapping of its model space.
        weights: state dict of MONAI's ``AutoencoderKL``.
        ema_weights: their moving average, if kept.
        provenance: how it was trained (reconstruction metrics included).
        path: the file read, if any.
        sha256: that file's SHA-256.
    """

    spec: AutoencoderSpec
    grid: GridGeometry
    intensity: IntensityMapping
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor] | None = None
    provenance: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    def select_weights(self, *, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        return self.ema_weights if prefer_ema and self.ema_weights is not None else self.weights

    def build(self, *, prefer_ema: bool = True) -> torch.nn.Module:
        """MONAI's ``AutoencoderKL`` with these weights, in eval mode."""
        model = self.spec.build()
        model.load_state_dict(self.select_weights(prefer_ema=prefer_ema), strict=True)
        return model.eval()


def save_autoencoder(
    path: str | Path,
    *,
    spec: AutoencoderSpec,
    grid: GridGeometry,
    intensity: IntensityMapping,
    weights: Mapping[str, torch.Tensor],
    ema_weights: Mapping[str, torch.Tensor] | None = None,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an autoencoder checkpoint atomically (``.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"autoencoder files end in .safetensors, not {path.name!r}")
    tensors = {f"autoencoder.{k}": v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    if ema_weights is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema_weights.items()})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "autoencoder": spec.to_dict(),
        "grid": grid.to_dict(),
        "intensity": intensity.to_dict(),
        "provenance": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__,
            **(provenance or {}),
        },
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"brainsynth": json.dumps(meta)})
    return path


def load_autoencoder(path: str | Path) -> AutoencoderCheckpoint:
    """Read an autoencoder checkpoint, every field and tensor checked.

    Raises:
        CheckpointError: a missing or damaged file, a model checkpoint given instead, or
            weights that do not fit the spec.
    """
    from engine.checkpoint import (
        _existing_file,
        _read_and_hash,
        _safetensors_header,
        _safetensors_tensors,
        check_state_dict,
    )
    from engine.checkpoint_checks import MAX_JSON_DEPTH, _json_depth

    path = _existing_file(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name} is not an autoencoder checkpoint (.safetensors from train-autoencoder)")
    data, digest = _read_and_hash(path, None)
    layout, start = _safetensors_header(path, data)
    text = (layout.get("__metadata__") or {}).get("brainsynth")
    if not isinstance(text, str) or _json_depth(text) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path.name} has no BrainSynth metadata; it is not an autoencoder checkpoint")
    try:
        header = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path.name}: its metadata is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        what = header.get("format") if isinstance(header, dict) else None
        hint = "; give the autoencoder from train-autoencoder" if what == "brainsynth-checkpoint" else ""
        raise CheckpointError(f"{path.name} is not an autoencoder checkpoint (format {what!r}){hint}")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path.name}: unknown autoencoder format version {header.get('format_version')!r}")
    try:
        spec = AutoencoderSpec.from_dict(header["autoencoder"])
        grid = GridGeometry.from_dict(header["grid"])
        intensity = IntensityMapping.from_dict(header.get("intensity", {}))
    except BrainSynthError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name} has a damaged description ({type(exc).__name__}: {exc})") from None
    if any(n % spec.downsampling_factor for n in grid.shape):
        raise CheckpointError(f"{path.name}: its grid does not divide by the autoencoder's factor")
    tensors = _safetensors_tensors(path, data, layout, start)
    weights = {k[len("autoencoder.") :]: v for k, v in tensors.items() if k.startswith("autoencoder.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    with torch.device("meta"):
        reference = spec.build()
    for source, state in ((path.name, weights), (f"{path.name} (ema)", ema)):
        if state is not None:
            check_state_dict(reference, state, source=source)
            if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
                raise CheckpointError(f"{source} holds NaN or infinite weights; use an earlier checkpoint")
    provenance = header.get("provenance", {})
    return AutoencoderCheckpoint(
        spec=spec,
        grid=grid,
        intensity=intensity,
        weights=weights,
        ema_weights=ema,
        provenance=provenance if isinstance(provenance, dict) else {},
        path=path,
        sha256=digest,
    )
