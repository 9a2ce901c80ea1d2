"""Grid geometry: where the model's voxels sit in MNI space.

Conventions (see docs/architecture.md): arrays are RAS+ (axis 0 left→right, axis 1 posterior→anterior,
axis 2 inferior→superior); affines map voxel indices to millimetres.

The reference data live in the 1 mm MNI box of 181 x 217 x 181 voxels whose first voxel
centre is at (-90, -126, -72) mm. A model grid of n' voxels laid over an axis of n voxels of
spacing s has spacing s·n/n' and its first centre at origin + (s·n/n' − s)/2, so the outer
edges of the two grids coincide and nothing shifts by half a voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import BrainSynthError
from engine.field_checks import check_float, check_int, check_keys, check_sequence

MNI_BOX_SHAPE: tuple[int, int, int] = (181, 217, 181)
MNI_BOX_SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 1.0)
MNI_BOX_ORIGIN_MM: tuple[float, float, float] = (-90.0, -126.0, -72.0)

#: Largest model grid along one axis, and in all (voxels): 16x the reference study's grid,
#: beyond which one float32 volume alone is over half a gigabyte.
MAX_GRID_SIZE = 1024
MAX_GRID_VOXELS = 2**27


def mni_box_affine() -> np.ndarray:
    """Affine of the 1 mm MNI box (RAS+, mm)."""
    affine = np.diag([*MNI_BOX_SPACING_MM, 1.0])
    affine[:3, 3] = MNI_BOX_ORIGIN_MM
    return affine


@dataclass(frozen=True)
class GridGeometry:
    """A regular RAS+ voxel grid in MNI space.

    Attributes:
        shape: voxels along (R, A, S).
        spacing_mm: voxel size along each axis in mm.
        origin_mm: world position (mm, RAS) of the centre of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        shape = check_sequence(self.shape, "grid.shape", min_len=3, max_len=3)
        shape = tuple(check_int(n, f"grid.shape[{i}]", lo=1, hi=MAX_GRID_SIZE) for i, n in enumerate(shape))
        voxels = shape[0] * shape[1] * shape[2]
        if voxels > MAX_GRID_VOXELS:
            raise BrainSynthError(
                f"grid {' x '.join(map(str, shape))} has {voxels:,} voxels; at most {MAX_GRID_VOXELS:,} are supported "
                f"(one volume alone would take {voxels * 4 / 2**30:.1f} GiB)"
            )
        spacing = check_sequence(self.spacing_mm, "grid.spacing_mm", min_len=3, max_len=3)
        spacing = tuple(
            check_float(v, f"grid.spacing_mm[{i}]", lo=0.0, hi=100.0, lo_open=True) for i, v in enumerate(spacing)
        )
        origin = check_sequence(self.origin_mm, "grid.origin_mm", min_len=3, max_len=3)
        origin = tuple(check_float(v, f"grid.origin_mm[{i}]", lo=-1e5, hi=1e5) for i, v in enumerate(origin))
        # Plain tuples of Python numbers, whatever came in (lists from JSON, numpy scalars).
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)

    @classmethod
    def over_mni_box(cls, shape: tuple[int, int, int]) -> GridGeometry:
        """The grid of ``shape`` voxels whose outer edges coincide with the 1 mm MNI box."""
        spacing = tuple(s * n / m for s, n, m in zip(MNI_BOX_SPACING_MM, MNI_BOX_SHAPE, shape, strict=True))
        origin = tuple(
            o + (sp - s) / 2 for o, sp, s in zip(MNI_BOX_ORIGIN_MM, spacing, MNI_BOX_SPACING_MM, strict=True)
        )
        return cls(shape=tuple(int(n) for n in shape), spacing_mm=spacing, origin_mm=origin)

    @classmethod
    def centred_on_mni_box(cls, shape: tuple[int, int, int], *, spacing_mm: float = 1.0) -> GridGeometry:
        """The grid of ``shape`` voxels of ``spacing_mm`` whose centre is the 1 mm MNI box's centre.

        For grids that were not laid over the box (the MONAI brain LDM bundle's 160 x 224 x 160 at
        1 mm, cropped or padded from its own MNI registration): the box centre is (0, -18, 18) mm.
        """
        centre = [
            o + (n - 1) * s / 2 for o, n, s in zip(MNI_BOX_ORIGIN_MM, MNI_BOX_SHAPE, MNI_BOX_SPACING_MM, strict=True)
        ]
        origin = tuple(c - (int(n) - 1) * spacing_mm / 2 for c, n in zip(centre, shape, strict=True))
        return cls(shape=tuple(int(n) for n in shape), spacing_mm=(spacing_mm,) * 3, origin_mm=origin)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel→mm affine (RAS+)."""
        affine = np.diag([*self.spacing_mm, 1.0])
        affine[:3, 3] = self.origin_mm
        return affine

    def voxel_to_mm(self, ijk) -> np.ndarray:
        """World coordinates (mm, RAS) of voxel index (or indices, last axis 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ np.diag(self.spacing_mm) + np.asarray(self.origin_mm)

    def mm_to_voxel(self, xyz) -> np.ndarray:
        """Continuous voxel index of world coordinates (mm, RAS)."""
        xyz = np.asarray(xyz, dtype=float)
        return (xyz - np.asarray(self.origin_mm)) / np.asarray(self.spacing_mm)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "affine": self.affine.tolist(),
            "space": "MNI152",
            "orientation": "RAS+",
        }

    @classmethod
    def from_dict(cls, data: dict) -> GridGeometry:
        """The grid a :meth:`to_dict` record describes (``affine`` and the labels are derived, not read)."""
        check_keys(data, "grid", allowed=("shape", "spacing_mm", "origin_mm", "affine", "space", "orientation"))
        return cls(shape=data["shape"], spacing_mm=data["spacing_mm"], origin_mm=data["origin_mm"])
