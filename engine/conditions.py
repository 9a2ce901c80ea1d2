"""Covariates a model is conditioned on: their spec, encoding, null condition and dropout.

A conditional model is told, per volume, some of its covariates (age, sex, diagnosis...).
:class:`ConditionSpec` (stored in the model spec, hence in every checkpoint) names them, their
kind and what training saw: a continuous covariate keeps its training range, which also
normalises it (``[min, max] -> [-1, 1]``); a categorical one keeps its vocabulary.

Encoding (one place, used by training and sampling alike): a batch of conditions is a float
tensor ``(B, 2 n)`` for n covariates: n values (the normalised number, or the category's
index) followed by n "present" flags. A flag of 0 is the null (the covariate not given); the
whole null condition is all flags 0. :class:`CovariateEmbedding` turns it into a vector of
the UNet's time-embedding size: each present covariate through its own linear map (continuous)
or embedding table (categorical), each absent one through its own learned null vector, summed,
then SiLU and a zero-initialised linear layer. It replaces MONAI's ``class_embedding`` of a
``DiffusionModelUNet`` built with ``num_class_embeds``, so MONAI's own forward adds it to the
time embedding (``emb = emb + class_embedding(class_labels)``) and the tensor travels as
MONAI's ``class_labels=`` argument. The zero-initialised output makes a new conditional network
started from an unconditional one (``--init-from``) compute exactly the old function at first.

Classifier-free guidance (Ho & Salimans 2022) needs the model to know the null: during
training each covariate is dropped with its own probability and the whole condition with
another (:func:`apply_dropout`); at sampling the conditional and null predictions are combined
(:mod:`engine.guidance`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import BrainSynthError

if TYPE_CHECKING:
    import torch

KINDS: tuple[str, ...] = ("continuous", "categorical")
#: How conditions reach the network: ``"embedding"`` (BrainSynth's covariate embedding added to
#: the time embedding, with a learned null) or ``"context"`` (the MONAI brain LDM bundle's: the
#: covariates scaled to [0, 1], given as cross-attention context and as constant input channels;
#: no null was learned, so a covariate not given takes its ``default`` and there is no guidance).
MECHANISMS: tuple[str, ...] = ("embedding", "context")
#: Cell values read as "not recorded" in covariate files (compared lower-case).
MISSING_VALUES = frozenset({"", "n/a", "na", "nan", "none", "null", "?"})
#: What a user types for "no condition on this covariate" (the null).
ANY_VALUE = "any"


class ConditionError(BrainSynthError):
    """A covariate file, covariate name or value that cannot be used."""


@dataclass(frozen=True)
class Covariate:
    """One covariate of a conditional model.

    Attributes:
        name: its column name (``age``, ``sex``, ``group``).
        kind: ``"continuous"`` or ``"categorical"``.
        minimum: smallest training value (continuous; its unit is the data's, e.g. years).
        maximum: largest training value (continuous).
        categories: the training vocabulary, sorted (categorical).
        dropout: probability, per training volume, that this covariate is replaced by its null.
        default: the value used when none is given, for a model without a learned null
            (the ``"context"`` mechanism); None otherwise.
        unit: what the value is measured in, for display (e.g. ``"0-1, the bundle's scaling"``).
    """

    name: str
    kind: str
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()
    dropout: float = 0.1
    default: float | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        if not self.name or "=" in self.name or "," in self.name:
            raise ConditionError(f"a covariate needs a plain name (got {self.name!r})")
        if self.kind not in KINDS:
            raise ConditionError(f"covariate {self.name!r}: kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if not (isinstance(self.dropout, int | float) and 0.0 <= self.dropout <= 1.0):
            raise ConditionError(f"covariate {self.name!r}: dropout must be in [0, 1] (got {self.dropout!r})")
        if self.kind == "continuous":
            if self.minimum is None or self.maximum is None:
                raise ConditionError(f"continuous covariate {self.name!r} needs its training range")
            if not (math.isfinite(self.minimum) and math.isfinite(self.maximum) and self.minimum <= self.maximum):
                raise ConditionError(
                    f"covariate {self.name!r}: bad training range {self.minimum!r} to {self.maximum!r}"
                )
        elif len(self.categories) < 1 or len(set(self.categories)) != len(self.categories):
            raise ConditionError(f"categorical covariate {self.name!r} needs distinct categories")
        if self.default is not None and (
            self.kind != "continuous"
            or isinstance(self.default, bool)
            or not isinstance(self.default, int | float)
            or not math.isfinite(self.default)
        ):
            raise ConditionError(
                f"covariate {self.name!r}: a default must be a finite number of a continuous covariate"
            )
        if not isinstance(self.unit, str) or len(self.unit) > 100:
            raise ConditionError(f"covariate {self.name!r}: its unit must be a short text")

    def describe(self) -> str:
        """``age: continuous, 45 to 85`` or ``sex: categorical, F / M`` (for ``info`` and the app)."""
        if self.kind == "continuous":
            unit = f" {self.unit}" if self.unit else ""
            if self.default is not None:
                return f"{self.name}: continuous, {self.minimum:g} to {self.maximum:g}{unit} (default {self.default:g})"
            return f"{self.name}: continuous, {self.minimum:g} to {self.maximum:g}{unit} (dropout {self.dropout:g})"
        return f"{self.name}: categorical, {' / '.join(self.categories)} (dropout {self.dropout:g})"

    def normalise(self, value: float) -> float:
        """A continuous value mapped so that the training range is [-1, 1]."""
        half = (self.maximum - self.minimum) / 2.0 or 1.0
        return (value - (self.maximum + self.minimum) / 2.0) / half

    def unit_interval(self, value: float) -> float:
        """A continuous value mapped so that the training range is [0, 1] (the bundle's scaling)."""
        return (value - self.minimum) / ((self.maximum - self.minimum) or 1.0)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "dropout": self.dropout}
        if self.kind == "continuous":
            out.update(minimum=self.minimum, maximum=self.maximum)
        else:
            out["categories"] = list(self.categories)
        if self.default is not None:
            out["default"] = self.default
        if self.unit:
            out["unit"] = self.unit
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Covariate:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            minimum=None if data.get("minimum") is None else float(data["minimum"]),
            maximum=None if data.get("maximum") is None else float(data["maximum"]),
            categories=tuple(data.get("categories", ())),
            dropout=float(data.get("dropout", 0.1)),
            default=None if data.get("default") is None else float(data["default"]),
            unit=str(data.get("unit", "")),
        )


