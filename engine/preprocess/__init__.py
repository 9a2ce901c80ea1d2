"""Raw T1 scans to the model's input: the reference study's preprocessing, offline.

Denoising, N4 bias-field correction and registration to the MNI152 2009a template through
ANTs (antspyx), brain extraction with deepbet, then the study's intensity normalisation in
the 1 mm MNI box. Both libraries are optional (``pip install 'brainsynth[preprocess]'``) and
imported where used. Front ends call :func:`preprocess_file` (one scan, with step callbacks
and cancel) or :func:`run_preprocess` (a batch, parallel, resumable, with QC report).
"""

from engine.preprocess.errors import MissingDependencyError, PreprocessError
from engine.preprocess.pipeline import (
    SKIPPABLE,
    OutputPaths,
    PreprocessSettings,
    Processed,
    ScanOutcome,
    preprocess_file,
    process_volume,
)
from engine.preprocess.runner import BatchResult, find_raw_scans, preprocess_many, run_preprocess

__all__ = [
    "SKIPPABLE",
    "BatchResult",
    "MissingDependencyError",
    "OutputPaths",
    "PreprocessError",
    "PreprocessSettings",
    "Processed",
    "ScanOutcome",
    "find_raw_scans",
    "preprocess_file",
    "preprocess_many",
    "process_volume",
    "run_preprocess",
]
