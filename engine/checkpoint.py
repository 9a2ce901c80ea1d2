"""Checkpoints: one self-describing, code-free file per model.

Format (``.safetensors``): tensors named ``model.<key>`` (the raw weights) and optionally
``ema.<key>`` (the exponential moving average used for sampling), plus the safetensors
header metadata entry ``"brainsynth"`` holding JSON::

    {"format": "brainsynth-checkpoint", "format_version": 1,
     "spec": {...ModelSpec.to_dict(): unet, schedule, grid (with affine), intensity...},

(format 2: a latent-diffusion model, whose spec has a ``latent`` entry and whose tensors are
``model.unet.<key>`` and ``model.autoencoder.<key>``, both networks in one file),
     "provenance": {"created": ..., "software_version": ..., "source": ..., "training": {...}}}

safetensors holds only tensors and a JSON header, so loading never runs code. Plain MONAI
``state_dict`` files (``.pt``/``.pth``, as the MONAI tutorials and the reference study save
them) are imported with ``torch.load(weights_only=True)`` given a preset; a pickle that
would run code is refused before anything in it runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import mmap
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import __version__
from engine.atomic import atomic_path
from engine.checkpoint_checks import (
    FORMAT_NAME,
    format_version_for,
    parse_metadata,
    validate_metadata,
    validate_weights,
)
from engine.errors import BrainSynthError, CheckpointError
from engine.specs import PRESETS, ModelSpec, get_preset

NATIVE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Keys under which training scripts commonly nest the weights, most preferred first.
NESTED_WEIGHT_KEYS = ("model", "unet_state_dict", "state_dict", "model_state_dict")
_PREFIXES_TO_STRIP = ("module.", "_orig_mod.")
_MAX_KEYS_IN_MESSAGE = 6
_READ_CHUNK_BYTES = 8 << 20  # 8 MiB: some 45 progress reports for a paper-size checkpoint (380 MB with EMA)


@dataclass
class Checkpoint:
    """A model spec with its weights.

    Attributes:
        spec: network, schedule, grid and intensity mapping.
        weights: the trained weights (MONAI ``DiffusionModelUNet`` state_dict keys).
        ema_weights: exponential moving average of the weights, if the trainer kept one.
        provenance: where the weights came from (JSON-serialisable).
        path: the file it was loaded from, if any.
        sha256: hex SHA-256 of that file's bytes as they were read (the provenance every export
            records), or None for a checkpoint made in memory.
    """

    spec: ModelSpec
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor] | None = None
    provenance: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @property
    def has_ema(self) -> bool:
        return self.ema_weights is not None

    def select_weights(self, *, prefer_ema: bool = True) -> tuple[str, dict[str, torch.Tensor]]:
        """The weights to run: ``("ema", ...)`` when preferred and present (they sample
        better), else ``("raw", ...)``. The one place this choice is made."""
        if prefer_ema and self.ema_weights is not None:
            return "ema", self.ema_weights
        return "raw", self.weights

    def build_model(
        self, *, use_ema: bool = True, device: torch.device | str = "cpu", use_flash_attention: bool = False
    ) -> torch.nn.Module:
        """The MONAI network with these weights, in eval mode, on ``device``.

        Args:
            use_ema: prefer the EMA weights when the checkpoint has them (they sample better).
            device: where to put the model.
            use_flash_attention: MONAI's fused attention (GPU only).
        """
        _, weights = self.select_weights(prefer_ema=use_ema)
        source = self.describe_source()
        try:
            model = self.spec.build_model(use_flash_attention=use_flash_attention)
            check_state_dict(model, weights, source=source)
            model.load_state_dict(weights, strict=True)
            return model.to(device).eval()
        except BrainSynthError:
            raise
        except MemoryError:
            raise CheckpointError(f"not enough memory to build the network of {source}") from None
        except Exception as exc:  # MONAI and torch raise many types for a network they cannot make
            raise CheckpointError(
                f"{source}: its network cannot be built or loaded ({type(exc).__name__}: {_first_line(exc)})"
            ) from None

    def metadata(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": format_version_for(self.spec),
            "spec": self.spec.to_dict(),
            "provenance": self.provenance,
            "has_ema": self.has_ema,
        }

    def describe_source(self) -> str:
        return self.path.name if self.path else "checkpoint"

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the checkpoint atomically; refuses to replace a file unless ``overwrite``."""
        return save_checkpoint(
            path,
            spec=self.spec,
            weights=self.weights,
            ema_weights=self.ema_weights,
            provenance=self.provenance,
            overwrite=overwrite,
        )


