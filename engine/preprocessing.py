"""Putting a loaded scan onto a model grid, and model-grid volumes back onto the MNI box.

Everything here works in world coordinates (mm): a target voxel's centre is mapped through
the target affine to mm and back through the inverse of the source affine to a continuous
source voxel index. The storage orientation of a scan (RAS, LPS, PIR, ...) therefore never
changes the result, and nothing is ever resized "by array shape".

What this module assumes about its input (the reference study's preprocessing, done before
BrainSynth sees a scan): the scan is affinely registered to MNI152 space, and ideally
skull-stripped with the background at 0. It does not register scans; a scan that is clearly
not in MNI space is refused with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import NotInMNISpaceError, VolumeError
from engine.geometry import MNI_BOX_ORIGIN_MM, MNI_BOX_SHAPE, MNI_BOX_SPACING_MM, GridGeometry
from engine.intensity import IntensityMapping
from engine.masking import largest_region_filled
from engine.volumes import Volume, world_bounds_mm

if TYPE_CHECKING:  # engine.specs imports torch; not needed at run time here
    from engine.specs import ModelSpec

# An MNI-registered brain fills roughly 20 % of the 181 x 217 x 181 box (about 1.4 of 7.1
# litres); a mask below this share of the grid means the brain is elsewhere or tiny.
MIN_BRAIN_FRACTION = 0.05
# Share of the MNI box that the scan's field of view must cover.
MIN_FOV_OVERLAP = 0.25
# Centre of the MNI152 brain (mm, RAS), and how far a registered brain mask's centre of mass
# may lie from it. Affine registration leaves a few mm; a scan in scanner coordinates is
# typically off by several centimetres. Generous, because a head mask (non-stripped input)
# reaches lower than the brain.
MNI_BRAIN_CENTRE_MM = np.array([0.0, -18.0, 15.0])
MAX_CENTRE_OFFSET_MM = 50.0

_REGISTER_HINT = (
    "scans must be registered to MNI152 space first (an affine registration, as the reference "
    "study did, e.g. with ANTs, FSL FLIRT or AssemblyNet), ideally skull-stripped; "
    "brainsynth-cli preprocess does all of it offline"
)


@dataclass
class PreparedScan:
    """A real scan on a model grid, in standard intensity space.

    Attributes:
        data: float32 array of ``grid.shape`` (RAS+), standard space: background 0, the
            brain's upper percentile at ``intensity.scale``.
        mask: bool array of ``grid.shape``, the brain (or head) mask used.
        scale_factor: standard = scanner x scale_factor inside the mask (before clipping).
        grid: the model grid the data lie on; ``grid.affine`` is their affine.
        intensity: the mapping that produced ``data``.
        source: the file the scan came from, or None.
        warnings: load-time warnings carried over from the :class:`Volume`.
    """

    data: np.ndarray
    mask: np.ndarray
    scale_factor: float
    grid: GridGeometry
    intensity: IntensityMapping
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel→mm affine of ``data`` (RAS+)."""
        return self.grid.affine

    def to_model(self) -> np.ndarray:
        """The data in model space [-1, 1] (background -1), float32."""
        return np.asarray(self.intensity.standard_to_model(self.data), dtype=np.float32)


def _antialias_sigmas(matrix: np.ndarray) -> np.ndarray:
    """Gaussian sigma per source axis (source voxels) before sampling with ``matrix``.

    ``matrix`` maps a step of one target voxel to source voxel steps; row a summed in absolute
    value is how many source voxels along axis a one target voxel spans. Shrinking by a
    factor f > 1 gets sigma = (f - 1) / 2, scikit-image's ``resize(anti_aliasing=True)`` rule:
    enough to suppress aliasing without blurring more than the coarser grid does anyway.
    """
    footprint = np.abs(matrix).sum(axis=1)
    return np.maximum(0.0, (footprint - 1.0) / 2.0)


