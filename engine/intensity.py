"""The one invertible mapping between scanner intensities and model space.

Three spaces:

* **scanner** – whatever the input file holds (arbitrary units).
* **standard** – what every file BrainSynth writes holds (prepared real scans and exported
  synthetic volumes alike, so the two compare directly in any viewer): background 0, the
  ``upper_percentile`` of the brain mask at ``scale`` (1000 by default), clipped to [0, scale].
* **model** – what the network sees: standard linearly mapped onto [-1, 1], background -1.

Why this and not z-scores within the mask: MONAI's schedulers clamp the predicted x_0 to
[-1, 1] (``clip_sample=True``, the reference study's setting), so model space must be
bounded by exactly that range or every sample is silently clipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.field_checks import check_float, check_keys, check_str


@dataclass(frozen=True)
class IntensityMapping:
    """Parameters of the scanner → standard → model mapping.

    Attributes:
        upper_percentile: percentile of brain-mask intensities mapped to ``scale``.
        scale: standard-space value of that percentile (and of model +1).
        kind: name of the mapping, stored in checkpoints and sidecars.
    """

    upper_percentile: float = 99.5
    scale: float = 1000.0
    kind: str = "brain-percentile"

    def __post_init__(self) -> None:
        check_float(self.upper_percentile, "intensity.upper_percentile", lo=0.0, hi=100.0, lo_open=True)
        # scale 0 would map every volume to all zeros on export.
        check_float(self.scale, "intensity.scale", lo=0.0, hi=1e9, lo_open=True)
        check_str(self.kind, "intensity.kind")

    def scanner_to_standard(self, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Scale a scan so that background is 0 and the brain's upper percentile is ``scale``.

        Args:
            data: scanner intensities.
            mask: boolean brain mask, same shape; voxels outside are set to 0.

        Returns:
            float32 array in [0, scale].
        """
        brain = data[mask]
        if brain.size == 0:
            raise ValueError("empty brain mask")
        top = float(np.percentile(brain, self.upper_percentile))
        if not np.isfinite(top) or top <= 0:
            raise ValueError("brain intensities are not positive")
        out = np.clip(data.astype(np.float32) * np.float32(self.scale / top), 0.0, self.scale)
        out[~mask] = 0.0
        return out.astype(np.float32)

    def standard_to_model(self, standard):
        """Standard space [0, scale] → model space [-1, 1] (works on numpy arrays and tensors)."""
        return standard * (2.0 / self.scale) - 1.0

    def model_to_standard(self, model):
        """Model space → standard space, clipping to the valid range first."""
        if isinstance(model, np.ndarray):
            model = np.clip(model, -1.0, 1.0)
        else:
            model = model.clamp(-1.0, 1.0)
        return (model + 1.0) * (self.scale / 2.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IntensityMapping:
        check_keys(data, "intensity", allowed=("upper_percentile", "scale", "kind"))
        return cls(**{k: data[k] for k in ("upper_percentile", "scale", "kind") if k in data})
