"""The MNI152 2009a template that registration aims at, from the files nilearn ships.

nilearn's package data include the ICBM 2009a nonlinear symmetric T1 template at 1 mm
(``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, skull-stripped, 197 x 233 x 189) and
``load_mni152_brain_mask`` derives its brain mask from the same files; neither downloads
anything. The template is brain only, which is why the pipeline registers the extracted brain
(brain to brain) rather than the whole head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.preprocess.errors import missing


@dataclass(frozen=True)
class Template:
    """The template on its own 1 mm RAS+ grid and resampled onto the MNI box.

    Attributes:
        t1: template intensities (0 to 1), its own grid.
        mask: its brain mask, its own grid.
        affine: 4x4 voxel→mm affine of that grid (RAS+).
        box_t1: the template in the 181 x 217 x 181 MNI box (for QC and similarity).
        box_mask: its brain mask in the MNI box.
    """

    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    box_t1: np.ndarray
    box_mask: np.ndarray


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The template (cached per process)."""
    from scipy import ndimage

    from engine.geometry import MNI_BOX_SHAPE, mni_box_affine

    try:
        from nilearn import datasets
    except ImportError:
        raise missing("nilearn", "registration to the MNI152 template (nilearn ships it)") from None
    image = datasets.load_mni152_template(resolution=1)
    mask_image = datasets.load_mni152_brain_mask(resolution=1)
    t1 = np.asarray(image.get_fdata(), dtype=np.float32)
    mask = np.asarray(mask_image.get_fdata()) > 0.5
    affine = np.asarray(image.affine, dtype=np.float64)
    # Both grids are 1 mm RAS; only the origins differ, so this is a shift.
    to_source = np.linalg.inv(affine) @ mni_box_affine()
    box_t1 = ndimage.affine_transform(t1, to_source, output_shape=MNI_BOX_SHAPE, order=1)
    box_mask = ndimage.affine_transform(mask.astype(np.float32), to_source, output_shape=MNI_BOX_SHAPE, order=1) > 0.5
    return Template(t1=t1, mask=mask, affine=affine, box_t1=box_t1, box_mask=box_mask)
