"""The one background rule: which voxels of a standard-space volume are brain, and zero the rest.

Every volume a reader or a user is shown as "background 0" passes this rule, whatever made it:
exported synthetic volumes (:func:`engine.export.export_batch`) and every case of a reader study
(:func:`engine.study.display.display_array`), real or synthetic. Before this rule, synthetic
exports kept the network's faint background (values up to ~45 of 1000 in the corners), and the
study's masking then took Otsu's threshold for them (a noisy background) but a 5 % threshold for
skull-stripped real scans, so synthetic brains had a hard edge near 250 and real ones a dim rim
down to 50: a reader could tell them apart by the edge alone.

The rule, on standard-space intensities (the brain's upper percentile at ``scale``):

1. brain = voxels above ``BRAIN_THRESHOLD_FRACTION`` x ``scale`` (10 %: above the background
   noise of synthetic volumes and most of the halo that resampling leaves around a stripped
   real brain, below grey matter and most CSF);
2. keep the largest connected part (voxels joined through faces);
3. fill holes, so dark CSF enclosed by tissue (ventricles) stays in the brain with its own value;
4. every voxel outside is exactly 0.

The rule is idempotent (its output passes it unchanged), so an export shown in a reader study
gets the same mask again. The study's display pipeline then peels one voxel off every case's
surface (:data:`engine.study.display` notes why).
"""

from __future__ import annotations

import numpy as np

#: Share of the standard-space ``scale`` above which a voxel counts as brain (see the module notes).
BRAIN_THRESHOLD_FRACTION = 0.10

#: One line for sidecars and reports.
RULE_DESCRIPTION = (
    f"brain = largest connected region above {BRAIN_THRESHOLD_FRACTION:.0%} of the intensity scale, "
    "holes filled; every voxel outside it exactly 0"
)


def brain_region(standard: np.ndarray, *, scale: float) -> np.ndarray:
    """The brain mask of a standard-space volume by the one background rule.

    Args:
        standard: 3-D standard-space intensities (0 .. ``scale``), RAS+, finite.
        scale: the standard-space value of the brain's upper percentile (normally 1000).

    Returns:
        bool array of ``standard.shape``; all False when nothing lies above the threshold.
    """
    data = np.asarray(standard, dtype=np.float32)
    return largest_region_filled(data > np.float32(BRAIN_THRESHOLD_FRACTION * float(scale)))


def largest_region_filled(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of ``mask`` with its holes filled (all False stays all False)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    return ndimage.binary_fill_holes(mask)


def zero_background(standard: np.ndarray, *, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply the background rule: a float32 copy with every voxel outside the brain exactly 0.

    Args:
        standard: 3-D standard-space intensities (0 .. ``scale``).
        scale: the standard-space value of the brain's upper percentile.

    Returns:
        (masked float32 array, bool brain mask).
    """
    data = np.array(standard, dtype=np.float32, copy=True)
    mask = brain_region(data, scale=scale)
    data[~mask] = 0.0
    return data, mask
