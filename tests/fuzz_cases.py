"""Seeded mutations of the bundled checkpoint and a bundled demo scan, for fuzz tests.

Each mutation is a name and the bytes of a damaged file (plus its file name ending). They
are made from the real bundled files, field by field (metadata values, header fields, tensor
dtypes and shapes, voxel offsets, dimensions) and byte by byte (flips, cuts, garbage,
decompression bombs), so that the loaders meet what a damaged download, a bad converter or
a hostile file would give them. Only public loader APIs are used, so the same cases can be
run against any version of the engine (tests/test_fuzz.py, and longer runs in subprocesses).
"""

from __future__ import annotations

import copy
import gzip
import json
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_CHECKPOINT = REPO / "resources" / "demo_model.safetensors"
DEMO_SCAN = REPO / "resources" / "demo_scans" / "demo_s2_0064.nii.gz"


@dataclass
class Mutation:
    """One damaged file: what was done to it, its bytes and its file name ending."""

    name: str
    data: bytes
    suffix: str
    #: for byte-level damage of compressed data: a file that still loads must hold the
    #: original voxels (otherwise garbage was accepted)
    same_voxels_if_valid: bool = False


_VALUES = [
    None, True, False, 0, 1, -1, 2, 3, 7, 1000, 4096, 30000, 10**6, 10**10, -40, 0.5, -0.5, 1e-12, 2.0, 1e30,
    float("nan"), float("inf"), float("-inf"), "", "x", "one", "\x1b[2J\x1b]0;owned\x07", "\u202e", [], {}, [1, 2],
    [16, 32], [-1, -1, -1], [30000, 30000, 30000], [0, 0, 0], {"a": 1}, [[1]], "9" * 5000,
]  # fmt: skip


def _paths(value, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(root, path: tuple, value):
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return root


def _delete(root, path: tuple):
    node = root
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, dict):
        del node[path[-1]]
    else:
        node.pop(path[-1])
    return root


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_safetensors(header: dict, body: bytes, *, raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _with_metadata_text(header: dict, body: bytes, text: str) -> bytes:
    header = dict(header)
    header["__metadata__"] = {**header["__metadata__"], "brainsynth": text}
    return _join_safetensors(header, body)


def checkpoint_mutations(seed: int, count: int, *, source: Path = BUNDLED_CHECKPOINT) -> Iterator[Mutation]:
    """``count`` seeded mutations of a BrainSynth checkpoint (the bundled demo model by default)."""
    rng = random.Random(seed)
    original = source.read_bytes()
    header, body = _split_safetensors(original)
    meta = json.loads(header["__metadata__"]["brainsynth"])
    meta_paths = _paths(meta)[1:]
    tensors = [k for k in header if k != "__metadata__"]
    for i in range(count):
        kind = rng.choices(
            ["meta_value", "meta_delete", "meta_text", "meta_special", "dtype", "shape", "values", "bytes", "cut"],
            weights=[30, 8, 8, 6, 5, 5, 5, 8, 3],
        )[0]
        name = f"ckpt#{i}:{kind}"
        if kind == "meta_value":
            path = rng.choice(meta_paths)
            value = copy.deepcopy(rng.choice(_VALUES))
            edited = _set(copy.deepcopy(meta), path, value)
            text = json.dumps(edited)  # NaN and Infinity are written as JSON's non-standard literals
            yield Mutation(
                f"{name} {'.'.join(map(str, path))}={value!r:.30}",
                _with_metadata_text(header, body, text),
                ".safetensors",
            )
        elif kind == "meta_delete":
            path = rng.choice(meta_paths)
            edited = _delete(copy.deepcopy(meta), path)
            yield Mutation(
                f"{name} del {'.'.join(map(str, path))}",
                _with_metadata_text(header, body, json.dumps(edited)),
                ".safetensors",
            )
        elif kind == "meta_text":
            text = bytearray(json.dumps(meta).encode())
            for _ in range(rng.randint(1, 4)):
                text[rng.randrange(len(text))] = rng.choice(b'{}[]",:0123456789.eE-+ntfa\\\x00\x1b')
            yield Mutation(name, _with_metadata_text(header, body, text.decode("utf-8", "replace")), ".safetensors")
        elif kind == "meta_special":
            text = rng.choice(
                [
                    "[1, 2]", "null", "3", '"text"', "[" * 100_000 + "]" * 100_000,
                    '{"a":' * 50_000 + "1" + "}" * 50_000,
                    json.dumps(meta).replace('"shape": [40', '"shape": [1e400'),
                    json.dumps(meta).replace('"format_version": 1', '"format_version": NaN'),
                    json.dumps(meta).replace('"scale": 1000.0', '"scale": -Infinity'),
                    json.dumps(meta)[: rng.randrange(len(json.dumps(meta)))],
                ]
            )  # fmt: skip
            yield Mutation(name, _with_metadata_text(header, body, text), ".safetensors")
        elif kind == "dtype":
            key = rng.choice(tensors)
            edited = copy.deepcopy(header)
            edited[key]["dtype"] = rng.choice(["I32", "U32", "BOOL", "F16", "F64", "I64", "XYZ"])
            yield Mutation(f"{name} {key}", _join_safetensors(edited, body), ".safetensors")
        elif kind == "shape":
            key = rng.choice(tensors)
            edited = copy.deepcopy(header)
            shape = edited[key]["shape"]
            edited[key]["shape"] = rng.choice([shape[::-1], [int(__import__("math").prod(shape))], [*shape, 1], []])
            yield Mutation(f"{name} {key}", _join_safetensors(edited, body), ".safetensors")
        elif kind == "values":
            key = rng.choice(tensors)
            start, end = header[key]["data_offsets"]
            data = bytearray(body)
            pattern = rng.choice(
                [struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), b"\xff\xff\xff\xff"]
            )
            for j in range(start, min(end, start + 4 * rng.randint(1, 8)), 4):
                data[j : j + 4] = pattern
            yield Mutation(f"{name} {key}", _join_safetensors(header, bytes(data)), ".safetensors")
        elif kind == "bytes":
            data = bytearray(original)
            lo, hi = rng.choice([(0, 8), (8, 8 + len(json.dumps(header))), (0, len(data))])
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(lo, hi)] = rng.randrange(256)
            yield Mutation(name, bytes(data), ".safetensors")
        else:
            yield Mutation(name, original[: rng.randrange(len(original))], ".safetensors")


