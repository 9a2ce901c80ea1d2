"""Step 3: registration of the brain to the MNI152 2009a template (Avants et al. 2011), ANTs.

Affine by default (the reference study's step), SyN on request. The moving image is the
extracted brain and the fixed image the (skull-stripped) template, so scalp and skull cannot
pull the fit. ANTs starts from an alignment of the centres of mass, which takes care of a
head placed anywhere in scanner space.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.geometry import MNI_BOX_SHAPE, mni_box_affine
from engine.preprocess.ants_io import require_ants, to_ants, to_array
from engine.preprocess.template import load_template

REGISTRATIONS = ("affine", "syn")


@dataclass
class Registration:
    """The transforms found, as ANTs writes them (in a private temporary folder).

    Attributes:
        kind: "affine", "syn" or "identity" (already in MNI space: nothing to do).
        forward: ANTs transform files mapping the scan into template space (apply in order).
        folder: temporary folder holding them; removed by :meth:`cleanup`.
    """

    kind: str
    forward: list[Path]
    folder: Path | None = None

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def register_to_template(brain, *, kind: str = "affine", fast: bool = False) -> Registration:
    """Register a brain (ANTs image, skull-stripped) to the template.

    Args:
        brain: ANTs image of the extracted brain (background 0).
        kind: "affine" or "syn" (affine, then symmetric normalisation).
        fast: fewer iterations (for tests and previews).

    Returns:
        The :class:`Registration`.
    """
    ants = require_ants()
    if kind not in REGISTRATIONS:
        raise ValueError(f"registration must be one of {REGISTRATIONS}, not {kind!r}")
    template = load_template()
    fixed = to_ants(template.t1, template.affine)
    folder = Path(tempfile.mkdtemp(prefix="brainsynth-reg-"))
    # Coarse levels only: an affine fit needs no 1 mm level, and each level roughly doubles
    # the time of the one before.
    affine_schedule = {
        "aff_iterations": (200, 100) if fast else (1000, 500, 250),
        "aff_shrink_factors": (6, 4) if fast else (6, 4, 2),
        "aff_smoothing_sigmas": (3, 2) if fast else (3, 2, 1),
    }
    try:
        result = ants.registration(
            fixed,
            brain,
            type_of_transform="Affine" if kind == "affine" else "SyN",
            outprefix=str(folder / "reg_"),
            reg_iterations=(20, 10, 0) if fast else (40, 20, 0),
            verbose=False,
            **affine_schedule,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Registration(kind=kind, forward=[Path(p) for p in result["fwdtransforms"]], folder=folder)


def box_reference():
    """An ANTs image on the 181 x 217 x 181 MNI box (the grid results are resampled onto)."""
    return to_ants(np.zeros(MNI_BOX_SHAPE, dtype=np.float32), mni_box_affine())


def to_mni_box(image, registration: Registration, *, interpolator: str = "linear") -> np.ndarray:
    """Resample an image in scan space onto the MNI box through the registration (RAS+ array)."""
    ants = require_ants()
    reference = box_reference()
    if registration.kind == "identity":
        out = ants.resample_image_to_target(image, reference, interp_type=interpolator)
    else:
        out = ants.apply_transforms(reference, image, [str(p) for p in registration.forward], interpolator=interpolator)
    return to_array(out)
