"""Checks of single values in specs that may come from a file (a checkpoint's JSON metadata).

Specs are built in code (presets, tests) and from files; a file may hold anything JSON can
say, so every field is checked for its type and bounds when a spec is made, and a bad one
is one :class:`~engine.errors.BrainSynthError` naming the field ("unet.channels[1] must be a
whole number from 1 to 4096, not -8"). Python's ``bool`` is an ``int``; it is refused where a
number is meant, and numpy scalars are accepted where a number is meant.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from engine.errors import BrainSynthError


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(value, name: str, *, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or a BrainSynthError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BrainSynthError(f"{name} must be a whole number from {lo} to {hi:,}, not {_shown(value)}")
    if not lo <= int(value) <= hi:
        raise BrainSynthError(f"{name} must be a whole number from {lo} to {hi:,}, not {int(value):,}")
    return int(value)


def check_float(
    value, name: str, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False
) -> float:
    """``value`` as a finite float within the bounds (open or closed), or a BrainSynthError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BrainSynthError(f"{name} must be a number, not {_shown(value)}")
    out = float(value)
    if not math.isfinite(out):
        raise BrainSynthError(f"{name} must be a finite number, not {out}")
    too_low = out <= lo if lo_open else out < lo
    too_high = out >= hi if hi_open else out > hi
    if too_low or too_high:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise BrainSynthError(f"{name} must lie in {left}{lo:g}, {hi:g}{right}, not {out:g}")
    return out


def check_str(value, name: str, *, max_len: int = 200) -> str:
    """``value`` as a str of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise BrainSynthError(f"{name} must be text, not {_shown(value)}")
    if len(value) > max_len:
        raise BrainSynthError(f"{name} is {len(value):,} characters long; at most {max_len} are allowed")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` as a bool (``True``/``False`` only, not 0/1 or text)."""
    if not isinstance(value, bool):
        raise BrainSynthError(f"{name} must be true or false, not {_shown(value)}")
    return value


def check_sequence(value, name: str, *, min_len: int, max_len: int) -> Sequence:
    """``value`` as a list/tuple of ``min_len`` to ``max_len`` items (not text)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise BrainSynthError(f"{name} must be a list, not {_shown(value)}")
    if not min_len <= len(value) <= max_len:
        count = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
        raise BrainSynthError(f"{name} must have {count} entries, not {len(value)}")
    return value


def check_mapping(value, name: str) -> dict:
    """``value`` if it is a dict (a JSON object), else a BrainSynthError."""
    if not isinstance(value, dict):
        raise BrainSynthError(f"{name} must be an object of named fields, not {_shown(value)}")
    return value


def check_keys(data: dict, name: str, *, allowed: Sequence[str]) -> None:
    """Refuse keys a spec does not know (a damaged or foreign description)."""
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise BrainSynthError(f"{name} has unknown fields: {', '.join(_shown(k) for k in unknown[:6])}")