# NIfTI-1 header fields: (offset, struct format) for the ones a converter could get wrong.
_NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "dim5": (50, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim0": (76, "<f"),
    "pixdim1": (80, "<f"), "pixdim2": (84, "<f"), "pixdim3": (88, "<f"), "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "qform_code": (252, "<h"), "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"), "quatern_c": (260, "<f"), "qoffset_x": (268, "<f"), "srow_x0": (280, "<f"),
    "srow_y1": (300, "<f"), "srow_z2": (320, "<f"), "srow_z3": (324, "<f"),
}  # fmt: skip
_INT_VALUES = [0, 1, -1, 2, 3, 4, 7, 8, 16, 64, 100, 128, 255, 348, 352, 1000, 4096, 16384, 32767, -32768]
_FLOAT_VALUES = [0.0, -0.0, 1.0, -1.0, 1e-9, 1e9, 1e38, float("nan"), float("inf"), 100.0, 351.0, 352.0, 0.5]


def _pack(fmt: str, value) -> bytes:
    if fmt.endswith("f"):
        return struct.pack(fmt, float(value))
    lo, hi = {"h": (-(2**15), 2**15 - 1), "i": (-(2**31), 2**31 - 1)}[fmt[-1]]
    return struct.pack(fmt, int(max(lo, min(hi, value))))


def _mgz_of(raw_nifti: bytes) -> bytes:
    """The demo scan as a FreeSurfer MGZ (big-endian header of 284 bytes, float32 voxels)."""
    dims = struct.unpack("<8h", raw_nifti[40:56])
    voxels = raw_nifti[352:]
    import numpy as np

    data = np.frombuffer(voxels, dtype="<f4").astype(">f4").tobytes()
    header = struct.pack(">7i", 1, dims[1], dims[2], dims[3], 1, 3, 0) + struct.pack(">h", 1)
    header += struct.pack(">3f", 4.525, 4.521, 4.525) + struct.pack(">9f", 1, 0, 0, 0, 1, 0, 0, 0, 1)
    header += struct.pack(">3f", 0, -18, 15)
    header += bytes(284 - len(header))
    return gzip.compress(header + data, compresslevel=1)


