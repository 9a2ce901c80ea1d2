"""Anonymous case numbers and each reader's case order, from SHA-256 only.

* **Blind numbering.** Case numbers are assigned in a seeded shuffled order
  (:func:`anonymous_numbers`), so number 1 is not "the first real scan".
* **Reproducible orders.** Each reader's order is a shuffle seeded by the study seed and the
  reader's name (:func:`reader_order`): the same every time, different between readers. It
  is computed from SHA-256 only, so no library update can change it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _hash_int(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def reader_order(study_seed: int, reader: str, case_numbers: Sequence[int]) -> list[int]:
    """A reader's shuffled case order, seeded by the study seed and the reader's name.

    Sorting by a SHA-256 of (seed, reader, case number) is a uniformly random permutation
    for every practical purpose, reproducible on any machine and Python or NumPy version,
    and unrelated between readers.

    Args:
        study_seed: the study's seed.
        reader: the reader's name (exactly as stored).
        case_numbers: the study's anonymous case numbers.

    Returns:
        The case numbers in the order this reader sees them.
    """
    return sorted(case_numbers, key=lambda n: _hash_int("order", study_seed, reader, n))


def anonymous_numbers(study_seed: int, count: int) -> list[int]:
    """Case numbers 1..count for the study's input list (reals then synthetics), shuffled with the seed,
    so a number says nothing about which pool a case came from."""
    order = sorted(range(count), key=lambda i: _hash_int("number", study_seed, i))
    numbers = [0] * count
    for number, index in enumerate(order, start=1):
        numbers[index] = number
    return numbers
