"""What a checkpoint file says, checked before anything is built from it.

A ``.safetensors`` checkpoint is tensors plus a JSON header (see :mod:`engine.checkpoint`).
Everything in it may be damaged or hostile, so the loader runs three checks, each one call:

* :func:`parse_metadata` – the BrainSynth JSON: valid, not nested deeper than any honest
  header (a 100,000-level bomb would exhaust Python's stack), no ``NaN``/``Infinity``
  literals and no number that overflows to infinity (``1e400``); ``format`` and
  ``format_version`` of the right types.
* :func:`validate_metadata` – the schema: the spec's fields (types and bounds, in the specs'
  own ``from_dict``/``__post_init__``), provenance an object, and :func:`estimate_memory`
  of the model and of one sampling step within bounds, all before a module is built.
* :func:`validate_weights` – the tensors: the names and shapes the spec's network has,
  floating dtypes where the network has them, finite values.

Each failure is one :class:`~engine.errors.CheckpointError` that names the file.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from engine.errors import BrainSynthError, CheckpointError
from engine.specs import ModelSpec

FORMAT_NAME = "brainsynth-checkpoint"
#: The newest format this version reads. 2 = a latent-diffusion model (two networks, a latent
#: grid); pixel models are still written as 1, so older readers keep opening them, and an older
#: reader given a latent model says "written by a newer BrainSynth" rather than a schema error.
FORMAT_VERSION = 2


def format_version_for(spec: ModelSpec) -> int:
    """The format version a checkpoint of ``spec`` is written with (the oldest that holds it)."""
    return 2 if spec.latent is not None else 1


#: Deepest JSON nesting a BrainSynth header has (spec → grid → affine → row is 4) with room
#: for provenance records; far below where Python's parser would run out of stack.
MAX_JSON_DEPTH = 64
#: Largest model accepted: 4 G parameters (16 GiB in float32), 80x the reference study's.
MAX_MODEL_BYTES = 16 * 2**30
#: Largest working memory of one sampling step of one volume with memory-efficient
#: attention (float32); a model beyond it cannot run on any single machine.
MAX_STEP_BYTES = 256 * 2**30
_BYTES_PER_VALUE = 4  # float32
#: Largest weight magnitude accepted. Trained diffusion UNets hold weights of order 1 (the
#: bundled model's largest is below 10); a 1e23 weight (one flipped exponent bit) is finite
#: but overflows float32 in the first convolution, so every sample would be NaN.
MAX_ABS_WEIGHT = 1e6


def parse_metadata(text: str, *, source: str) -> dict:
    """The BrainSynth header JSON as a dict, checked for format and version.

    Args:
        text: the ``"brainsynth"`` entry of the safetensors metadata.
        source: file name for messages.

    Raises:
        CheckpointError: invalid or hostile JSON, another format, or a newer version.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"{source}: its BrainSynth metadata is not text")
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{source}: its BrainSynth metadata is nested {depth:,} levels deep (at most {MAX_JSON_DEPTH}); "
            "the file is damaged or not a BrainSynth checkpoint"
        )
    try:
        header = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _BadNumberError as exc:
        raise CheckpointError(f"{source}: its BrainSynth metadata holds {exc}, which is not a usable number") from None
    except (json.JSONDecodeError, ValueError, RecursionError):
        # ValueError too: an integer of more than 4300 digits is refused by int().
        raise CheckpointError(f"{source}: its BrainSynth metadata is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{source}: its BrainSynth metadata is {_json_type(header)}, not an object; the file is damaged"
        )
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: unknown metadata format {_short(header.get('format'))}")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{source}: its format_version is {_short(version)}, not a whole number from 1; the file is damaged"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} was written by a newer BrainSynth (format {version}); "
            f"this version reads format {FORMAT_VERSION} — please upgrade"
        )
    return header