@dataclass(frozen=True)
class ConditionSpec:
    """The covariates of a conditional model, as stored in its checkpoint.

    Attributes:
        covariates: the covariates, in encoding order.
        dropout: probability, per training volume, that the whole condition is the null
            (what classifier-free guidance's unconditional branch learns from).
        hidden: width of the covariate embedding before its output layer (0 = the UNet's
            time-embedding width).
        mechanism: how the conditions reach the network (:data:`MECHANISMS`).
    """

    covariates: tuple[Covariate, ...]
    dropout: float = 0.1
    hidden: int = 0
    mechanism: str = "embedding"
    _index: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariates", tuple(self.covariates))
        if not self.covariates:
            raise ConditionError("a condition spec needs at least one covariate")
        names = [c.name for c in self.covariates]
        if len(set(names)) != len(names):
            raise ConditionError(f"covariate names repeat: {', '.join(names)}")
        if not (isinstance(self.dropout, int | float) and 0.0 <= self.dropout <= 1.0):
            raise ConditionError(f"the condition dropout must be in [0, 1] (got {self.dropout!r})")
        if self.mechanism not in MECHANISMS:
            raise ConditionError(f"unknown condition mechanism {self.mechanism!r}; use one of {', '.join(MECHANISMS)}")
        if self.mechanism == "context" and any(c.kind != "continuous" or c.default is None for c in self.covariates):
            raise ConditionError("conditions passed as context must be continuous covariates with a default")
        object.__setattr__(self, "_index", {c.name: i for i, c in enumerate(self.covariates)})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates)

    def covariate(self, name: str) -> Covariate:
        try:
            return self.covariates[self._index[name]]
        except KeyError:
            raise ConditionError(
                f"this model has no covariate {name!r}; it is conditioned on {', '.join(self.names)}"
            ) from None

    @property
    def has_null(self) -> bool:
        """Whether the network learned the null condition (so guidance is possible)."""
        return self.mechanism == "embedding"

    def to_dict(self) -> dict:
        out = {"covariates": [c.to_dict() for c in self.covariates], "dropout": self.dropout, "hidden": self.hidden}
        if self.mechanism != "embedding":
            out["mechanism"] = self.mechanism
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ConditionSpec:
        return cls(
            covariates=tuple(Covariate.from_dict(c) for c in data["covariates"]),
            dropout=float(data.get("dropout", 0.1)),
            hidden=int(data.get("hidden", 0)),
            mechanism=str(data.get("mechanism", "embedding")),
        )

    # ------------------------------------------------------------------ values
    def check(self, condition: Mapping[str, Any] | None, *, allow_extrapolation: bool = False) -> dict:
        """One volume's condition, checked and in canonical form.

        Args:
            condition: covariate name -> value; a value of None or ``"any"`` (or a covariate
                left out) is that covariate's null. Numbers may be given as text.
            allow_extrapolation: accept continuous values outside the training range.

        Returns:
            ``{name: float | str}`` for the covariates given (nulls left out).

        Raises:
            ConditionError: an unknown covariate, a non-numeric or out-of-range continuous
                value (with the range), or a category the model never saw (with its list).
        """
        out: dict[str, Any] = {}
        for name, value in (condition or {}).items():
            cov = self.covariate(str(name))
            if value is None or (isinstance(value, str) and value.strip().lower() in (ANY_VALUE, "")):
                continue
            if cov.kind == "continuous":
                number = as_number(value)
                if number is None:
                    raise ConditionError(f"{cov.name} must be a number (got {value!r})")
                if not allow_extrapolation and not cov.minimum <= number <= cov.maximum:
                    raise ConditionError(
                        f"{cov.name}={number:g} is outside the training range {cov.minimum:g} to {cov.maximum:g}; "
                        "give a value inside it, or allow extrapolation (--allow-extrapolation)"
                    )
                out[cov.name] = number
            else:
                text = str(value).strip()
                match = _category(cov, text)
                if match is None:
                    raise ConditionError(
                        f"{cov.name}={text!r} is not one of the model's categories: {', '.join(cov.categories)}"
                    )
                out[cov.name] = match
        return out

    def outside_range(self, condition: Mapping[str, Any]) -> list[str]:
        """Names of the continuous covariates of a checked condition outside the training range."""
        names = []
        for name, value in condition.items():
            cov = self.covariate(name)
            if cov.kind == "continuous" and not cov.minimum <= value <= cov.maximum:
                names.append(name)
        return names

    # ------------------------------------------------------------------ tensors
    @property
    def width(self) -> int:
        """Columns of an encoded condition: a value and a present flag per covariate
        (the ``"context"`` mechanism: one value per covariate, in [0, 1])."""
        return len(self.covariates) if self.mechanism == "context" else 2 * len(self.covariates)

    def encode(self, conditions: Sequence[Mapping[str, Any] | None], *, device=None) -> torch.Tensor:
        """Checked conditions (see :meth:`check`) as a float32 ``(B, 2 n)`` tensor
        (``(B, n)`` of [0, 1] values, defaults for those not given, for the ``"context"`` mechanism)."""
        import torch

        n = len(self.covariates)
        if self.mechanism == "context":
            rows = [
                [c.unit_interval(float((condition or {}).get(c.name, c.default))) for c in self.covariates]
                for condition in conditions
            ]
            return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(rows), n)
        rows = []
        for condition in conditions:
            row = [0.0] * (2 * n)
            for name, value in (condition or {}).items():
                i = self._index[name]
                cov = self.covariates[i]
                row[i] = cov.normalise(float(value)) if cov.kind == "continuous" else float(cov.categories.index(value))
                row[n + i] = 1.0
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(rows), 2 * n)

    def null(self, batch: int, *, device=None) -> torch.Tensor:
        """The null condition (nothing given) for ``batch`` volumes (every default, for the
        ``"context"`` mechanism)."""
        import torch

        if self.mechanism == "context":
            return self.encode([{}] * batch, device=device)
        return torch.zeros((batch, self.width), dtype=torch.float32, device=device)


