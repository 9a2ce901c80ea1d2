"""Which open real scan matches a generated volume's condition: the same group, the closest age; no Qt.

A real scan's labels are read as training reads them
(:class:`engine.training.covariates.CovariateSources`: a ``participants.tsv`` beside the scan
or up to two folders above it, matched by file name, ``sub-<label>`` prefix or folder), and
checked against the model's covariates (:meth:`engine.conditions.ConditionSpec.check`), so
"FTD" in a file matches the model's "ftd" and a value the model does not know is not a label.
:func:`label_texts` reads one column the same way, as text, for the augmentation utility
(whose engine reads the labels again from the files, exactly as the command line does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.conditions import MISSING_VALUES, ConditionSpec
from engine.errors import BrainSynthError


def label_texts(paths: Sequence[Path], label: str) -> dict[Path, str | None]:
    """Each scan's ``label`` as its ``participants.tsv`` row gives it (stripped), as training reads it.

    None for a scan with no row, no such column, or a missing value ("n/a", empty...).

    Raises:
        BrainSynthError: a participants.tsv that cannot be read.
    """
    from engine.training.covariates import CovariateSources
    from engine.training.data import DataItem

    sources = CovariateSources()
    out: dict[Path, str | None] = {}
    for path in paths:
        row = sources.row(DataItem(Path(path)))
        value = (row or {}).get(label)
        text = value.strip() if isinstance(value, str) else None
        out[path] = None if text is None or text.lower() in MISSING_VALUES else text
    return out


@dataclass(frozen=True)
class ScanMatch:
    """The outcome of looking for a real scan like a generated volume.

    Attributes:
        path: the chosen scan, or None when none matches.
        message: one line for the status bar: what was matched, or why nothing was.
    """

    path: Path | None
    message: str


class ScanLabels:
    """Labels of real scans for one model's covariates, read once per scan."""

    def __init__(self, conditions: ConditionSpec) -> None:
        from engine.training.covariates import CovariateSources

        self.conditions = conditions
        self._sources = CovariateSources()
        self._labels: dict[Path, dict | None] = {}

    def labels(self, path: Path) -> dict | None:
        """The scan's checked covariates of this model (missing or unknown values left out), or
        None when no ``participants.tsv`` row belongs to it (or the file cannot be read)."""
        if path not in self._labels:
            self._labels[path] = self._read(path)
        return self._labels[path]

    def _read(self, path: Path) -> dict | None:
        from engine.training.data import DataItem

        try:
            row = self._sources.row(DataItem(Path(path)))
        except BrainSynthError:
            return None  # an unreadable participants.tsv labels nothing; training reports it
        if row is None:
            return None
        labels: dict = {}
        for covariate in self.conditions.covariates:
            if covariate.name not in row:
                continue
            try:
                labels.update(self.conditions.check({covariate.name: row[covariate.name]}, allow_extrapolation=True))
            except BrainSynthError:
                continue  # "n/a", a non-number, a category the model never saw: no label
        return labels

    def match(self, condition: Mapping, paths: Sequence[Path]) -> ScanMatch:
        """The scan of ``paths`` with every categorical value of ``condition`` (the group, sex…)
        whose continuous values (age…) are closest, in units of each covariate's training range.

        Args:
            condition: a generated volume's checked condition (its provenance's ``conditions``).
            paths: the real scans to choose from (those that can be compared).
        """
        if not condition:
            return ScanMatch(
                None, "this volume was generated for any condition (the whole population): no group to match"
            )
        wanted = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in condition.items())
        labelled = [(p, self.labels(p)) for p in paths]
        labelled = [(p, lab) for p, lab in labelled if lab]
        if not labelled:
            return ScanMatch(
                None,
                f"no open real scan has labels ({len(paths)} open): put a participants.tsv "
                "(participant_id plus the model's covariates) beside the scans, as for training",
            )
        categorical = {
            name: value for name, value in condition.items() if self.conditions.covariate(name).kind == "categorical"
        }
        candidates = [(p, lab) for p, lab in labelled if all(lab.get(k) == v for k, v in categorical.items())]
        if not candidates:
            seen = []
            for name in categorical:
                counts: dict[str, int] = {}
                for _, lab in labelled:
                    if name in lab:
                        counts[lab[name]] = counts.get(lab[name], 0) + 1
                listed = ", ".join(f"{value} ({n})" for value, n in sorted(counts.items()))
                seen.append(f"{name}: {listed}" if counts else f"none has a {name}")
            return ScanMatch(
                None,
                f"no labelled real scan of {', '.join(f'{k} {v}' for k, v in categorical.items())} is open "
                f"(of the {len(labelled)} labelled, {'; '.join(seen)})",
            )

        def distance(labels: dict) -> tuple[int, float]:
            missing, total = 0, 0.0
            for name, value in condition.items():
                covariate = self.conditions.covariate(name)
                if covariate.kind != "continuous":
                    continue
                if name not in labels:
                    missing += 1  # a scan without that label comes after every scan with it
                    continue
                total += abs(labels[name] - value) / ((covariate.maximum - covariate.minimum) or 1.0)
            return missing, total

        path, labels = min(candidates, key=lambda c: (distance(c[1]), str(c[0])))
        shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in labels.items())
        return ScanMatch(path, f"{path.name} ({shown}), the closest to {wanted}")
