"""Small synthetic brain-like volumes for the volume, preprocessing, export and prepare tests.

The phantom is an MNI-registered, skull-stripped "brain": an ellipsoid where the MNI152 brain
lies (centre (0, -18, 15) mm, radii 68 x 85 x 62 mm), grey-matter shell, white matter, two
dark ventricles and a bright blob at a known mm position, on a coarse (about 4 mm) grid over
the MNI box so tests stay fast (about 45 x 54 x 45 voxels).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from engine.geometry import GridGeometry

PHANTOM_SHAPE = (45, 54, 45)
BLOB_MM = np.array([20.0, -30.0, 30.0])


def phantom_grid(shape: tuple[int, int, int] = PHANTOM_SHAPE) -> GridGeometry:
    return GridGeometry.over_mni_box(shape)


def phantom(shape: tuple[int, int, int] = PHANTOM_SHAPE, *, shift_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped brain phantom in RAS+ on a grid over the MNI box.

    Args:
        shape: grid shape.
        shift_mm: move the brain (not the grid) by this many mm, to fake an unregistered scan.

    Returns:
        (float32 data, 4x4 affine).
    """
    grid = phantom_grid(shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = grid.voxel_to_mm(ijk) - np.asarray(shift_mm)
    centre = np.array([0.0, -18.0, 15.0])
    radii = np.array([68.0, 85.0, 62.0])
    r = np.sqrt((((xyz - centre) / radii) ** 2).sum(-1))
    data = np.zeros(shape, np.float32)
    data[r < 1.0] = 600.0  # grey matter
    data[r < 0.85] = 900.0  # white matter
    for side in (-12.0, 12.0):  # ventricles, enclosed by tissue
        rv = np.sqrt((((xyz - (centre + np.array([side, 0.0, 5.0]))) / [6.0, 25.0, 10.0]) ** 2).sum(-1))
        data[rv < 1.0] = 150.0
    blob = np.exp(-(((xyz - BLOB_MM) ** 2).sum(-1)) / (2 * 6.0**2))
    data += np.where(r < 1.0, 600.0 * blob, 0.0).astype(np.float32)  # background stays exactly 0
    return data, grid.affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, axcodes: str | None = None) -> Path:
    """Save ``data`` (RAS+) as NIfTI, optionally reoriented to other storage axes (e.g. "LPS")."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    if axcodes is not None:
        ornt = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(nib.aff2axcodes(affine)), nib.orientations.axcodes2ornt(tuple(axcodes))
        )
        img = img.as_reoriented(ornt)
        assert "".join(nib.aff2axcodes(img.affine)) == axcodes
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return path


def write_phantom(path: Path, *, axcodes: str | None = None, **kwargs) -> Path:
    data, affine = phantom(**kwargs)
    return write_nifti(path, data, affine, axcodes=axcodes)