def scan_mutations(seed: int, count: int, *, source: Path = DEMO_SCAN) -> Iterator[Mutation]:
    """``count`` seeded mutations of a demo scan (.nii.gz, .nii and .mgz variants)."""
    rng = random.Random(seed)
    compressed = source.read_bytes()
    raw = gzip.decompress(compressed)
    mgz = _mgz_of(raw)
    for i in range(count):
        kind = rng.choices(
            ["field", "field_raw", "gz_bytes", "gz_cut", "gz_trailer", "gz_append", "mgz_field", "mgz_bytes", "bomb"],
            weights=[35, 10, 15, 6, 4, 4, 10, 8, 4],
        )[0]
        name = f"scan#{i}:{kind}"
        if kind in ("field", "field_raw"):
            data = bytearray(raw)
            changes = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                field, (offset, fmt) = rng.choice(list(_NIFTI_FIELDS.items()))
                value = rng.choice(_FLOAT_VALUES if fmt.endswith("f") else _INT_VALUES)
                data[offset : offset + struct.calcsize(fmt)] = _pack(fmt, value)
                changes.append(f"{field}={value}")
            if kind == "field":
                yield Mutation(f"{name} {' '.join(changes)}", gzip.compress(bytes(data), compresslevel=1), ".nii.gz")
            else:
                yield Mutation(f"{name} {' '.join(changes)}", bytes(data), ".nii")
        elif kind == "gz_bytes":
            data = bytearray(compressed)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield Mutation(name, bytes(data), ".nii.gz", same_voxels_if_valid=True)
        elif kind == "gz_cut":
            yield Mutation(name, compressed[: rng.randrange(len(compressed))], ".nii.gz", same_voxels_if_valid=True)
        elif kind == "gz_trailer":
            data = bytearray(compressed)
            data[len(data) - rng.randint(1, 8)] ^= 0xFF
            yield Mutation(name, bytes(data), ".nii.gz", same_voxels_if_valid=True)
        elif kind == "gz_append":
            tail = rng.choice([b"\x00" * 64, bytes(rng.randrange(256) for _ in range(64)), gzip.compress(b"extra")])
            yield Mutation(name, compressed + tail, ".nii.gz", same_voxels_if_valid=True)
        elif kind == "mgz_field":
            data = bytearray(gzip.decompress(mgz))
            offset, fmt = rng.choice([(0, ">i"), (4, ">i"), (8, ">i"), (12, ">i"), (16, ">i"), (20, ">i"), (28, ">h"),
                                      (30, ">f"), (34, ">f"), (42, ">f"), (78, ">f")])  # fmt: skip
            value = rng.choice(_FLOAT_VALUES if fmt.endswith("f") else [*_INT_VALUES, 2**20, 2**30])
            data[offset : offset + struct.calcsize(fmt)] = _pack(fmt, value)
            yield Mutation(f"{name} @{offset}={value}", gzip.compress(bytes(data), compresslevel=1), ".mgz")
        elif kind == "mgz_bytes":
            data = bytearray(mgz)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield Mutation(name, bytes(data), ".mgz")
        else:
            yield _bomb(rng, raw, name)


def _bomb(rng: random.Random, raw: bytes, name: str) -> Mutation:
    """A small file that inflates to gigabytes: a huge header, or a plausible one with a huge tail."""
    zeros = zlib.compressobj(1, zlib.DEFLATED, 31)
    if rng.random() < 0.5:
        header = bytearray(raw[:352])
        header[40:56] = struct.pack("<8h", 3, 2048, 2048, rng.choice([256, 1024, 2048]), 1, 1, 1, 1)
        body = zeros.compress(bytes(header)) + b"".join(zeros.compress(bytes(2**20)) for _ in range(16))
        return Mutation(f"{name} huge header", body + zeros.flush(), ".nii.gz")
    body = zeros.compress(raw) + b"".join(zeros.compress(bytes(2**20)) for _ in range(rng.choice([32, 256])))
    return Mutation(f"{name} huge tail", body + zeros.flush(), ".nii.gz")


def load_checkpoint_case(path: Path) -> str:
    """'valid' when the checkpoint loads and its network builds; BrainSynthErrors propagate."""
    from engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.build_model()
    return "valid"


def load_scan_case(path: Path, *, original=None, same_voxels_if_valid: bool = False) -> str:
    """'valid' for a usable 3-D volume, 'garbage' for damaged bytes accepted with other voxels."""
    import numpy as np

    from engine.volumes import load_volume

    volume = load_volume(path)
    if volume.data.ndim != 3 or not np.all(np.isfinite(volume.data)):
        return "invalid-result"
    if same_voxels_if_valid and original is not None and not np.array_equal(volume.data, original):
        return "garbage"
    return "valid"
