"""Demo subjects as a scanner would write them: a head around the brain, in scanner space.

Test data with a known answer for ``brainsynth-cli preprocess``: each demo subject (a
skull-stripped brain in the 1 mm MNI box, :mod:`engine.demo_data`) is wrapped in the layers a
T1-weighted head scan shows around the brain and written the way scanners write files:

* CSF around the brain (dark), the skull (dark cortical bone with brighter marrow between),
  the scalp (bright fat and skin), then air with Rician noise;
* a smooth multiplicative bias field over the whole head;
* a scanner-space affine: an oblique rotation of the slab and a shift of the head away from
  the origin, anisotropic voxels and another axis order (the array is stored "PIL"-like,
  not RAS);
* int16 voxels with a scale factor (``scl_slope``), as most converters write them.

The MNI-space subject stays beside it as the ground truth; :class:`RawGeometry` records the
exact scanner transform so a test can compare a preprocessing result with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from engine.geometry import MNI_BOX_ORIGIN_MM, MNI_BOX_SHAPE

# Layer outer edges, distance from the brain surface (mm), and their intensity relative to
# the brain's 99th percentile (T1: fat bright, CSF and cortical bone dark).
_LAYERS: tuple[tuple[float, float], ...] = (
    (1.5, 0.10),  # CSF in the subarachnoid space (the template brain holds most of it already)
    (3.5, 0.05),  # inner table of the skull
    (6.0, 0.35),  # diploe (marrow)
    (8.0, 0.05),  # outer table
    (14.0, 0.75),  # scalp: fat and skin
)
_PAD_MM = 24  # room around the MNI box for the head layers


@dataclass(frozen=True)
class RawGeometry:
    """How a raw demo scan sits in scanner space.

    Attributes:
        rotation_deg: oblique rotation of the scanner frame about x, y, z (degrees).
        shift_mm: where the MNI origin lies in scanner coordinates (mm).
        spacing_mm: voxel size along the stored array axes (mm).
        axis_codes: orientation of the stored array (nibabel axis codes, e.g. "PIL").
        affine: the stored 4x4 voxel→scanner mm affine.
        mni_to_scanner: 4x4 matrix mapping MNI mm to scanner mm (the subject's head size and
            pose, then the scanner's rigid motion).
    """

    rotation_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    axis_codes: str
    affine: tuple[tuple[float, ...], ...]
    mni_to_scanner: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict:
        return asdict(self)


def _rotation(degrees) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_geometry(seed: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Rotation (degrees) and shift (mm) of the scanner frame for one subject, from its seed."""
    rng = np.random.default_rng([seed, 7])
    rotation = tuple(float(v) for v in rng.uniform(8.0, 15.0, 3) * rng.choice([-1.0, 1.0], 3))
    shift = tuple(float(v) for v in rng.uniform(10.0, 35.0, 3) * rng.choice([-1.0, 1.0], 3))
    return rotation, shift


def head_in_padded_box(brain: np.ndarray, *, seed: int, noise_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The brain wrapped in CSF, skull and scalp on the MNI box padded by 24 mm per side.

    Args:
        brain: a skull-stripped subject in the 1 mm MNI box (background exactly 0).
        seed: the subject's seed (noise and bias field).
        noise_fraction: Rician noise level relative to the brain's 99th percentile.

    Returns:
        The head (float32, scanner-like units, noisy background) and its 4x4 affine (RAS+, mm).
    """
    rng = np.random.default_rng([seed, 8])
    mask = brain > 0
    level = float(np.percentile(brain[mask], 99))
    pad = _PAD_MM
    head = np.zeros(tuple(n + 2 * pad for n in MNI_BOX_SHAPE), dtype=np.float32)
    inner = tuple(slice(pad, pad + n) for n in MNI_BOX_SHAPE)
    head[inner] = brain
    outside = np.ones(head.shape, dtype=bool)
    outside[inner] = ~mask
    distance = ndimage.distance_transform_edt(outside).astype(np.float32)
    # The scalp is not a perfect shell: its thickness varies smoothly over the head.
    wobble = ndimage.gaussian_filter(rng.standard_normal(tuple(n // 8 + 1 for n in head.shape)), 1.5)
    wobble = ndimage.zoom(wobble / (wobble.std() + 1e-6), 8, order=1)[tuple(slice(0, n) for n in head.shape)]
    layers = np.zeros(head.shape, dtype=np.float32)
    inner_edge = np.zeros(head.shape, dtype=np.float32)
    for edge, value in _LAYERS:
        outer = edge + (0.8 * wobble if edge > 8 else 0.0)
        shell = (distance > inner_edge) & (distance <= outer)
        layers[shell] = value * level
        inner_edge = np.broadcast_to(outer, head.shape).astype(np.float32)
    layers = ndimage.gaussian_filter(layers, 0.7)
    head = np.where(outside, layers, head)
    # A bias field over the whole head (the brain's own field is already in ``brain``).
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in head.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    c = rng.normal(0.0, 0.08, 4)
    head *= np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * (x * x - 1 / 3)).astype(np.float32)
    sigma = noise_fraction * level
    noisy_outside = np.hypot(head + rng.normal(0.0, sigma, head.shape), rng.normal(0.0, sigma, head.shape))
    head = np.where(outside, noisy_outside, head).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 3] = np.asarray(MNI_BOX_ORIGIN_MM) - pad
    return head, affine


def to_scanner_space(
    head: np.ndarray,
    head_affine: np.ndarray,
    *,
    rotation_deg: tuple[float, float, float],
    shift_mm: tuple[float, float, float],
    spacing_mm: tuple[float, float, float] = (1.0, 1.2, 1.0),
    axis_codes: str = "PIL",
    subject_affine: np.ndarray | None = None,
) -> tuple[np.ndarray, RawGeometry]:
    """Resample the head onto an oblique, shifted, anisotropic scanner grid stored in another axis order.

    Args:
        head: the head on a RAS+ grid (mm), see :func:`head_in_padded_box`.
        head_affine: its affine.
        rotation_deg: rotation of the scanner frame (degrees about x, y, z).
        shift_mm: translation (mm) applied after the rotation.
        spacing_mm: voxel size of the stored array axes (mm).
        axis_codes: the stored orientation (nibabel axis codes).
        subject_affine: the subject's own pose and head size (4x4, MNI mm → MNI mm), applied
            before the scanner motion; an affine registration to MNI removes it again.

    Returns:
        The scanner-space array (float32, stored order) and its :class:`RawGeometry`.
    """
    import nibabel as nib

    from engine.preprocessing import resample

    mni_to_scanner = np.eye(4)
    mni_to_scanner[:3, :3] = _rotation(rotation_deg)
    mni_to_scanner[:3, 3] = shift_mm
    if subject_affine is not None:
        mni_to_scanner = mni_to_scanner @ np.asarray(subject_affine, dtype=np.float64)
    # Stored axes: permutation and flips from RAS to axis_codes, then the spacing.
    ornt = nib.orientations.axcodes2ornt(tuple(axis_codes))
    direction = np.zeros((3, 3))
    for stored_axis, (ras_axis, flip) in enumerate(ornt):
        direction[int(ras_axis), stored_axis] = flip
    scanner_rotation = _rotation(rotation_deg)
    frame = scanner_rotation @ direction @ np.diag(spacing_mm)  # stored voxel step → scanner mm
    # Field of view: the head's extent in the stored frame, plus a margin.
    corners = np.array([[i, j, k] for i in (0, head.shape[0]) for j in (0, head.shape[1]) for k in (0, head.shape[2])])
    world = corners @ head_affine[:3, :3].T + head_affine[:3, 3]
    scanner = world @ mni_to_scanner[:3, :3].T + mni_to_scanner[:3, 3]
    in_voxels = scanner @ np.linalg.inv(frame).T
    lo, hi = in_voxels.min(axis=0), in_voxels.max(axis=0)
    shape = tuple(int(np.ceil(b - a)) for a, b in zip(lo, hi, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = frame
    affine[:3, 3] = frame @ lo
    # The sampling grid in MNI mm: scanner mm → MNI mm is the inverse rigid motion.
    target_in_mni = np.linalg.inv(mni_to_scanner) @ affine
    data = resample(head, source_affine=head_affine, target_affine=target_in_mni, target_shape=shape, order=1)
    return data, RawGeometry(
        rotation_deg=tuple(rotation_deg),
        shift_mm=tuple(shift_mm),
        spacing_mm=tuple(float(s) for s in spacing_mm),
        axis_codes=axis_codes,
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        mni_to_scanner=tuple(tuple(float(v) for v in row) for row in mni_to_scanner),
    )


def save_int16_nifti(path, data: np.ndarray, affine: np.ndarray, *, overwrite: bool = False) -> None:
    """Write a scanner-like NIfTI: int16 voxels with a scale factor, sform/qform code "scanner"."""
    import nibabel as nib

    from engine.atomic import atomic_path

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_data_dtype(np.int16)  # nibabel chooses scl_slope so the range fits int16
    img.header["descrip"] = b"BrainSynth raw demo head (template-derived)"
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, tmp)