def apply_dropout(encoded: torch.Tensor, spec: ConditionSpec, generator: torch.Generator) -> torch.Tensor:
    """Training-time condition dropout: each covariate with its probability, then the whole condition.

    Draws come from ``generator`` (on the CPU; one uniform per volume and covariate, then one
    per volume), so a step's dropout is reproducible from the trainer's seed.
    """
    import torch

    b, n = encoded.shape[0], len(spec.covariates)
    keep_each = torch.rand((b, n), generator=generator) >= torch.tensor([c.dropout for c in spec.covariates])
    keep_all = torch.rand((b, 1), generator=generator) >= spec.dropout
    keep = (keep_each & keep_all).to(encoded.device, encoded.dtype)
    return torch.cat([encoded[:, :n] * keep, encoded[:, n:] * keep], dim=1)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _category(cov: Covariate, text: str) -> str | None:
    if text in cov.categories:
        return text
    folded = [c for c in cov.categories if c.lower() == text.lower()]
    return folded[0] if len(folded) == 1 else None


def covariate_embedding(spec: ConditionSpec, out_dim: int):
    """The module that replaces MONAI's ``class_embedding``: encoded conditions -> ``(B, out_dim)``."""
    import torch

    class CovariateEmbedding(torch.nn.Module):
        """Per covariate a linear map (continuous) or a table (categorical) and a learned null;
        summed, SiLU, then a zero-initialised output layer (so it starts as "no effect")."""

        def __init__(self) -> None:
            super().__init__()
            hidden = spec.hidden or out_dim
            self.n = len(spec.covariates)
            self.kinds = [c.kind for c in spec.covariates]
            self.encoders = torch.nn.ModuleList(
                torch.nn.Linear(1, hidden) if c.kind == "continuous" else torch.nn.Embedding(len(c.categories), hidden)
                for c in spec.covariates
            )
            self.null = torch.nn.Parameter(torch.randn(self.n, hidden) * 0.02)
            self.out = torch.nn.Linear(hidden, out_dim)
            torch.nn.init.zeros_(self.out.weight)
            torch.nn.init.zeros_(self.out.bias)

        def forward(self, encoded: torch.Tensor) -> torch.Tensor:
            encoded = encoded.float()
            total = 0
            for i, (encoder, kind) in enumerate(zip(self.encoders, self.kinds, strict=True)):
                value, present = encoded[:, i], encoded[:, self.n + i : self.n + i + 1]
                if kind == "continuous":
                    given = encoder(value[:, None])
                else:
                    given = encoder(value.round().long().clamp(0, encoder.num_embeddings - 1))
                total = total + present * given + (1.0 - present) * self.null[i]
            return self.out(torch.nn.functional.silu(total))

    return CovariateEmbedding()