def validate_metadata(header: Mapping, *, source: str) -> ModelSpec:
    """The model spec of a parsed header, every field and the memory it needs checked.

    Args:
        header: what :func:`parse_metadata` returned.
        source: file name for messages.

    Raises:
        CheckpointError: a missing or bad field, provenance that is not an object, or a model
            too large to build, with what is wrong and how big it would be.
    """
    if "spec" not in header:
        raise CheckpointError(f"{source} has a damaged model description (KeyError: 'spec')")
    try:
        spec = ModelSpec.from_dict(header["spec"])
    except BrainSynthError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(
            f"{source} has a damaged model description ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    provenance = header.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CheckpointError(f"{source}: its provenance is {_json_type(provenance)}, not an object")
    if "has_ema" in header and not isinstance(header["has_ema"], bool):
        raise CheckpointError(f"{source}: has_ema is {_short(header['has_ema'])}, not true or false")
    check_memory(spec, source=source)
    return spec


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory a spec needs, in bytes (float32, one volume).

    Attributes:
        parameters: number of weights of the network.
        model_bytes: the weights.
        step_bytes: activations of one denoising step with memory-efficient attention
            (kept skip connections, the widest block's working tensors, the attention
            projections).
        attention_bytes: what plain attention adds on top (the voxels x voxels score
            matrices of each attention level), which fused/flash attention avoids.
    """

    parameters: int
    model_bytes: int
    step_bytes: int
    attention_bytes: int


def estimate_memory(spec: ModelSpec) -> MemoryEstimate:
    """How much memory the network of ``spec`` and one sampling step of it need.

    The network is laid out on PyTorch's ``meta`` device (shapes only, no memory), so the
    parameter count is exact; the step's activations are an estimate from the grid and the
    channels of each level (each level halves every axis). It is a lower bound: convolution
    backends add workspace on top (measured on CPU, one thread: 142 MB for the demo preset
    against 71 MB estimated, 713 MB against 593 MB for the paper network on a 40 x 64 x 40
    grid), which is well within the factor the refusal bounds leave.
    """
    parameters = sum(math.prod(shape) for shape, _ in expected_state(spec).values())
    unet = spec.unet
    voxels = math.prod(spec.denoiser_shape)  # a latent model's UNet runs on the latent grid
    levels = len(unet.channels)
    kept = voxels * unet.channels[0]  # the input convolution's output, kept for the last skip
    widest = 0
    attention = 0
    for i, channels in enumerate(unet.channels):
        at_level = voxels / 8**i
        kept += unet.num_res_blocks * at_level * channels
        if i < levels - 1:
            kept += at_level / 8 * channels  # the downsampled output, kept as a skip too
        # up blocks concatenate a skip: up to twice the channels, a few tensors alive at once
        widest = max(widest, 4 * 2 * channels * at_level)
        if unet.attention_levels[i] or i == levels - 1:
            head_channels = unet.num_head_channels
            head_channels = head_channels[i] if isinstance(head_channels, tuple) else head_channels
            heads = max(1, channels // max(1, head_channels))
            widest = max(widest, 4 * channels * at_level)  # q, k, v and the output
            attention = max(attention, 2 * heads * at_level * at_level)  # scores and their softmax
    return MemoryEstimate(
        parameters=int(parameters),
        model_bytes=int(parameters * _BYTES_PER_VALUE),
        step_bytes=int((kept + widest) * _BYTES_PER_VALUE),
        attention_bytes=int(attention * _BYTES_PER_VALUE),
    )


def check_memory(spec: ModelSpec, *, source: str) -> MemoryEstimate:
    """:func:`estimate_memory`, refusing a model beyond :data:`MAX_MODEL_BYTES` or a step
    beyond :data:`MAX_STEP_BYTES` with the sizes in the message."""
    estimate = estimate_memory(spec)
    if estimate.model_bytes > MAX_MODEL_BYTES:
        raise CheckpointError(
            f"{source} describes a network of {estimate.parameters / 1e9:.3g} billion parameters "
            f"({_gib(estimate.model_bytes)} of weights; at most {_gib(MAX_MODEL_BYTES)} are supported, "
            f"the reference model has 0.0475 billion); its model description is damaged"
        )
    if estimate.step_bytes > MAX_STEP_BYTES:
        raise CheckpointError(
            f"{source}: one sampling step of its model ({len(spec.unet.channels)} levels of up to "
            f"{max(spec.unet.channels)} channels on a {' x '.join(map(str, spec.grid.shape))} grid) would "
            f"need at least {_gib(estimate.step_bytes)} of memory (at most {_gib(MAX_STEP_BYTES)} are supported); "
            "its model description is damaged"
        )
    return estimate


@functools.lru_cache(maxsize=16)
def expected_state(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name → (shape, dtype) of every entry of the state_dict the spec's network has.

    Built on the ``meta`` device: MONAI's constructor runs (so its own objections surface
    here, as a CheckpointError by the caller) but no weights are allocated.
    """
    with torch.device("meta"):
        model = spec.build_model()
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def validate_weights(weights: Mapping[str, torch.Tensor], spec: ModelSpec, *, source: str) -> None:
    """Refuse weights that do not fit ``spec`` or that are not usable numbers.

    Checks names and shapes (missing, unexpected and mis-shaped keys named, as
    :func:`engine.checkpoint.check_state_dict` does), that every tensor the network holds in
    floating point is floating point in the file too (an int32 weight would be silently
    converted), and that every value is finite (a NaN weight shows only after sampling,
    as an all-NaN volume).

    Raises:
        CheckpointError: naming the file and the first offending tensors.
    """
    from engine.checkpoint import check_state_dict

    try:
        expected = expected_state(spec)
    except Exception as exc:  # MONAI's constructor: a combination the field checks missed
        raise CheckpointError(
            f"{source}: MONAI cannot build its network ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    check_state_dict(_ShapesOnly(expected), weights, source=source, spec_name=None)
    wrong_dtype = [
        f"{k} ({str(weights[k].dtype).removeprefix('torch.')})"
        for k, (_, dtype) in expected.items()
        if dtype.is_floating_point and not weights[k].is_floating_point()
    ]
    if wrong_dtype:
        raise CheckpointError(
            f"{source} holds non-floating-point weights where the network has floating point: "
            f"{'; '.join(wrong_dtype[:4])}{' …' if len(wrong_dtype) > 4 else ''}; the file is damaged"
        )
    largest = {k: _largest_magnitude(t) for k, t in weights.items() if t.is_floating_point()}
    not_finite = [k for k, m in largest.items() if not math.isfinite(m)]
    if not_finite:
        raise CheckpointError(
            f"{source} holds NaN or infinite weights in {len(not_finite)} tensor(s) "
            f"({', '.join(not_finite[:3])}{' …' if len(not_finite) > 3 else ''}); the training diverged or the "
            "file is damaged: use an earlier checkpoint"
        )
    huge = [f"{k} ({m:.3g})" for k, m in largest.items() if m > MAX_ABS_WEIGHT]
    if huge:
        raise CheckpointError(
            f"{source} holds weights far beyond any trained network's (largest magnitude allowed {MAX_ABS_WEIGHT:g}): "
            f"{'; '.join(huge[:3])}{' …' if len(huge) > 3 else ''}; the file is damaged: use an earlier checkpoint"
        )


def _largest_magnitude(tensor: torch.Tensor) -> float:
    """max |value| of a floating-point tensor; NaN if any value is NaN, inf if any is infinite.

    Through numpy (min and max in place, no temporary), ~100x faster than torch.isfinite on
    the many small CPU tensors of a checkpoint.
    """

    values = tensor.detach().cpu()
    if values.dtype not in (torch.float16, torch.float32, torch.float64):
        values = values.float()  # bfloat16 and others numpy lacks: exact in float32
    array = values.numpy().reshape(-1)
    if array.size == 0:
        return 0.0
    lo, hi = float(array.min()), float(array.max())  # NaN propagates through both
    if math.isnan(lo) or math.isnan(hi):
        return math.nan
    return max(abs(lo), abs(hi))


class _ShapesOnly:
    """Stands in for a module in :func:`check_state_dict`, which only asks for shapes."""

    def __init__(self, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        self._state = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in expected.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class _BadNumberError(ValueError):
    pass


def _refuse_constant(name: str):
    raise _BadNumberError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumberError(text if len(text) <= 20 else text[:17] + "...")
    return value


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (brackets inside strings ignored), without
    recursion, so that a nesting bomb is measured, not parsed."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _json_type(value) -> str:
    """ "a list", "a number", ... or "null": what a JSON value is, for "its provenance is ..." messages."""
    if value is None:
        return "null"
    return "a " + {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _gib(n: float) -> str:
    if n >= 2**40:
        return f"{n / 2**40:,.1f} TiB"
    return f"{n / 2**30:,.1f} GiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
