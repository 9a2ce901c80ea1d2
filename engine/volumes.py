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

import gzip
import math
import os
import struct
import zlib
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

#: Most voxels a scan may have: 2^28 (268 M, 1 GiB as float32). A 0.5 mm whole-head T1 has
#: about 100 M; anything larger is a damaged header or a decompression bomb, refused before a
#: byte of voxel data is read.
MAX_SCAN_VOXELS = 2**28
#: Bytes a compressed scan may unpack to beyond what its header describes (extensions,
#: FreeSurfer's tags after the data); more means the file is not what its header says.
_GZIP_SLACK_BYTES = 16 * 2**20
_GZIP_CHUNK = 2**20
#: A brain centred farther than this from the MNI brain's centre is probably not registered
#: (the same bound engine.preprocessing.prepare_scan refuses at, after resampling).
_REGISTERED_CENTRE_TOLERANCE_MM = 50.0


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

    Before a byte of voxel data is read, the header's own numbers are checked: a scan larger
    than :data:`MAX_SCAN_VOXELS` (a decompression bomb or a damaged header) and voxel data
    starting inside a single-file NIfTI header are refused, as is anything nibabel's header
    checks call an error. A compressed file is inflated once in full (in chunks, constant
    memory) to verify its gzip checksum, which nibabel never reads. A scan whose brain is
    centred far from the MNI brain gets a warning (probably not registered).

    Raises:
        VolumeError: the file is missing, not a supported or readable image, damaged (a failed
            gzip checksum, cut short, more data than its header describes), too large, has an
            invalid header, is not 3-D, empty, all NaN, or has a broken orientation (affine).
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

    # Before nibabel: the header's own numbers (size, voxel offset), read from at most a few
    # kilobytes, so that a decompression bomb is refused before it is inflated.
    declared_bytes = _check_raw_header(path, name)
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
    _check_size(name, shape, dtype.itemsize)
    _check_header_validity(name, img)
    _check_affine(name, affine)
    if _is_gzip(path):
        # nibabel reads only as far as the voxels go, so the gzip checksum (at the end) is never
        # checked and a damaged file unpacks to garbage: check the whole stream first.
        limit = (declared_bytes or 0) + shape_bytes(shape, dtype.itemsize)
        gzip_warnings = _check_gzip_stream(path, name, limit=limit)
    else:
        gzip_warnings = []

    # Reading the voxels: a truncated or corrupt file fails here, since nibabel loads lazily.
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise _damaged(name, exc) from exc

    warnings = _check_intensities(name, data) + gzip_warnings
    if isinstance(img, nib.Nifti1Image) and int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        warnings.append("the header stores no orientation (sform and qform codes are 0); RAS+ was assumed")

    # Closest canonical orientation: a permutation/flip of axes, affine adjusted to match so
    # that world coordinates do not change (what nibabel.as_closest_canonical does).
    ornt = io_orientation(affine)
    data = np.ascontiguousarray(apply_orientation(data, ornt), dtype=np.float32)
    affine = affine @ inv_ornt_aff(ornt, shape)
    volume = Volume(data=data, affine=affine, source=path, warnings=warnings)
    offset = registration_offset_mm(volume)
    if offset is not None and offset > _REGISTERED_CENTRE_TOLERANCE_MM:
        warnings.append(
            f"its brain is centred {offset:.0f} mm from where a scan registered to MNI space has it; "
            "it may not be registered (register it to MNI152 before preparing it)"
        )
    return volume


def registration_offset_mm(volume: Volume) -> float | None:
    """Distance (mm) from the centre of the scan's bright tissue to the MNI brain's centre.

    A quick look, not a registration: voxels above a fifth of the robust maximum are taken
    as tissue and their centre is compared with where the MNI152 brain's centre lies
    (:data:`engine.preprocessing.MNI_BRAIN_CENTRE_MM`). A registered scan is within a few mm;
    a scan in scanner coordinates is often centimetres away.

    Returns:
        The distance in mm, or None when the scan has no tissue above its background.
    """
    from engine.preprocessing import MNI_BRAIN_CENTRE_MM

    data = volume.data
    # A strided view is enough to find the threshold and keeps this cheap on large scans.
    step = max(1, round((data.size / 2e5) ** (1 / 3)))
    sample = data[::step, ::step, ::step]
    background = float(sample.min())
    top = float(np.percentile(sample, 99.5))
    if not top > background:
        return None
    tissue = data > background + 0.2 * (top - background)
    count = int(np.count_nonzero(tissue))
    if count == 0:
        return None
    centre_ijk = [
        float(np.dot(np.arange(n), tissue.sum(axis=tuple(a for a in range(3) if a != axis))) / count)
        for axis, n in enumerate(tissue.shape)
    ]
    centre_mm = np.asarray(volume.affine)[:3, :3] @ np.asarray(centre_ijk) + np.asarray(volume.affine)[:3, 3]
    return float(np.linalg.norm(centre_mm - MNI_BRAIN_CENTRE_MM))


