"""Training configuration: one dataclass, loadable from TOML, overridable by flags.

Resolution order (later wins): the dataclass defaults, a TOML file, then explicit overrides
(the CLI passes only the flags the user actually gave). The resolved config is written to
``RUN_DIR/config.toml`` before training starts, so a run can always be repeated and
``--resume RUN_DIR`` knows what it was doing.

A TOML file holds the keys of :class:`TrainConfig` at top level or under a ``[train]`` table,
with ``-`` or ``_`` in key names::

    preset = "demo"
    data = ["/data/prepared_demo"]
    out = "runs/demo-01"
    epochs = 200
    batch-size = 4
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.sampler_registry import SAMPLER_NAMES
from engine.training.errors import TrainingError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    tomllib = None  # type: ignore[assignment]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Keys a ``--resume`` may change: they alter how long or how loudly the run goes on, not what
#: it computes per step. Everything else must match the saved run or resuming is not "exact".
RESUMABLE_OVERRIDES = frozenset(
    {
        "epochs",
        "lr",
        "device",
        "workers",
        "cpu_threads",
        "checkpoint_every",
        "resume_every_steps",
        "resume_every_minutes",
        "sample_every",
        "sample_count",
        "sample_steps",
        "sample_sampler",
        "tensorboard",
        "cache_dir",
        "out",
        "data",
    }
)


@dataclass
class RunConfig:
    """The options every BrainSynth training run has: the diffusion model's (:class:`TrainConfig`)
    and the autoencoder's (:class:`engine.training.autoencoder.AutoencoderTrainConfig`).

    Both runs prepare and split their data, seed, choose a precision, a device and compute
    threads through the same code (the diffusion trainer's data preparation and
    :mod:`engine.training.distributed`), so these options are declared and checked once, here.
    A subclass may give a field another default; its meaning and its check stay these (see
    :class:`TrainConfig` for each one).
    """

    preset: str = "demo"
    data: list[str] = field(default_factory=list)
    out: str = ""
    epochs: int = 100
    batch_size: int = 2
    lr: float = 5e-5
    precision: str = "auto"
    ema_decay: float = 0.999
    val_fraction: float = 0.2
    seed: int = 0
    sample_every: int = 25
    max_failed_fraction: float = 0.1
    cache_dir: str | None = None
    device: str = "auto"
    cpu_threads: int = 0
    resume_every_steps: int = 0
    resume_every_minutes: float = 10.0

    def validate_run(self, *, data_hint: str = "") -> None:
        """Check the shared options (not the preset, whose rule differs by run); raise one
        :class:`TrainingError` naming the bad key.

        Args:
            data_hint: what the "no data" message adds after "pass --data FOLDER or CSV manifest".
        """
        if not self.data:
            raise TrainingError(f"no training data given; pass --data FOLDER or CSV manifest{data_hint}")
        if not self.out:
            raise TrainingError("no run directory given; pass --out RUN_DIR")
        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch-size")
        for name in ("sample_every", "cpu_threads", "resume_every_steps"):
            _non_negative_int(getattr(self, name), name.replace("_", "-"))
        if not _finite(self.resume_every_minutes) or self.resume_every_minutes < 0:
            raise TrainingError(
                f"resume-every-minutes must be 0 or a positive number (got {self.resume_every_minutes!r})"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise TrainingError(f"seed must be a whole number from 0 to 2**63-1 (got {self.seed!r})")
        if not _finite(self.lr) or self.lr <= 0:
            raise TrainingError(f"lr must be a positive number (got {self.lr!r})")
        if not _finite(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise TrainingError(f"ema-decay must be in [0, 1), 0 turning the EMA off (got {self.ema_decay!r})")
        if not _finite(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise TrainingError(f"val-fraction must be in [0, 1) (got {self.val_fraction!r})")
        if not _finite(self.max_failed_fraction) or not 0 <= self.max_failed_fraction <= 1:
            raise TrainingError(f"max-failed-fraction must be in [0, 1] (got {self.max_failed_fraction!r})")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out).expanduser()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-serialisable values (tuples become lists, None is left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple | list) else value
        return out


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run needs; the defaults follow the reference study.

    The options it shares with the autoencoder's run are declared in :class:`RunConfig`; the
    fields keep their names, defaults and checks (``config.toml`` lists the shared ones first).

    Attributes:
        preset: model preset name (``paper``, ``demo``, ``tiny``).
        data: folders of NIfTI/MGZ scans, single scan files, or CSV manifests
            (``path[,subject_id,group]``; relative paths are relative to the CSV).
        out: the run directory (config, split, logs, checkpoints).
        epochs: passes over the training split.
        batch_size: volumes per forward pass on each device (per rank).
        grad_accum: forward passes whose gradients are summed before each optimizer step.
        lr: Adam learning rate (the reference study: 5e-5).
        adam_betas: Adam's (beta1, beta2).
        weight_decay: Adam's L2 weight decay (0 in the reference study).
        grad_clip: clip the global gradient L2 norm to this value (0 = no clipping).
        precision: ``auto`` (bf16 autocast on a GPU that supports it, and on a CPU with bf16
            units where one timed training step says it is faster; else fp32), ``fp32``,
            ``bf16`` (a GPU with bf16 or a CPU with AMX / AVX-512 BF16) or ``fp16`` (autocast
            with a gradient scaler, for GPUs without bf16). Weights, Adam and the EMA stay
            fp32. A resumed run keeps the precision it started with.
        ema_decay: decay of the exponential moving average of the weights (0 = no EMA).
            The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates,
            so early EMA weights are not dominated by the random initialisation.
        val_fraction: share of subjects held out for validation (the reference study: 0.2).
        val_timesteps: diffusion timesteps at which each validation volume is scored, with
            fixed noise, so epochs compare. They are stratified over 0..T-1 and shifted by a
            fixed per-volume offset, so a few per volume still cover the whole range over the
            validation set. Each costs one forward pass per volume for the weights and one
            for the EMA: 2 keeps validation at roughly 15-35 % of an epoch's time.
        seed: seeds the split, the initial weights, the data order, noise and timesteps.
        checkpoint_every: also keep ``epoch_NNNN.safetensors`` every this many epochs (0 = never).
        resume_every_steps: write the resume state every this many optimizer steps (0 = only
            at the end of each epoch and by time).
        resume_every_minutes: write the resume state at least this often (0 = not by time).
        sample_every: every this many epochs, a PNG of orthogonal slices of EMA samples (0 = never).
        sample_count: volumes in that PNG.
        sample_steps: sampler steps for those volumes.
        sample_sampler: sampler for those volumes (``ddim``, ``dpmpp-2m``, ``ddpm``).
        init_from: a BrainSynth checkpoint to start from (transfer learning).
        init_use_ema: start from the EMA weights of ``init_from`` when it has them.
        autoencoder: an autoencoder checkpoint (``train-autoencoder``): train a latent-diffusion
            model of a latent preset (``ldm-demo``) on its latents, encoded once and cached, with
            the scale factor computed from them; its grid is the model's grid.
        freeze_encoder_levels: with ``init_from``, keep the input convolution and this many
            encoder levels fixed (0 = train everything).
        max_failed_fraction: stop if more than this share of the input files cannot be used.
        cache_dir: where preprocessed volumes are cached (default: the user cache folder).
        device: ``auto``, ``cpu``, ``cuda``; under a distributed launcher each rank takes its
            local GPU.
        workers: ignored; kept so that configs written by earlier versions still load. Prepared
            volumes are memory-mapped and loading a batch costs well under 1 % of a step, so
            batches load in the training process without worker processes.
        cpu_threads: PyTorch compute threads per process (0 = one per physical core this
            process may use, shared out among the processes of a CPU job on one machine).
            On a CPU shared with other jobs, 1 avoids oversubscription: on a busy 2-core machine
            one thread trained the demo preset 3.5x faster than two.
        tensorboard: also log to TensorBoard when it is installed.
        conditions: covariates to condition on, ``name[:kind[:dropout]]`` comma-separated
            (``"age:continuous,sex,group"``; kinds inferred where not given), read from a
            ``participants.tsv`` beside the scans or manifest columns
            (:mod:`engine.training.covariates`); empty = an unconditional model. A
            ``[conditions]`` TOML table (``age = "continuous"`` or
            ``age = {kind = "continuous", dropout = 0.2}``) sets the same.
        condition_dropout: probability per training volume that the whole condition is
            replaced by the null (classifier-free guidance learns the unconditional model from these).
        covariate_dropout: probability per volume and covariate that it is replaced by its null
            (where ``conditions`` gives no rate), so any subset of covariates can be asked for.
    """

    grad_accum: int = 1
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_timesteps: int = 2
    checkpoint_every: int = 10
    sample_count: int = 3
    sample_steps: int = 50
    sample_sampler: str = "ddim"
    init_from: str | None = None
    init_use_ema: bool = True
    autoencoder: str | None = None
    freeze_encoder_levels: int = 0
    workers: int = 0
    tensorboard: bool = True
    conditions: str = ""
    condition_dropout: float = 0.1
    covariate_dropout: float = 0.1

    def validate(self) -> None:
        """Check every value; raise one :class:`TrainingError` naming the bad key."""
        from engine.specs import PRESETS

        if self.preset not in PRESETS:
            raise TrainingError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        self.validate_run(data_hint=", or set data in the TOML")
        _positive_int(self.grad_accum, "grad-accum")
        _positive_int(self.val_timesteps, "val-timesteps")
        _positive_int(self.sample_count, "sample-count")
        _positive_int(self.sample_steps, "sample-steps")
        for name in ("checkpoint_every", "freeze_encoder_levels", "workers"):
            _non_negative_int(getattr(self, name), name.replace("_", "-"))
        if len(self.adam_betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.adam_betas):
            raise TrainingError(f"adam-betas must be two numbers in [0, 1) (got {self.adam_betas!r})")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise TrainingError(f"{name.replace('_', '-')} must be 0 or a positive number (got {value!r})")
        for name in ("condition_dropout", "covariate_dropout"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value <= 1:
                raise TrainingError(f"{name.replace('_', '-')} must be in [0, 1] (got {value!r})")
        if self.conditions:
            from engine.training.covariates import parse_conditions

            parse_conditions(self.conditions)
        if self.sample_sampler not in SAMPLER_NAMES:
            raise TrainingError(
                f"unknown sampler {self.sample_sampler!r} for training samples; choose one of: "
                f"{', '.join(SAMPLER_NAMES)}"
            )
        preset = PRESETS[self.preset]
        if preset.latent is not None and not self.autoencoder:
            raise TrainingError(
                f"preset {self.preset!r} is a latent-diffusion model: train its autoencoder first "
                "(brainsynth-cli train-autoencoder) and pass --autoencoder AE.safetensors"
            )
        if self.autoencoder and preset.latent is None:
            raise TrainingError(
                f"--autoencoder trains a latent-diffusion model: choose a latent preset "
                f"({', '.join(n for n, s in PRESETS.items() if s.latent is not None)}), not {self.preset!r}"
            )
        levels = len(PRESETS[self.preset].unet.channels)
        if self.freeze_encoder_levels > levels:
            raise TrainingError(
                f"freeze-encoder-levels is {self.freeze_encoder_levels}, but the {self.preset!r} UNet has "
                f"only {levels} levels"
            )
        if self.freeze_encoder_levels and self.autoencoder:
            raise TrainingError("freezing encoder levels is not available for latent-diffusion runs (--autoencoder)")
        if self.freeze_encoder_levels and not self.init_from:
            raise TrainingError("freezing encoder levels only makes sense with --init-from CHECKPOINT")

    def to_toml(self) -> str:
        """The config as a TOML document that :func:`load_config` reads back unchanged."""
        lines = ["# BrainSynth training run: resolved configuration (defaults < TOML file < flags)"]
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError(f"{name} must be a whole number of at least 1 (got {value!r})")


def _non_negative_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TrainingError(f"{name} must be a whole number of 0 or more (got {value!r})")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # repr round-trips exactly; TOML accepts 5e-05 and 0.1
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


_FIELD_TYPES = {f.name: f for f in fields(TrainConfig)}


def _coerce(name: str, value: Any, *, source: str) -> Any:
    """Check one value's type against the dataclass field; ints are accepted for floats."""
    default = _FIELD_TYPES[name].default
    if default is dataclasses.MISSING:
        default = _FIELD_TYPES[name].default_factory()  # type: ignore[misc]
    if name == "data":
        if isinstance(value, str | os.PathLike):
            return [str(value)]
        if isinstance(value, list | tuple) and all(isinstance(v, str | os.PathLike) for v in value):
            return [str(v) for v in value]
        raise TrainingError(f"{source}: data must be a path or a list of paths (got {value!r})")
    if name == "adam_betas":
        if isinstance(value, list | tuple) and len(value) == 2:
            return tuple(float(v) for v in value)
        raise TrainingError(f"{source}: adam-betas must be two numbers (got {value!r})")
    if value is None:
        if name in ("init_from", "cache_dir", "autoencoder"):
            return None
        raise TrainingError(f"{source}: {name} cannot be empty")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TrainingError(f"{source}: {name} must be true or false (got {value!r})")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TrainingError(f"{source}: {name} must be a whole number (got {value!r})")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TrainingError(f"{source}: {name} must be a number (got {value!r})")
    if isinstance(value, os.PathLike):
        value = str(value)
    if not isinstance(value, str):
        raise TrainingError(f"{source}: {name} must be text (got {value!r})")
    return value


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The training keys of a TOML file (top level or ``[train]``), names normalised to ``snake_case``.

    Relative ``data``, ``out``, ``init_from`` and ``cache_dir`` paths are taken relative to the
    TOML file's folder, so a config next to its data works from any working directory.

    Raises:
        TrainingError: missing or invalid TOML, unknown keys (with the valid ones listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainingError(f"config file {path} does not exist")
    parser = tomllib
    if parser is None:
        try:
            import tomli as parser  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise TrainingError("reading TOML on Python 3.10 needs the tomli package: pip install tomli") from None
    try:
        raw = parser.loads(path.read_text(encoding="utf-8"))
    except (parser.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{path.name} is not valid TOML: {exc}") from None
    table = raw.get("train", raw) if isinstance(raw.get("train"), dict) else raw
    values: dict[str, Any] = {}
    if table is not raw and isinstance(raw.get("conditions"), dict):  # [train] and [conditions] side by side
        values["conditions"] = _conditions_table(raw["conditions"], source=path.name)
    for key, value in table.items():
        if key == "conditions" and isinstance(value, dict):
            values["conditions"] = _conditions_table(value, source=path.name)
            continue
        if isinstance(value, dict):
            raise TrainingError(f"{path.name}: unexpected table [{key}]; put training keys at top level or in [train]")
        name = key.replace("-", "_")
        if name not in _FIELD_TYPES:
            known = ", ".join(sorted(k.replace("_", "-") for k in _FIELD_TYPES))
            raise TrainingError(f"{path.name}: unknown key {key!r}; valid keys: {known}")
        values[name] = value
    base = path.parent
    for name in ("out", "init_from", "cache_dir", "autoencoder"):
        if isinstance(values.get(name), str):
            values[name] = str(_relative_to(base, values[name]))
    if "data" in values:
        items = values["data"] if isinstance(values["data"], list) else [values["data"]]
        values["data"] = [str(_relative_to(base, v)) if isinstance(v, str) else v for v in items]
    return values


def _conditions_table(table: dict, *, source: str) -> str:
    """A ``[conditions]`` table as the ``conditions`` string (``name:kind:dropout,...``)."""
    parts = []
    for name, value in table.items():
        if isinstance(value, str):
            parts.append(f"{name}:{value}")
        elif isinstance(value, dict) and set(value) <= {"kind", "dropout"}:
            kind = value.get("kind", "")
            parts.append(f"{name}:{kind}:{value['dropout']}" if "dropout" in value else f"{name}:{kind}")
        else:
            raise TrainingError(
                f'{source}: [conditions] {name} must be a kind ("continuous", "categorical", "auto") '
                "or a table {kind = ..., dropout = ...}"
            )
    return ",".join(parts)


def _relative_to(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None, *, validate: bool = True
) -> TrainConfig:
    """Resolve a config: defaults < TOML file < overrides.

    Args:
        path: a TOML file, or None for defaults only.
        overrides: key → value for the options given explicitly (flags); ``-`` or ``_``
            in names. Keys whose value is None are ignored (flag not given).
        validate: check the result (turn off to inspect an incomplete config).

    Returns:
        The resolved, validated config.

    Raises:
        TrainingError: unreadable file, unknown key, wrong type or invalid value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update({k: _coerce(k, v, source=Path(path).name) for k, v in read_toml(path).items()})
    for key, value in (overrides or {}).items():
        name = key.replace("-", "_")
        if name not in _FIELD_TYPES:
            raise TrainingError(f"unknown training option {key!r}")
        if value is None:
            continue
        values[name] = _coerce(name, value, source=f"--{name.replace('_', '-')}")
    config = TrainConfig(**values)
    if validate:
        config.validate()
    return config
