"""Case pools for the reader-study tests: real phantoms and synthetic exports on the tiny grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.helpers_volumes import phantom, write_nifti

GOOD = {"confidence": 4, "realism": 3, "plausibility": 4, "consistency": 5}


def write_weird_real(path: Path, *, shift_mm=(0.0, 0.0, 0.0)) -> Path:
    """A real phantom stored LPS as scaled int16 with an identifying header: what a scanner export looks like."""
    data, affine = phantom(shift_mm=shift_mm)
    img = nib.Nifti1Image(np.round(data * 3 + 200).astype(np.int16), affine)  # offset background too
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(nib.aff2axcodes(affine)), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    img = img.as_reoriented(ornt)
    img.header["descrip"] = b"DOE^JOHN 1957-03-02 MPRAGE site 7"
    img.header["cal_min"], img.header["cal_max"] = 0, 4000
    img.header.set_slope_inter(0.5, 10.0)
    img.header["aux_file"] = b"subject-0042"
    img.set_sform(img.affine, code=2)
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return path


def make_pools(root: Path, *, n_real: int = 3, n_synthetic: int = 3) -> tuple[Path, Path]:
    """``root/real`` (one weird-header LPS scan, the rest plain RAS phantoms) and ``root/synthetic``
    (``export_batch`` output of the tiny preset: standard space on the model grid, with sidecars)."""
    from engine.export import ExportVolume, export_batch
    from engine.generation import GenerationRequest
    from engine.preprocessing import prepare_scan
    from engine.sampler_registry import SamplerSettings
    from engine.specs import PRESETS
    from engine.volumes import Volume

    real, synthetic = root / "real", root / "synthetic"
    real.mkdir(parents=True)
    for i in range(n_real):
        if i == 0:
            write_weird_real(real / "sub-0042_T1w.nii.gz")
        else:
            data, affine = phantom(shift_mm=(2.0 * i, -1.0 * i, 0.0))
            write_nifti(real / f"sub-{i:04d}_T1w.nii.gz", data * (1 + 0.1 * i), affine)
    spec = PRESETS["tiny"]
    base_data, base_affine = phantom()
    base = prepare_scan(Volume(base_data, base_affine), spec).to_model()
    rng = np.random.default_rng(0)
    request = GenerationRequest(
        spec=spec,
        seeds=range(n_synthetic),
        settings=SamplerSettings("ddim", 2),
        device="cpu",
        checkpoint_sha256="0" * 64,
    )
    volumes = [
        ExportVolume(
            number=seed,
            array=np.clip(base + rng.normal(0, 0.05, base.shape), -1, 1).astype(np.float32),
            provenance=request.provenance(seed),
        )
        for seed in request.seeds
    ]
    export_batch(volumes, spec=spec, out_dir=synthetic)
    return real, synthetic


def dummy_files(folder: Path, prefix: str, n: int) -> list[Path]:
    """Distinct small files with NIfTI names, for storage tests that skip the display pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.nii.gz"
        path.write_bytes(f"{prefix} {i}".encode())
        paths.append(path)
    return paths
