"""Checks on a raw scan before and during preprocessing: refuse early, with a reason.

Every refusal is a :class:`PreprocessError` naming the scan and saying what was found. Two
findings are not refusals but skipped steps, each recorded as a note: a scan that is already
skull-stripped (brain extraction skipped) and a scan already in MNI space (registration
skipped).
"""

from __future__ import annotations

import numpy as np

from engine.preprocess.errors import PreprocessError
from engine.volumes import Volume

#: Smallest extent (mm) along every axis of a whole-brain T1; the brain itself is about
#: 140 x 170 x 120 mm, so a slab or a localiser is well below this.
MIN_EXTENT_MM = 100.0
#: Share of voxels at exactly the lowest value above which a scan may be skull-stripped.
STRIPPED_BACKGROUND_SHARE = 0.3
#: Plausible adult brain volumes (mL) for a stripped region or an extracted brain. Outside
#: this range the image is not a whole brain (a phantom, another organ, a partial scan).
BRAIN_VOLUME_ML = (600.0, 2600.0)
#: Correlation with the template, within both brain masks, above which a scan counts as
#: already in MNI space. Measured on a demo subject in MNI space: 0.91 as it is, 0.64 shifted by
#: 3 mm, 0.74 scaled by 5 %; so only a scan within a mm or two of the template skips
#: registration, and registering it would change it by about that much.
ALREADY_MNI_SIMILARITY = 0.8
#: Correlation after registration below which the registration has failed. Good affine
#: registrations of T1 brains reach 0.85 to 0.95.
MIN_REGISTRATION_SIMILARITY = 0.6


def check_raw_scan(volume: Volume) -> None:
    """Refuse what cannot be a whole-brain T1: a small field of view or no signal.

    (4-D and 2-D files are refused by :func:`engine.volumes.load_volume` already.)
    """
    extent = np.asarray(volume.shape) * np.asarray(volume.spacing_mm)
    if float(extent.min()) < MIN_EXTENT_MM:
        dims = " x ".join(f"{e:.0f}" for e in extent)
        raise PreprocessError(
            f"{volume.name} covers only {dims} mm; a whole-brain T1 needs at least {MIN_EXTENT_MM:.0f} mm "
            f"along every axis (is it a slab, a localiser or a single slice?)"
        )
    data = volume.data
    lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        raise PreprocessError(f"{volume.name} holds one value everywhere ({lo:g}); it is not an image of a head")
    if hi <= 0:
        raise PreprocessError(f"{volume.name} has no positive intensities; a T1 magnitude image is needed")


def voxel_volume_ml(volume: Volume) -> float:
    """Volume of one voxel in mL."""
    return float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0


def stripped_brain_mask(volume: Volume) -> np.ndarray | None:
    """The brain mask of an already skull-stripped scan, or None if the scan is not stripped.

    A stripped scan has a constant background (most of the image at exactly its lowest value)
    around one connected region of brain size. A raw head scan either has noise in the air or,
    if a converter zero-filled it, a head of 3 to 5 litres, both of which fail the test.
    """
    from scipy import ndimage

    data = volume.data
    background = float(data.min())
    at_background = data == background
    if float(at_background.mean()) < STRIPPED_BACKGROUND_SHARE:
        return None
    labels, n = ndimage.label(~at_background)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = ndimage.binary_fill_holes(labels == int(sizes.argmax()))
    volume_ml = float(region.sum()) * voxel_volume_ml(volume)
    lo, hi = BRAIN_VOLUME_ML
    return region if lo <= volume_ml <= hi else None


def check_brain_volume(name: str, volume_ml: float) -> None:
    """Refuse an extracted brain whose volume no adult brain has."""
    lo, hi = BRAIN_VOLUME_ML
    if not lo <= volume_ml <= hi:
        raise PreprocessError(
            f"{name} does not look like a brain scan: the extracted brain is {volume_ml:.0f} mL "
            f"(adult brains are {lo:.0f} to {hi:.0f} mL); check that it is a whole-head T1"
        )


def similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes within ``mask`` (0 where either is constant)."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def check_registration(name: str, value: float) -> None:
    """Refuse a registration whose result hardly resembles the template."""
    if value < MIN_REGISTRATION_SIMILARITY:
        raise PreprocessError(
            f"{name}: registration to the MNI template failed (similarity {value:.2f}, at least "
            f"{MIN_REGISTRATION_SIMILARITY:.2f} needed); check the scan's orientation and that it is a T1 of a head"
        )
