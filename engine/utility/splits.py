"""Splits of the utility experiment: all by subject, stratified, pure functions of the seed.

* The held-out test set of a repeat: within each stratum (the class; for regression the
  target's quartile), the first ``round(test_fraction * n)`` subjects in the order
  ``sha256(seed:repeat:test:subject)``. Every arm of a repeat is tested on the same subjects.
* The real training subsets of the learning curve are nested: size n takes the first n of the
  remaining subjects in a stratified round-robin of the order ``sha256(seed:repeat:train:subject)``,
  so size 8 holds every subject of size 4.
* The validation split (early stopping) takes, per stratum, ``round(val_fraction * n)``
  subjects (at least one where the stratum has two or more) of the arm's training subjects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.utility.data import LabelledScan
from engine.utility.errors import UtilityError

#: Fewest test subjects per class (classification) or in all (regression) for a usable figure.
MIN_TEST_PER_CLASS = 2
MIN_TEST_REGRESSION = 4
#: Fewest training subjects per class left after the test split.
MIN_TRAIN_PER_CLASS = 2


@dataclass(frozen=True)
class Subject:
    """A subject and its scans (one label per subject)."""

    key: str
    scans: tuple[LabelledScan, ...]
    target: float
    stratum: str


def _order(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def group_subjects(scans: Sequence[LabelledScan], *, task: str) -> list[Subject]:
    """The subjects of ``scans``, sorted by key, with their stratum.

    Raises:
        UtilityError: a subject whose scans carry different labels.
    """
    by_subject: dict[str, list[LabelledScan]] = {}
    for scan in scans:
        by_subject.setdefault(scan.subject, []).append(scan)
    mixed = [k for k, ss in by_subject.items() if len({s.label for s in ss}) > 1]
    if mixed:
        raise UtilityError(
            f"subjects with scans of different labels: {', '.join(sorted(mixed)[:5])}; a subject needs one label"
        )
    keys = sorted(by_subject)
    targets = {k: by_subject[k][0].target for k in keys}
    if task == "classify":
        strata = {k: "positive" if targets[k] >= 0.5 else "negative" for k in keys}
    else:
        values = np.array([targets[k] for k in keys], dtype=np.float64)
        edges = np.quantile(values, [0.25, 0.5, 0.75]) if len(values) else []
        strata = {k: f"q{int(np.searchsorted(edges, targets[k], side='right'))}" for k in keys}
    return [Subject(k, tuple(sorted(by_subject[k], key=lambda s: s.sha256)), targets[k], strata[k]) for k in keys]


def _by_stratum(subjects: Sequence[Subject], order) -> dict[str, list[Subject]]:
    out: dict[str, list[Subject]] = {}
    for subject in sorted(subjects, key=order):
        out.setdefault(subject.stratum, []).append(subject)
    return dict(sorted(out.items()))


def held_out_split(
    subjects: Sequence[Subject], *, test_fraction: float, seed: int, repeat: int
) -> tuple[list[Subject], list[Subject]]:
    """``(train_pool, test)`` of one repeat (see the module docstring), each sorted by key."""
    strata = _by_stratum(subjects, lambda s: _order(seed, repeat, "test", s.key))
    test: list[Subject] = []
    for members in strata.values():
        test.extend(members[: round(test_fraction * len(members))])
    keys = {s.key for s in test}
    pool = [s for s in subjects if s.key not in keys]
    return sorted(pool, key=lambda s: s.key), sorted(test, key=lambda s: s.key)


def check_split_sizes(subjects: Sequence[Subject], *, task: str, test_fraction: float) -> None:
    """Refuse a test set too small for its figure, or too few subjects left to train on.

    The sizes do not depend on the repeat (each stratum gives the same count every time).

    Raises:
        UtilityError: one class only, or too few test or training subjects, with the numbers.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UtilityError(f"--test-fraction must be between 0 and 1 (got {test_fraction:g})")
    strata = _by_stratum(subjects, lambda s: s.key)
    if task == "classify":
        if len(strata) < 2:
            only = next(iter(strata), "none")
            raise UtilityError(
                f"the real scans hold one class only ({only}: {len(subjects)} subjects); "
                "classification needs positive and negative subjects"
            )
        for name, members in strata.items():
            n_test = round(test_fraction * len(members))
            if n_test < MIN_TEST_PER_CLASS:
                raise UtilityError(
                    f"the test set would hold {n_test} {name} subject(s) ({len(members)} {name} subjects × "
                    f"--test-fraction {test_fraction:g}); at least {MIN_TEST_PER_CLASS} per class are needed: "
                    "add real subjects or raise --test-fraction"
                )
            if len(members) - n_test < MIN_TRAIN_PER_CLASS:
                raise UtilityError(
                    f"only {len(members) - n_test} {name} subject(s) would be left for training after the test "
                    f"split; at least {MIN_TRAIN_PER_CLASS} are needed: add real subjects or lower --test-fraction"
                )
    else:
        n_test = sum(round(test_fraction * len(m)) for m in strata.values())
        if n_test < MIN_TEST_REGRESSION:
            raise UtilityError(
                f"the test set would hold {n_test} subjects ({len(subjects)} × --test-fraction {test_fraction:g}); "
                f"at least {MIN_TEST_REGRESSION} are needed: add real subjects or raise --test-fraction"
            )
        if len(subjects) - n_test < MIN_TRAIN_PER_CLASS * 2:
            raise UtilityError(f"only {len(subjects) - n_test} subjects would be left for training")