def resample(
    data: np.ndarray,
    *,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    order: int,
) -> np.ndarray:
    """Sample ``data`` (voxel grid ``source_affine``) at the voxel centres of the target grid."""
    from scipy import ndimage

    if order not in (0, 1, 3):
        raise ValueError(f"interpolation order must be 0, 1 or 3, not {order}")
    # target voxel → mm → source voxel
    mapping = np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    source = np.asarray(data, dtype=np.float32)
    sigmas = _antialias_sigmas(matrix)
    if order > 0 and np.any(sigmas > 0.05):
        # "constant" keeps outside-the-scan at 0 instead of smearing edge voxels outward.
        source = ndimage.gaussian_filter(source, sigma=sigmas, mode="constant", cval=0.0)
    # "grid-constant" treats everything outside the scan as 0 *and* interpolates towards it, so
    # the outermost half voxel fades out instead of being cut off abruptly as with "constant".
    out = ndimage.affine_transform(
        source,
        matrix,
        offset=offset,
        output_shape=tuple(int(n) for n in target_shape),
        order=order,
        mode="grid-constant",
        cval=0.0,
        prefilter=order > 1,
        output=np.float32,
    )
    if order > 1:
        # Cubic splines overshoot at edges; never invent intensities outside the input's range.
        np.clip(out, min(float(source.min()), 0.0), float(source.max()), out=out)
    return out


def resample_to_grid(volume: Volume, grid: GridGeometry, *, order: int = 1) -> np.ndarray:
    """Resample a scan onto a model grid in world coordinates.

    When the grid is coarser than the scan along an axis, the scan is Gaussian-smoothed
    first (sigma from the spacing ratio per axis, in source voxels) so fine detail does not
    alias. Grid voxels outside the scan's field of view are 0.

    Args:
        volume: the scan; its affine (mm) may have any orientation.
        grid: the target grid (RAS+, mm).
        order: interpolation order: 0 nearest, 1 trilinear, 3 cubic spline.

    Returns:
        float32 array of ``grid.shape`` in RAS+.
    """
    return resample(
        volume.data, source_affine=volume.affine, target_affine=grid.affine, target_shape=grid.shape, order=order
    )


def resample_grid_to_grid(
    data: np.ndarray,
    source_grid: GridGeometry,
    *,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    order: int = 1,
) -> np.ndarray:
    """Resample a volume on a model grid onto another grid, typically the 1 mm MNI box.

    Used on export: ``resample_grid_to_grid(x, spec.grid, target_affine=mni_box_affine(),
    target_shape=MNI_BOX_SHAPE)`` puts an 84 x 128 x 84 sample onto 181 x 217 x 181 voxels of
    1 mm with every structure at the same world position.

    Args:
        data: array of ``source_grid.shape`` (RAS+).
        source_grid: the grid ``data`` lies on.
        target_affine: 4x4 voxel→mm affine of the target grid.
        target_shape: target grid shape.
        order: 1 (trilinear) or 3 (cubic spline, clipped to the input's range).

    Returns:
        float32 array of ``target_shape``.
    """
    if tuple(data.shape) != tuple(source_grid.shape):
        raise ValueError(f"data shape {tuple(data.shape)} does not match the grid {tuple(source_grid.shape)}")
    return resample(
        data,
        source_affine=source_grid.affine,
        target_affine=target_affine,
        target_shape=target_shape,
        order=order,
    )


def brain_mask(data: np.ndarray, *, fraction: float = 0.05) -> np.ndarray:
    """A brain mask by thresholding, filling holes and keeping the largest connected part.

    Assumptions: the reference study's scans were skull-stripped, with an exactly constant
    background (0). For such data every voxel above ``fraction`` of the robust maximum (the
    99.5th percentile of the voxels above the background) is brain, and filling holes puts
    back dark CSF enclosed by tissue. If the background is *not* constant (a raw scan with
    noise) Otsu's threshold separates noise from tissue instead, and the mask is the largest
    bright structure: usually the brain (dark skull separates it from the scalp), but scalp,
    marrow or neck may join it. BrainSynth does not skull-strip: strip scans beforehand for a
    true brain mask and an intensity normalisation like the reference study's.

    Args:
        data: 3-D intensities (any units), finite.
        fraction: share of the robust maximum that counts as tissue for stripped scans.

    Returns:
        bool array of ``data.shape``; all False if there is nothing above the background.
    """
    from skimage.filters import threshold_otsu

    data = np.asarray(data, dtype=np.float32)
    background = float(data.min())
    above = data[data > background]
    if above.size == 0:
        return np.zeros(data.shape, dtype=bool)
    robust_max = float(np.percentile(above, 99.5))
    low = background + fraction * (robust_max - background)
    n_low = int(np.count_nonzero(data <= low))
    n_background = int(data.size - above.size)
    if n_background >= 0.5 * n_low:
        # Most dark voxels are exactly the background value: a stripped (or zero-filled) scan.
        # Not "all": resampling blurs a thin halo of small values around a stripped brain.
        threshold = low
    else:
        # Noisy background: Otsu on the range clipped to the robust maximum, so a few very
        # bright voxels (vessels, fat) do not drag the threshold up.
        threshold = float(threshold_otsu(np.minimum(data, robust_max)))
    return largest_region_filled(data > threshold)