def shape_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of a voxel array of ``shape`` and ``itemsize`` (Python ints: no overflow)."""
    return math.prod(int(n) for n in shape) * int(itemsize)


def _check_size(name: str, shape: tuple[int, ...], itemsize: int) -> None:
    voxels = math.prod(shape)
    if voxels > MAX_SCAN_VOXELS:
        raise VolumeError(
            f"{name} would unpack to {_size(shape_bytes(shape, itemsize))} ({_format_dims(shape)} voxels, "
            f"{_size(voxels * 4)} in memory); a T1 scan is a few hundred MB at most, so its header is damaged"
        )


def _size(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.0f} MB"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_head(path: Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes of the (uncompressed) file; gzip is inflated only that far."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, zlib.error):
        return b""  # nibabel's own reading says what is wrong


def _check_raw_header(path: Path, name: str) -> int | None:
    """Check the size and voxel offset a NIfTI or MGH header declares, before nibabel reads it.

    Returns:
        Bytes before the voxel data (the header and its extensions), when the header is one
        of ours to understand; None otherwise (nibabel then reports what it makes of the file).

    Raises:
        VolumeError: the header declares more voxels than any scan has, or (single-file
            NIfTI) voxel data starting inside the header.
    """
    head = _read_head(path)
    ext = _extension(path)
    if ext in (".mgh", ".mgz"):
        if len(head) < 28:
            return None
        version, width, height, depth, frames, code = struct.unpack(">6i", head[:24])
        dims = (width, height, depth)
        itemsize = {0: 1, 1: 4, 3: 4, 4: 2}.get(code)
        if version != 1 or itemsize is None or min(*dims, frames) < 1:
            return None
        _check_size(name, (*dims, frames), itemsize)
        return 284
    if len(head) < 348:
        return None
    for order in "<>":
        sizeof_hdr = struct.unpack(order + "i", head[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            magic, minimum = head[344:348], 352
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
            magic, minimum = head[4:8], 544
            break
    else:
        return None
    ndim = dims[0]
    if 1 <= ndim <= 7 and all(n >= 1 for n in dims[1 : ndim + 1]) and bitpix > 0:
        _check_size(name, tuple(dims[1 : ndim + 1]), max(1, bitpix // 8))
    single_file = magic in (b"n+1\x00", b"n+2\x00")
    if single_file and not (math.isfinite(offset) and offset >= minimum):
        raise VolumeError(
            f"{name} has a damaged header: its voxel data would start at byte {offset:g}, inside the "
            f"header (at least {minimum} for a single-file NIfTI); copy or export the file again"
        )
    return int(offset) if single_file else None


def _check_header_validity(name: str, img) -> None:
    """Refuse what nibabel's own header checks call an error (problem level 40 and up)."""
    header = getattr(img, "header", None)
    checks = getattr(type(header), "_get_checks", None)
    if checks is None:
        return
    for check in checks():
        try:
            _, report = check(header.copy(), fix=False)
        except Exception:  # a check that cannot even run on this header: nibabel's load says why
            continue
        if report.problem_level >= 40:
            raise VolumeError(
                f"{name} has an invalid header ({report.problem_msg}); re-export it from the scanner or converter"
            )


def _check_gzip_stream(path: Path, name: str, *, limit: int) -> list[str]:
    """Inflate the whole file in chunks (constant memory), checking checksum, length and size.

    Raises:
        VolumeError: a failed CRC or length check, a stream cut short, or more data than
            ``limit`` plus a little slack (a decompression bomb behind a plausible header).
    """
    cap = limit + _GZIP_SLACK_BYTES
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    fed = False  # whether the current gzip member has begun
    members = 0
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(_GZIP_CHUNK):
                while chunk:
                    if not fed and not chunk.strip(b"\x00"):
                        chunk = b""  # zero padding after the last member, as some tools write
                        break
                    if not fed and members and chunk[:2] != b"\x1f\x8b":
                        # Bytes after a complete, checked stream that are not another gzip member:
                        # the image is intact (gzip itself only warns), so they are ignored.
                        rest = len(chunk) + len(fh.read())
                        return [f"{rest} byte{'s' if rest != 1 else ''} after the compressed image were ignored"]
                    fed = True
                    total += len(inflater.decompress(chunk, _GZIP_CHUNK))
                    chunk = inflater.unconsumed_tail
                    if total > cap:
                        raise VolumeError(
                            f"{name} unpacks to more than {_size(cap)}, far more than its header describes "
                            f"({_size(limit)}); the file is damaged or not a scan"
                        )
                    if inflater.eof:  # another gzip member may follow (concatenation is valid gzip)
                        chunk = inflater.unused_data
                        inflater, fed = zlib.decompressobj(wbits=31), False
                        members += 1
        except zlib.error as exc:
            checksum = "data check" in str(exc) or "length check" in str(exc)
            what = "fails its gzip checksum" if checksum else "holds damaged compressed data"
            raise VolumeError(f"{name} is damaged: it {what} ({exc}); copy or export the file again") from exc
    if fed:
        raise VolumeError(
            f"{name} is damaged or incomplete: its compressed data is cut short; copy or export the file again"
        )
    return []


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
