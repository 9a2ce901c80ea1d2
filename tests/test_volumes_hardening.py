"""Damaged and hostile scans: gzip integrity, invalid headers, decompression bombs and scans
far from MNI space (one reproducer per case the fuzzing run of issue 15 found)."""

from __future__ import annotations

import gzip
import resource
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.errors import VolumeError
from engine.volumes import load_volume

DEMO_SCAN = Path(__file__).resolve().parents[1] / "resources" / "demo_scans" / "demo_s2_0064.nii.gz"


def _raw_nifti() -> bytearray:
    """The bundled demo scan, uncompressed (header at 0, voxels at 352)."""
    return bytearray(gzip.decompress(DEMO_SCAN.read_bytes()))


def _write_gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    return path


def test_the_bundled_scan_loads_without_warnings():
    vol = load_volume(DEMO_SCAN)
    assert vol.warnings == []


def test_a_wrong_gzip_checksum_is_refused(tmp_path):
    data = bytearray(DEMO_SCAN.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path = tmp_path / "crc.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"^crc\.nii\.gz is damaged: it fails its gzip checksum"):
        load_volume(path)


def test_a_wrong_gzip_length_is_refused(tmp_path):
    data = bytearray(DEMO_SCAN.read_bytes())
    data[-1] ^= 0x01  # ISIZE, the uncompressed length mod 2^32
    path = tmp_path / "len.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"is damaged: it fails its gzip checksum"):
        load_volume(path)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_corrupted_compressed_voxels_are_refused(tmp_path, where):
    # Garbage in the deflate stream: nibabel alone would hand back wrong voxels for some bytes.
    data = bytearray(DEMO_SCAN.read_bytes())
    for i in range(int(len(data) * where), int(len(data) * where) + 4):
        data[i] ^= 0x5A
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"^flipped\.nii\.gz is damaged"):
        load_volume(path)


def test_bytes_after_the_compressed_image_are_ignored_with_a_warning(tmp_path):
    path = tmp_path / "tail.nii.gz"
    path.write_bytes(DEMO_SCAN.read_bytes() + b"not gzip at all")
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.data, load_volume(DEMO_SCAN).data)
    assert vol.warnings == ["15 bytes after the compressed image were ignored"]


def test_concatenated_gzip_members_are_valid(tmp_path):
    raw = bytes(_raw_nifti())
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    np.testing.assert_array_equal(load_volume(path).data, load_volume(DEMO_SCAN).data)


@pytest.mark.parametrize("offset", [0.0, 100.0, 348.0])
def test_voxel_offset_inside_the_header_is_refused(tmp_path, offset):
    raw = _raw_nifti()
    raw[108:112] = struct.pack("<f", offset)
    path = _write_gz(tmp_path / "offset.nii.gz", raw)
    with pytest.raises(VolumeError, match=r"voxel data would start at byte .*inside the header"):
        load_volume(path)


def test_a_header_nibabel_calls_invalid_is_refused(tmp_path):
    raw = _raw_nifti()
    raw[70:72] = struct.pack("<h", 1234)  # datatype code 1234 does not exist
    path = _write_gz(tmp_path / "dtype.nii.gz", raw)
    with pytest.raises(VolumeError, match=r"^dtype\.nii\.gz"):
        load_volume(path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_decompression_bomb_header_is_refused_before_inflating(tmp_path):
    # A 4096 x 4096 x 256 float32 header (16 GiB) over 4 MB of zeros: refused from the header.
    raw = _raw_nifti()[:352]
    raw[40:56] = struct.pack("<8h", 3, 4096, 4096, 256, 1, 1, 1, 1)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw) + bytes(4 * 2**20)))
    before = _peak_rss_mb()
    with pytest.raises(VolumeError, match=r"would unpack to 16\.0 GiB .*a T1 scan is a few hundred MB at most"):
        load_volume(path)
    assert _peak_rss_mb() - before < 200


def test_a_bomb_behind_a_plausible_header_is_stopped_while_inflating(tmp_path):
    # The header describes the small demo scan; 64 MB of zeros follow (65 KB compressed).
    raw = bytes(_raw_nifti())
    inflater = zlib.compressobj(1, zlib.DEFLATED, 31)
    body = inflater.compress(raw) + b"".join(inflater.compress(bytes(2**20)) for _ in range(64)) + inflater.flush()
    path = tmp_path / "tail_bomb.nii.gz"
    path.write_bytes(body)
    assert path.stat().st_size < 2**20
    with pytest.raises(VolumeError, match=r"unpacks to more than .* far more than its header describes"):
        load_volume(path)


def test_an_mgz_bomb_header_is_refused(tmp_path):
    header = struct.pack(">7i", 1, 2048, 2048, 2048, 1, 3, 0) + bytes(284 - 28)
    path = tmp_path / "bomb.mgz"
    path.write_bytes(gzip.compress(header + bytes(2**20)))
    with pytest.raises(VolumeError, match=r"^bomb\.mgz would unpack to 32\.0 GiB"):
        load_volume(path)


def test_a_scan_far_from_mni_space_is_flagged(tmp_path):
    img = nib.load(DEMO_SCAN)
    affine = img.affine.copy()
    affine[:3, 3] += (0.0, 60.0, 0.0)  # 60 mm anterior: no registered scan sits there
    path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    vol = load_volume(path)
    assert any("from where a scan registered to MNI space has it" in w for w in vol.warnings), vol.warnings
    assert load_volume(DEMO_SCAN).warnings == []
