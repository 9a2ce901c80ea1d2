"""Loading 3-D T1 scans: one :class:`Volume` type for every file format BrainSynth reads.

Conventions (see docs/architecture.md): ``Volume.data`` is held in RAS+ (nibabel's closest canonical
orientation: axis 0 runs left→right, axis 1 posterior→anterior, axis 2 inferior→superior)
and ``Volume.affine`` maps voxel indices to world millimetres. Reorienting only permutes and
flips axes, and the affine is updated to match, so every voxel keeps its world position.

Every way a file can be unusable raises :class:`engine.errors.VolumeError` with a message
that names the file and says what to do, e.g.
``"scan.nii.gz is 4-D (64x64x30x2); a 3-D T1 volume is needed"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import VolumeError

#: File name endings BrainSynth reads, compared case-insensitively.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".mgh", ".mgz")

_SUPPORTED_HINT = "BrainSynth reads NIfTI (.nii, .nii.gz) and FreeSurfer MGH (.mgh, .mgz) files"

# Below this voxel size (mm) an affine is treated as broken: no scanner images at 1 µm, and
# tiny or zero scales are what a header with missing pixdims or a zeroed sform produces.
_MIN_VOXEL_SIZE_MM = 1e-3


@dataclass
class Volume:
    """A 3-D scan in RAS+ with its voxel→world affine.

    Attributes:
        data: float32 array of shape (R, A, S) in RAS+ voxel order, scanner intensities.
        affine: 4x4 float64 affine mapping voxel indices (i, j, k, 1) to world mm (RAS).
        source: the file it was read from, or None for a volume made in memory.
        warnings: things that were fixed on load and that a user should know about
            (for example NaN voxels replaced by 0).
    """

    data: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """File name of the source, or ``"<in memory>"``."""
        return self.source.name if self.source is not None else "<in memory>"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def world_bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest world coordinates (mm, RAS) covered by the voxels' outer edges."""
        return world_bounds_mm(self.affine, self.shape)

    def describe(self) -> str:
        """One human-readable line: name, shape, voxel size, orientation and intensity range."""
        import nibabel as nib

        axcodes = "".join(nib.aff2axcodes(self.affine))
        finite = self.data[np.isfinite(self.data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"), float("nan"))
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing_mm)
        text = (
            f"{self.name}: {' x '.join(str(n) for n in self.shape)} voxels of {spacing} mm, "
            f"{axcodes}+, intensities {lo:.4g} to {hi:.4g}"
        )
        if self.warnings:
            text += f" ({'; '.join(self.warnings)})"
        return text


def world_bounds_mm(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world coordinates (mm) reached by the outer voxel edges of a grid.

    Args:
        affine: 4x4 voxel→mm affine.
        shape: the grid's first three dimensions.
    """
    n0, n1, n2 = (int(n) for n in shape[:3])
    corners = np.array([[i, j, k] for i in (-0.5, n0 - 0.5) for j in (-0.5, n1 - 0.5) for k in (-0.5, n2 - 0.5)])
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def is_supported(path: str | os.PathLike) -> bool:
    """Whether the file name ends with one of :data:`SUPPORTED_EXTENSIONS` (any case)."""
    return _extension(Path(path)) is not None


def _extension(path: Path) -> str | None:
    lower = path.name.lower()
    # Longest first, so "x.nii.gz" is ".nii.gz" and not an unsupported ".gz".
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    return None


def strip_extension(path: str | os.PathLike) -> str:
    """The file name without its supported extension (``"sub-01.nii.gz"`` → ``"sub-01"``)."""
    path = Path(path)
    ext = _extension(path)
    return path.name[: -len(ext)] if ext else path.stem


def find_volumes(paths: Iterable[str | os.PathLike], *, recursive: bool = False) -> list[Path]:
    """Expand files and folders into the list of scans to load.

    Folders contribute their files with a supported extension, sorted by name (hidden files
    skipped; subfolders only with ``recursive=True``). Paths that are not folders are kept as
    given even if missing or unsupported, so that :func:`load_volume` reports why each one
    cannot be used instead of the file silently vanishing. Duplicates are dropped, order kept.

    Args:
        paths: files and/or folders.
        recursive: also search subfolders of the given folders.

    Returns:
        The scan paths.

    Raises:
        VolumeError: nothing at all was found.
    """
    found: list[Path] = []
    empty_folders: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            hits = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file()
                and is_supported(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not hits:
                empty_folders.append(str(path))
            found.extend(hits)
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    if not unique:
        where = ", ".join(empty_folders) if empty_folders else "the given paths"
        raise VolumeError(f"no scans found in {where}; {_SUPPORTED_HINT}")
    return unique


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a 3-D scan, reorient it to RAS+ and check that it is usable.

    A 4-D file whose fourth (and higher) dimensions are 1 is squeezed to 3-D. NaN or
    infinite voxels are replaced by 0 when there are only some of them; the replacement is
    recorded in ``Volume.warnings``.

    Args:
        path: a .nii, .nii.gz, .mgh or .mgz file.

    Returns:
        The scan as float32 in RAS+, with its affine (mm) and source path.

    Raises:
        VolumeError: the file is missing, not a supported or readable image, damaged,
            not 3-D, empty, all NaN, or has a broken orientation (affine).
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    path = Path(path)
    name = path.name
    if not path.exists():
        raise VolumeError(f"{path} does not exist; check the path and file name")
    if path.is_dir():
        raise VolumeError(f"{path} is a folder, not a scan; choose a file ({_SUPPORTED_HINT})")
    if _extension(path) is None:
        suffix = "".join(path.suffixes[-2:]) or "no extension"
        hint = (
            " Convert DICOM series with dcm2niix first." if suffix.lower() in (".dcm", ".ima", "no extension") else ""
        )
        raise VolumeError(f"{name} has an unsupported format ({suffix}); {_SUPPORTED_HINT}.{hint}")

    # Reading the header only: a text file or a PNG renamed .nii fails here.
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        dtype = img.get_data_dtype()
        affine = np.asarray(img.affine, dtype=np.float64)
    except EOFError as exc:  # a compressed file cut short (MGZ reads its footer on load)
        raise _damaged(name, exc) from exc
    except Exception as exc:  # nibabel raises many types (ImageFileError, OSError, HeaderDataError, ...)
        raise VolumeError(
            f"{name} is not a readable {_format_name(path)} image ({_reason(exc)}); "
            f"check that it was exported as NIfTI or MGH and not renamed from another format"
        ) from exc

    if dtype.names is not None or dtype.kind == "c":
        kind = "colour (RGB)" if dtype.names is not None else "complex"
        raise VolumeError(f"{name} holds {kind} voxels; a greyscale 3-D T1 magnitude volume is needed")
    shape = _check_dimensions(name, shape)

    _check_affine(name, affine)

    # Reading the voxels: a truncated or corrupt file fails here, since nibabel loads lazily.
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise _damaged(name, exc) from exc

    warnings = _check_intensities(name, data)
    if isinstance(img, nib.Nifti1Image) and int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        warnings.append("the header stores no orientation (sform and qform codes are 0); RAS+ was assumed")

    # Closest canonical orientation: a permutation/flip of axes, affine adjusted to match so
    # that world coordinates do not change (what nibabel.as_closest_canonical does).
    ornt = io_orientation(affine)
    data = np.ascontiguousarray(apply_orientation(data, ornt), dtype=np.float32)
    affine = affine @ inv_ornt_aff(ornt, shape)
    return Volume(data=data, affine=affine, source=path, warnings=warnings)


def _damaged(name: str, exc: BaseException) -> VolumeError:
    return VolumeError(
        f"{name} is damaged or incomplete: its voxel data cannot be read ({_reason(exc)}); "
        f"copy or export the file again"
    )


def _format_name(path: Path) -> str:
    return "MGH" if _extension(path) in (".mgh", ".mgz") else "NIfTI"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _format_dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _check_dimensions(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Squeeze trailing singleton dimensions; refuse anything that is not a 3-D volume."""
    squeezed = tuple(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if len(squeezed) > 3:
        raise VolumeError(
            f"{name} is {len(squeezed)}-D ({_format_dims(shape)}); a 3-D T1 volume is needed "
            f"(split a time series or multi-echo file into single volumes first)"
        )
    if len(squeezed) < 3:
        raise VolumeError(f"{name} is {len(squeezed)}-D ({_format_dims(shape)}); a 3-D T1 volume is needed")
    if min(squeezed) < 2:
        raise VolumeError(f"{name} is a single slice ({_format_dims(shape)}); a 3-D T1 volume is needed")
    return squeezed  # type: ignore[return-value]


def _check_affine(name: str, affine: np.ndarray) -> None:
    """Refuse an affine that does not map voxels onto a real 3-D region of space."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeError(
            f"{name} has a broken orientation in its header (the voxel-to-world affine is not finite); "
            f"re-export it from the scanner or converter"
        )
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular.min() < _MIN_VOXEL_SIZE_MM:
        sizes = " x ".join(f"{s:.3g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
        raise VolumeError(
            f"{name} has a degenerate voxel-to-world affine (voxel sizes {sizes} mm, or axes that "
            f"coincide), so its voxels have no position in space; re-export it from the scanner or converter"
        )


def _check_intensities(name: str, data: np.ndarray) -> list[str]:
    """Refuse volumes with no usable contrast; replace a few non-finite voxels by 0 in place."""
    warnings: list[str] = []
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        raise VolumeError(f"{name} contains no numbers: every voxel is NaN or infinite")
    if n_bad:
        data[~finite] = 0.0
        warnings.append(f"{n_bad} NaN or infinite voxel{'s' if n_bad != 1 else ''} replaced by 0")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        what = "every voxel is 0" if lo == 0 else f"every voxel has the same value ({lo:g})"
        raise VolumeError(f"{name} is empty: {what}; a scan with image content is needed")
    return warnings