def mni_box_bounds_mm() -> tuple[np.ndarray, np.ndarray]:
    """Outer edges (mm, RAS) of the 1 mm MNI box: about (-90.5, -126.5, -72.5) to (90.5, 90.5, 108.5)."""
    origin = np.asarray(MNI_BOX_ORIGIN_MM)
    spacing = np.asarray(MNI_BOX_SPACING_MM)
    shape = np.asarray(MNI_BOX_SHAPE)
    return origin - spacing / 2, origin + spacing * (shape - 0.5)


def _check_field_of_view(volume: Volume) -> None:
    lo, hi = world_bounds_mm(volume.affine, volume.shape)
    box_lo, box_hi = mni_box_bounds_mm()
    overlap = np.clip(np.minimum(hi, box_hi) - np.maximum(lo, box_lo), 0.0, None)
    share = float(np.prod(overlap) / np.prod(box_hi - box_lo))
    if share < MIN_FOV_OVERLAP:
        extent = ", ".join(f"{a:.0f} to {b:.0f}" for a, b in zip(lo, hi, strict=True))
        what = "does not overlap" if share == 0 else f"covers only {share:.0%} of"
        raise NotInMNISpaceError(
            f"{volume.name} is not in MNI space: its field of view ({extent} mm) {what} the MNI box "
            f"(-90 to 90, -126 to 90, -72 to 108 mm); {_REGISTER_HINT}"
        )


def prepare_scan(volume: Volume, spec: ModelSpec) -> PreparedScan:
    """Resample a scan onto ``spec.grid``, mask it and map it to standard intensity space.

    Steps: check the scan lies in MNI space; resample it in world coordinates (trilinear,
    anti-aliased) onto the grid; :func:`brain_mask` on the resampled data;
    ``spec.intensity.scanner_to_standard``.

    Args:
        volume: a loaded scan (see :func:`engine.volumes.load_volume`).
        spec: a :class:`engine.specs.ModelSpec`; only ``spec.grid`` and ``spec.intensity`` are used.

    Returns:
        The prepared scan.

    Raises:
        NotInMNISpaceError: the scan is not registered to MNI space (field of view off the MNI
            box, brain too small or far from the MNI brain's position): preprocess it first.
        VolumeError: it has no positive intensities.
    """
    grid: GridGeometry = spec.grid
    mapping: IntensityMapping = spec.intensity
    _check_field_of_view(volume)
    resampled = resample_to_grid(volume, grid, order=1)
    mask = brain_mask(resampled)

    share = float(mask.mean())
    if share < MIN_BRAIN_FRACTION:
        raise NotInMNISpaceError(
            f"{volume.name}: the brain covers only {share:.1%} of the MNI grid (about 20% expected), "
            f"so the scan is not in MNI space or holds little brain; {_REGISTER_HINT}"
        )
    centre = grid.voxel_to_mm(np.argwhere(mask).mean(axis=0))
    offset = float(np.linalg.norm(centre - MNI_BRAIN_CENTRE_MM))
    if offset > MAX_CENTRE_OFFSET_MM:
        where = ", ".join(f"{c:.0f}" for c in centre)
        raise NotInMNISpaceError(
            f"{volume.name} is not in MNI space: its brain is centred at ({where}) mm, {offset:.0f} mm from "
            f"where the MNI brain lies; {_REGISTER_HINT}"
        )

    # The same percentile IntensityMapping.scanner_to_standard uses, computed here too so the
    # factor can be reported (sidecars) and the mapping inverted later.
    top = float(np.percentile(resampled[mask], mapping.upper_percentile))
    if not np.isfinite(top) or top <= 0:
        raise VolumeError(f"{volume.name}: the brain's intensities are not positive; a T1 magnitude image is needed")
    standard = mapping.scanner_to_standard(resampled, mask)
    return PreparedScan(
        data=standard,
        mask=mask,
        scale_factor=float(mapping.scale / top),
        grid=grid,
        intensity=mapping,
        source=volume.source,
        warnings=list(volume.warnings),
    )