def save_checkpoint(
    path: str | Path,
    *,
    spec: ModelSpec,
    weights: Mapping[str, torch.Tensor],
    ema_weights: Mapping[str, torch.Tensor] | None = None,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Save weights and spec as one ``.safetensors`` file, atomically.

    Args:
        path: target file; must end in ``.safetensors``.
        spec: the model spec the weights belong to.
        weights: state_dict of the network.
        ema_weights: state_dict of the EMA network, if any.
        provenance: free-form JSON-serialisable record (training config, data, epochs...).
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint files end in .safetensors, not {path.name!r}")
    tensors = {f"model.{k}": _plain_tensor(v) for k, v in weights.items()}
    if ema_weights is not None:
        tensors.update({f"ema.{k}": _plain_tensor(v) for k, v in ema_weights.items()})
    provenance = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software_version": __version__,
        **(provenance or {}),
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": format_version_for(spec),
        "spec": spec.to_dict(),
        "provenance": provenance,
        "has_ema": ema_weights is not None,
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"brainsynth": json.dumps(meta)})
    return path


def _plain_tensor(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses views that share storage and non-contiguous tensors.
    return t.detach().to("cpu").contiguous().clone()


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a BrainSynth checkpoint, reading only the file header."""
    path = _existing_file(path)
    if path.suffix not in NATIVE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a plain PyTorch file with no BrainSynth metadata; "
            "import it with --preset (brainsynth-cli info --preset paper FILE)"
        )
    header = _read_safetensors_header(path)
    if header is None:
        raise CheckpointError(
            f"{path.name} is a safetensors file without BrainSynth metadata; give --preset to import its weights"
        )
    return header


def load_checkpoint(
    path: str | Path,
    *,
    preset: str | ModelSpec | None = None,
    progress: Callable[[float], None] | None = None,
) -> Checkpoint:
    """Load a BrainSynth checkpoint, or import a plain MONAI state_dict given a preset.

    The file is read once, in chunks: the same bytes give the header, the tensors and the
    file's SHA-256 (:attr:`Checkpoint.sha256`), so nothing reads it again to record provenance.
    Like safetensors' own loader, the tensors of a ``.safetensors`` file are views of a
    copy-on-write memory map of it (nothing is copied; replacing the file, as
    :func:`save_checkpoint` does, leaves them intact).

    Args:
        path: ``.safetensors`` (BrainSynth, or plain weights with ``preset``) or
            ``.pt``/``.pth``/``.ckpt``/``.bin`` (PyTorch state_dict, needs ``preset``).
        preset: preset name or spec for files that do not describe themselves. Ignored
            (but checked for agreement) for BrainSynth checkpoints.
        progress: called with the fraction of the file read so far (0..1, ending at 1.0),
            from the calling thread.

    Raises:
        CheckpointError: missing, truncated, unsafe or mismatching files, with a message
            that says what to do.
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in NATIVE_SUFFIXES:
        data, digest = _read_and_hash(path, progress)
        ckpt = _load_safetensors(path, data, preset)
    elif suffix in TORCH_SUFFIXES:
        if preset is None:
            raise CheckpointError(
                f"{path.name} is a plain PyTorch state_dict with no model description; "
                f"say which architecture it is with --preset ({', '.join(PRESETS)})"
            )
        spec = _as_spec(preset)  # an unknown preset is refused before the file is read
        data, digest = _read_and_hash(path, progress)
        ckpt = _import_state_dict_bytes(path, data, spec=spec)
    else:
        raise CheckpointError(
            f"{path.name} is not a checkpoint: expected a BrainSynth .safetensors file "
            f"or a MONAI state_dict ({', '.join(TORCH_SUFFIXES)})"
        )
    ckpt.sha256 = digest
    return ckpt


def _read_and_hash(path: Path, progress: Callable[[float], None] | None) -> tuple[mmap.mmap | bytearray, str]:
    """The file's bytes and their hex SHA-256, from one pass over them in chunks (reporting the fraction read).

    The file is memory-mapped copy-on-write (as safetensors' own loader maps it): hashing reads
    every page once, and the tensors are views of the same pages (:func:`_safetensors_tensors`),
    so the weights are neither read a second time nor copied.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else bytearray()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path.name}: {getattr(exc, 'strerror', None) or exc}") from None
    total = len(data)
    with memoryview(data) as view:
        for begin in range(0, total, _READ_CHUNK_BYTES):
            end = min(begin + _READ_CHUNK_BYTES, total)
            digest.update(view[begin:end])
            if progress is not None:
                progress(end / total)
    if progress is not None and total == 0:
        progress(1.0)  # an empty file: nothing to read, but reading is finished
    return data, digest.hexdigest()


def import_state_dict(path: str | Path, *, spec: ModelSpec) -> Checkpoint:
    """Import a plain MONAI ``DiffusionModelUNet`` state_dict saved with ``torch.save``.

    Only ``torch.load(weights_only=True)`` is used: tensors and plain containers load, any
    pickled object that would run code is refused before it runs. Dicts nesting the weights
    under ``model``/``ema``/``unet_state_dict``/``state_dict`` are understood; ``module.``
    (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) prefixes are removed.
    """
    path = _existing_file(path)
    data, digest = _read_and_hash(path, None)
    ckpt = _import_state_dict_bytes(path, data, spec=spec)
    ckpt.sha256 = digest
    return ckpt


def _import_state_dict_bytes(path: Path, data: mmap.mmap | bytearray, *, spec: ModelSpec) -> Checkpoint:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path.name}: it contains pickled Python objects other than tensors, "
            "which could run arbitrary code. Nothing in it was run. If you trust its source, re-save only the "
            "weights: torch.save(model.state_dict(), 'weights.pt'). "
            f"(PyTorch said: {_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch file (truncated or not a checkpoint): {_first_line(exc)}"
        ) from None
    weights, ema = _extract_weights(obj, path)
    ckpt = Checkpoint(
        spec=spec,
        weights=weights,
        ema_weights=ema,
        provenance={"source": f"imported from {path.name}", "imported_with_preset": spec.name},
        path=path,
    )
    model = spec.build_model()
    check_state_dict(model, weights, source=path.name, spec_name=spec.name)
    if ema is not None:
        check_state_dict(model, ema, source=f"{path.name} (ema)", spec_name=spec.name)
        validate_weights(ema, spec, source=f"{path.name} (ema)")
    validate_weights(weights, spec, source=path.name)
    return ckpt


def check_state_dict(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], *, source: str, spec_name: str | None = None
) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    misshaped = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or misshaped):
        return
    target = f"preset {spec_name!r}" if spec_name else "the model spec"
    parts = [f"{source} does not fit {target}:"]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped)):
        if keys:
            shown = "; ".join(keys[:_MAX_KEYS_IN_MESSAGE])
            more = f" (+{len(keys) - _MAX_KEYS_IN_MESSAGE} more)" if len(keys) > _MAX_KEYS_IN_MESSAGE else ""
            parts.append(f"{len(keys)} {label}: {shown}{more}.")
    fitting = _presets_that_fit(weights)
    if fitting:
        parts.append(f"It fits preset {', '.join(repr(n) for n in fitting)}.")
    raise CheckpointError(" ".join(parts))


def _presets_that_fit(weights: Mapping[str, torch.Tensor]) -> list[str]:
    from engine.checkpoint_checks import expected_state

    names = []
    for name, spec in PRESETS.items():
        # shapes only (meta device): building the paper preset for real would take 190 MB and a second
        expected = expected_state(spec)
        if set(expected) == set(weights) and all(expected[k][0] == tuple(weights[k].shape) for k in expected):
            names.append(name)
    return names


def _extract_weights(obj, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state_dict of named tensors")
    ema = obj.get("ema") if isinstance(obj.get("ema"), Mapping) else None
    weights = None
    for key in NESTED_WEIGHT_KEYS:
        if isinstance(obj.get(key), Mapping):
            weights = obj[key]
            break
    if weights is None:
        weights = ema if ema is not None else obj
    weights = _clean_keys(weights, path)
    return weights, (_clean_keys(ema, path) if ema is not None and ema is not weights else None)


def _clean_keys(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path.name}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                "this does not look like a model state_dict"
            )
        name = str(key)
        for prefix in _PREFIXES_TO_STRIP:
            while name.startswith(prefix):
                name = name[len(prefix) :]
        out[name] = value
    if not out:
        raise CheckpointError(f"{path.name} holds no tensors")
    return out


def _load_safetensors(path: Path, data: mmap.mmap | bytearray, preset: str | ModelSpec | None) -> Checkpoint:
    """A checkpoint from the bytes of a ``.safetensors`` file (read once by the caller)."""
    layout, start = _safetensors_header(path, data)
    meta = layout.get("__metadata__") or {}
    header = _brainsynth_header(path, meta if isinstance(meta, dict) else {})
    tensors = _safetensors_tensors(path, data, layout, start)
    if header is None:
        if preset is None:
            raise CheckpointError(
                f"{path.name} holds weights without a BrainSynth model description; "
                f"say which architecture it is with --preset ({', '.join(PRESETS)})"
            )
        spec = _as_spec(preset)
        weights = _clean_keys(tensors, path)
        check_state_dict(spec.build_model(), weights, source=path.name, spec_name=spec.name)
        validate_weights(weights, spec, source=path.name)
        return Checkpoint(spec=spec, weights=weights, provenance={"source": f"imported from {path.name}"}, path=path)
    spec = validate_metadata(header, source=path.name)
    if preset is not None:
        asked = _as_spec(preset)
        if (asked.unet, asked.grid) != (spec.unet, spec.grid):
            raise CheckpointError(
                f"{path.name} holds a {spec.name!r} model but preset {asked.name!r} was asked for; "
                "leave out --preset for BrainSynth checkpoints"
            )
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    if not weights:
        raise CheckpointError(f"{path.name} has BrainSynth metadata but no model weights")
    validate_weights(weights, spec, source=path.name)
    if ema is not None:
        validate_weights(ema, spec, source=f"{path.name} (ema)")
    return Checkpoint(spec=spec, weights=weights, ema_weights=ema, provenance=header.get("provenance", {}), path=path)


def _not_readable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is not a readable safetensors checkpoint (truncated or another kind of file): {reason}"
    )


def _safetensors_header(path: Path, data: mmap.mmap | bytearray) -> tuple[dict, int]:
    """A safetensors file's JSON header and where its tensor bytes start.

    The format: an 8-byte little-endian header length, then that many bytes of JSON (tensor
    name → dtype, shape and byte offsets from the end of the header, plus an optional
    ``__metadata__`` of strings), then the tensors' bytes.
    """
    if len(data) < 8:
        raise _not_readable(path, f"{len(data)} bytes, shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise _not_readable(path, f"header of {size} bytes in a file of {len(data)}")
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_readable(path, f"header is not JSON ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise _not_readable(path, "header is not a JSON object")
    return header, 8 + size


# safetensors dtype names → torch dtypes (the ones a diffusion checkpoint can hold).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_tensors(path: Path, data: mmap.mmap | bytearray, layout: dict, start: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of ``data`` (no copy), every entry checked.

    ``layout`` is the file's JSON header and ``start`` the offset of its tensor bytes. A tensor
    whose bytes do not start at a multiple of its element size is copied instead, so no kernel
    ever reads misaligned memory. safetensors stores little-endian, as every machine we run on is.
    """
    if sys.byteorder != "little":
        raise CheckpointError(f"{path.name}: reading checkpoints on a big-endian machine is not supported")
    tensors: dict[str, torch.Tensor] = {}
    available = len(data) - start
    for name, info in layout.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path.name} is damaged: tensor {name!r} is described wrongly ({type(exc).__name__}: {exc})"
            ) from None
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != count * itemsize:
            raise CheckpointError(f"{path.name} is damaged: tensor {name!r} has inconsistent offsets")
        if end > available:
            raise CheckpointError(
                f"{path.name} is damaged or truncated: tensor {name!r} ends at byte {start + end}, "
                f"the file has {len(data)}"
            )
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        tensors[name] = tensor.clone() if (start + begin) % itemsize else tensor
    return tensors


def _read_safetensors_header(path: Path) -> dict | None:
    """BrainSynth metadata from a safetensors header (reading only the header); None for plain weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise _not_readable(path, _first_line(exc)) from None
    return _brainsynth_header(path, meta)


def _brainsynth_header(path: Path, meta: Mapping[str, str]) -> dict | None:
    """The parsed ``"brainsynth"`` entry of safetensors metadata, checked; None when absent."""
    if "brainsynth" not in meta:
        return None
    return parse_metadata(meta["brainsynth"], source=path.name)


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it")
    return path


def _as_spec(preset: str | ModelSpec) -> ModelSpec:
    return preset if isinstance(preset, ModelSpec) else get_preset(preset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