def training_order(pool: Sequence[Subject], *, seed: int, repeat: int) -> list[Subject]:
    """The pool in a stratified round-robin order: prefixes are the nested training subsets."""
    strata = list(_by_stratum(pool, lambda s: _order(seed, repeat, "train", s.key)).values())
    total = len(pool)
    taken = [0] * len(strata)
    order: list[Subject] = []
    while len(order) < total:
        # The stratum furthest below its share of the prefix goes next, so every prefix keeps
        # the pool's class balance (ties: the larger stratum, then the first).
        k = len(order) + 1
        best = max(
            (i for i in range(len(strata)) if taken[i] < len(strata[i])),
            key=lambda i: (k * len(strata[i]) / total - taken[i], len(strata[i]), -i),
        )
        order.append(strata[best][taken[best]])
        taken[best] += 1
    return order


def training_subset(ordered: Sequence[Subject], size: int) -> list[Subject]:
    """The first ``size`` subjects of :func:`training_order`, keeping every class represented.

    Raises:
        UtilityError: a size that cannot hold one subject of each stratum, or more than the pool.
    """
    if size > len(ordered):
        raise UtilityError(
            f"--real-train-sizes {size}: only {len(ordered)} real subjects are left for training after the test split"
        )
    chosen = list(ordered[:size])
    needed = {s.stratum for s in ordered}
    if {s.stratum for s in chosen} != needed:
        raise UtilityError(
            f"--real-train-sizes {size} is too small to hold a subject of every class ({', '.join(sorted(needed))})"
        )
    return chosen


def validation_split(
    subjects: Sequence[Subject], *, val_fraction: float, seed: int, salt: str
) -> tuple[list[Subject], list[Subject]]:
    """``(train, val)`` of an arm's subjects; ``val`` may be empty (then no early stopping)."""
    strata = _by_stratum(subjects, lambda s: _order(seed, salt, "val", s.key))
    val: list[Subject] = []
    for members in strata.values():
        n = round(val_fraction * len(members))
        if val_fraction > 0 and n == 0 and len(members) >= 2:
            n = 1
        val.extend(members[: min(n, len(members) - 1)])
    keys = {s.key for s in val}
    return [s for s in subjects if s.key not in keys], val


def pick_synthetic(
    synthetic: Sequence[Subject], *, like: Sequence[Subject], count: int, seed: int, salt: str
) -> list[Subject]:
    """``count`` synthetic volumes with the class balance of ``like`` (nested in ``count``).

    Raises:
        UtilityError: not enough synthetic volumes of a class.
    """
    strata = _by_stratum(synthetic, lambda s: _order(seed, salt, "synthetic", s.key))
    shares: dict[str, int] = {}
    for s in like:
        shares[s.stratum] = shares.get(s.stratum, 0) + 1
    chosen: list[Subject] = []
    remaining = count
    names = sorted(shares)
    for i, name in enumerate(names):
        n = remaining if i == len(names) - 1 else round(count * shares[name] / len(like))
        remaining -= n
        have = strata.get(name, [])
        if n > len(have):
            raise UtilityError(
                f"{count} synthetic volumes are needed ({n} {name}), but only {len(have)} {name} synthetic "
                "volumes were given: generate more, or lower --synthetic-ratio / --real-train-sizes"
            )
        chosen.extend(have[:n])
    return chosen