def context_unet_class():
    """MONAI's ``DiffusionModelUNet`` with the MONAI brain LDM bundle's conditioning in its forward.

    The encoded conditions ``(B, n)`` (in [0, 1]) arrive as ``class_labels``, as every
    BrainSynth model call passes them, and go in twice, as the bundle's sampler does: as n
    constant channels concatenated to the input and as a one-token cross-attention context
    ``(B, 1, n)``. A subclass, so the state-dict keys are MONAI's own.
    """
    import torch
    from monai.networks.nets import DiffusionModelUNet

    class ContextConditionedUNet(DiffusionModelUNet):
        def forward(self, x, timesteps, context=None, class_labels=None, **kwargs):
            if class_labels is None:
                raise ConditionError("this network needs its conditions (class_labels)")
            cond = class_labels.to(x.dtype)
            channels = cond[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
            return super().forward(torch.cat([x, channels], dim=1), timesteps, context=cond[:, None, :])

    return _cached_class("context", ContextConditionedUNet)


_CLASSES: dict = {}


def _cached_class(name: str, cls):
    # One class object per process, so that isinstance checks and torch.compile caches agree.
    return _CLASSES.setdefault(name, cls)


def parse_assignments(texts: Sequence[str]) -> dict[str, str]:
    """``["age=70", "sex=F"]`` (``--condition``) -> ``{"age": "70", "sex": "F"}``.

    Raises:
        ConditionError: an item without ``=``, an empty name, or a covariate given twice.
    """
    out: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConditionError(f"--condition takes NAME=VALUE, e.g. age=70 (got {text!r})")
        if name in out:
            raise ConditionError(f"--condition {name} is given twice")
        out[name] = value.strip()
    return out


def read_conditions_csv(path) -> list[dict[str, str]]:
    """Per-volume conditions from a CSV: a header of covariate names, one row per volume.

    An empty cell (or ``any``, ``n/a``) is that covariate's null for that volume.

    Raises:
        ConditionError: an unreadable or empty file, or a row of the wrong length.
    """
    import csv
    import io
    from pathlib import Path

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConditionError(f"cannot read the conditions file {path}: {exc}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ConditionError(f"{path.name} needs a header of covariate names and one row per volume")
    header = [c.strip() for c in rows[0]]
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConditionError(f"{path.name}, line {line}: {len(row)} cells where the header has {len(header)}")
        out.append(
            {
                name: cell.strip()
                for name, cell in zip(header, row, strict=True)
                if cell.strip().lower() not in MISSING_VALUES
            }
        )
    return out
