"""Opening the MONAI brain LDM bundle (``brain_image_synthesis_latent_diffusion_model``).

The bundle (Pinaya et al. 2022, UK Biobank, 1 mm) ships ``models/autoencoder.pt`` and
``models/model.pt``: plain state dicts saved with ``torch.save`` under the older MONAI
GenerativeModels key names, and ``configs/inference.json`` describing both networks, the
scheduler and the latent noise. :func:`import_bundle` turns it into one BrainSynth checkpoint:

* the weights are read with ``torch.load(weights_only=True)`` only (nothing in them runs);
* the old key names are converted as MONAI's ``load_old_state_dict`` converts them
  (:func:`convert_old_keys`: attention projections under ``attn.``, ``proj_attn`` ->
  ``attn.out_proj``, cross-attention ``to_out.0`` -> ``out_proj``, up-sampling ``conv`` ->
  ``postconv``), except that every key of the network must come from the file and every key of
  the file must be used: a wrong file is one :class:`~engine.errors.CheckpointError` naming the
  missing and unexpected keys, never a network left partly at its random initialisation;
* the architecture is read from ``configs/inference.json`` when the bundle has it (JSON, read
  as data: the network arguments, the scheduler's, the latent shape of its noise expression,
  the number of inference steps and the default conditions), else the ``ldm-1mm`` preset;
* the covariates are the bundle's (sex, age, ventricular volume, brain volume), passed as
  cross-attention context and as four constant channels, each min-max scaled to [0, 1] as the
  network was trained. The bundle's own files (docs/README.md, configs/*.json) say only "values
  between 0 and 1"; the paper (Pinaya et al. 2022, arXiv:2209.07162v1, section 2.1) gives the
  training ranges, so the imported checkpoint takes real values (:data:`DOCUMENTED_RANGES`: age
  in years, the two volumes in mL) and maps them to [0, 1] with those ranges. Which sex is 0 is
  documented nowhere, so sex stays 0-1;
* sampling is the bundle's own DDIM: MONAI's ``DDIMScheduler`` with the arguments of
  ``configs/inference.json`` (``set_alpha_to_one`` and ``steps_offset`` at MONAI's defaults
  there) and the timestep layout of the MONAI version ``configs/metadata.json`` names
  (:func:`bundle_spacing`: 1.4.0 in the released bundle, whose ``set_timesteps(50)`` lays
  980, 960, ..., 0; MONAI 1.6 changed it to ``linspace``). It is stored in the model's default
  sampler (``SamplerSettings.spacing``), so ``sample`` and the app run it and record it;
* the decoded grid's geometry: the bundle does not state its affine. ``"mni-centre"`` centres
  the 1 mm grid on the 1 mm MNI box; ``"register"`` generates one volume and registers it
  rigidly to the MNI152 template (ANTs, :mod:`engine.preprocess`), and keeps the translation
  (the bundle's data were rigidly registered to MNI; a rotation cannot be stored in a grid
  and is reported instead). The result and how it was found go into the provenance, which
  ``brainsynth-cli info`` shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import Checkpoint, check_state_dict
from engine.checkpoint_checks import MAX_JSON_DEPTH, check_memory, validate_weights
from engine.conditions import ConditionSpec
from engine.errors import BrainSynthError, CheckpointError
from engine.geometry import GridGeometry
from engine.latent import AutoencoderSpec, LatentSpec
from engine.sampler_registry import SamplerSettings
from engine.specs import BUNDLE_COVARIATES, PRESETS, ModelSpec, ScheduleSpec, UNetSpec, bundle_conditions

AUTOENCODER_FILE = "models/autoencoder.pt"
DIFFUSION_FILE = "models/model.pt"
CONFIG_FILE = "configs/inference.json"
METADATA_FILE = "configs/metadata.json"
GEOMETRIES: tuple[str, ...] = ("register", "mni-centre")
BUNDLE_NAME = "brain_image_synthesis_latent_diffusion_model"
_MAX_CONFIG_BYTES = 1 << 20

# The arguments of configs/inference.json that map onto our specs (all others are MONAI's defaults
# or runtime choices such as use_flash_attention).
_AE_ARGS = {
    "channels": "channels",
    "attention_levels": "attention_levels",
    "num_res_blocks": "num_res_blocks",
    "latent_channels": "latent_channels",
    "norm_num_groups": "norm_num_groups",
    "norm_eps": "norm_eps",
    "with_encoder_nonlocal_attn": "with_encoder_nonlocal_attn",
    "with_decoder_nonlocal_attn": "with_decoder_nonlocal_attn",
}
_UNET_ARGS = (
    "in_channels", "out_channels", "channels", "attention_levels", "num_res_blocks", "num_head_channels",
    "norm_num_groups", "norm_eps", "resblock_updown", "with_conditioning", "cross_attention_dim",
    "transformer_num_layers", "upcast_attention",
)  # fmt: skip
_NOISE = re.compile(r"randn\(\(\s*1\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_STEPS = re.compile(r"num_inference_steps\s*=\s*(\d+)")
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")
#: The timestep layouts a bundle's DDIM can have (``SamplerSettings.spacing``): MONAI <= 1.5's and MONAI >= 1.6's.
BUNDLE_SPACINGS: tuple[str, ...] = ("leading", "linspace")
#: MONAI's version, (major, minor), from which ``DDIMScheduler.set_timesteps`` lays its timesteps
#: by ``linspace`` (MONAI pull request 8623, November 2025) instead of ``arange(N) * (T//N)``.
MONAI_LINSPACE_FROM = (1, 6)

#: The training ranges the bundle's conditions were min-max scaled with, as Pinaya et al. 2022
#: ("Brain imaging generation with latent diffusion models", arXiv:2209.07162v1, section 2.1)
#: give them for its UK Biobank training set: (name, minimum, maximum, unit). The volumes are
#: given there in mm3 and kept here in mL (1 mL = 1000 mm3). Sex: the paper says 47% were male
#: but not which value codes which sex, so it stays 0-1. None of these is in the bundle's own
#: README, configs or metadata.json ("all conditioning are expected to have values between 0 and 1").
DOCUMENTED_RANGES: dict[str, tuple[float, float, str]] = {
    "sex": (0.0, 1.0, "(0 or 1; which sex is 1 is not documented)"),
    "age": (44.0, 82.0, "years"),
    "ventricular_vol": (6.99568, 171.375, "mL, ventricular CSF (UKB field 25004)"),
    "brain_vol": (1144.24, 1793.91, "mL, normalised for head size (UKB field 25009)"),
}
RANGES_SOURCE = (
    "Pinaya et al. 2022, Brain imaging generation with latent diffusion models, arXiv:2209.07162v1, section 2.1: "
    "UK Biobank, ages 44 to 82 years, ventricular CSF 6995.68 - 171375.0 mm3 (field 25004), brain volume "
    "normalised for head size 1144240 - 1793910 mm3 (field 25009), all min-max normalised"
)


@dataclass(frozen=True)
class BundleFiles:
    """The files of a downloaded bundle folder."""

    root: Path
    autoencoder: Path
    diffusion: Path
    config: Path | None
    metadata: Path | None = None


def find_bundle(folder: str | Path) -> BundleFiles:
    """The bundle's files in ``folder`` (the folder that holds ``models/`` and ``configs/``).

    Raises:
        CheckpointError: no such folder, or its model files are missing.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder; give the downloaded {BUNDLE_NAME} folder")
    missing = [name for name in (AUTOENCODER_FILE, DIFFUSION_FILE) if not (root / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{root.name} is not the MONAI brain LDM bundle: {', '.join(missing)} not found "
            f"(download {BUNDLE_NAME} from the MONAI model zoo and give the folder holding models/)"
        )
    config, metadata = root / CONFIG_FILE, root / METADATA_FILE
    return BundleFiles(
        root,
        root / AUTOENCODER_FILE,
        root / DIFFUSION_FILE,
        config if config.is_file() else None,
        metadata if metadata.is_file() else None,
    )


def bundle_spacing(metadata: Mapping | None) -> tuple[str, str]:
    """The timestep layout of the bundle's DDIM, and why: from the MONAI version it names.

    MONAI's ``DDIMScheduler.set_timesteps`` laid N of T steps at ``(N-1-i) * (T//N)`` ("leading")
    up to MONAI 1.5 and at ``round(linspace(T-1, 0, N))`` ("linspace") from 1.6. The released
    bundle's ``configs/metadata.json`` names MONAI 1.4.0 (and its weights come from MONAI
    GenerativeModels, whose scheduler is leading too), so without a readable version it is leading.

    Returns:
        ``(spacing, reason)``: a name of :data:`BUNDLE_SPACINGS` and a sentence for the provenance.
    """
    version = (metadata or {}).get("monai_version")
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        return "leading", (
            f"{METADATA_FILE} names no MONAI version; leading, as MONAI 1.4.0 (the released bundle's) and "
            "GenerativeModels lay DDIM timesteps"
        )
    major_minor = (int(match.group(1)), int(match.group(2)))
    spacing = "linspace" if major_minor >= MONAI_LINSPACE_FROM else "leading"
    return spacing, f"{METADATA_FILE} names MONAI {version}, whose DDIMScheduler lays its timesteps {spacing}"


def documented_conditions(conditions: ConditionSpec) -> ConditionSpec:
    """The bundle's [0, 1] conditions in real units, with the ranges of :data:`DOCUMENTED_RANGES`.

    Each covariate keeps its place and its default (mapped from [0, 1] to the range), so the
    network receives exactly what it received before: ``unit_interval`` maps a real value back
    to the bundle's [0, 1] (``(value - min) / (max - min)``, the min-max scaling the paper states).
    """
    covariates = []
    for cov in conditions.covariates:
        lo, hi, unit = DOCUMENTED_RANGES[cov.name]
        default = None if cov.default is None else round(lo + cov.default * (hi - lo), 6)
        covariates.append(replace(cov, minimum=lo, maximum=hi, default=default, unit=unit))
    return replace(conditions, covariates=tuple(covariates))


def bundle_spec(config: Mapping | None, *, source: str = CONFIG_FILE) -> ModelSpec:
    """The model spec the bundle's ``inference.json`` describes (``ldm-1mm`` without one).

    Raises:
        CheckpointError: a configuration that is not the bundle's kind of model, or fields
            out of bounds.
    """
    base = PRESETS["ldm-1mm"]
    if config is None:
        return base
    try:
        ae_def = _mapping(config.get("autoencoder_def"), "autoencoder_def")
        unet_def = _mapping(config.get("diffusion_def"), "diffusion_def")
        for name, definition, target in (
            ("autoencoder_def", ae_def, "AutoencoderKL"),
            ("diffusion_def", unet_def, "DiffusionModelUNet"),
        ):
            if not str(definition.get("_target_", "")).endswith(target):
                raise CheckpointError(f"{source}: {name} is not MONAI's {target} ({definition.get('_target_')!r})")
            if definition.get("spatial_dims", 3) != 3:
                raise CheckpointError(f"{source}: {name} is not 3-D")
        autoencoder = AutoencoderSpec(
            **{ours: ae_def[theirs] for theirs, ours in _AE_ARGS.items() if theirs in ae_def}, data_range=(0.0, 1.0)
        )
        unet = UNetSpec(**{k: unet_def[k] for k in _UNET_ARGS if k in unet_def})
        scheduler = _mapping(config.get("scheduler", {}), "scheduler")
        if scheduler.get("set_alpha_to_one", True) is not True:
            raise CheckpointError(
                f"{source}: its scheduler sets set_alpha_to_one to {scheduler['set_alpha_to_one']!r}; BrainSynth's "
                "DDIM ends at alpha-bar 1 (MONAI's default, the released bundle's)"
            )
        schedule = ScheduleSpec(
            num_train_timesteps=scheduler.get("num_train_timesteps", 1000),
            schedule=scheduler.get("schedule", "scaled_linear_beta"),
            beta_start=scheduler.get("beta_start", base.schedule.beta_start),
            beta_end=scheduler.get("beta_end", base.schedule.beta_end),
            clip_sample=scheduler.get("clip_sample", True),
            prediction_type=scheduler.get("prediction_type", "epsilon"),
        )
        noise = _NOISE.search(str(config.get("noise", "")))
        latent_shape = tuple(int(n) for n in noise.groups()[1:]) if noise else base.latent.shape
        if noise and int(noise.group(1)) != autoencoder.latent_channels:
            raise CheckpointError(
                f"{source}: its noise has {noise.group(1)} channels, the latent {autoencoder.latent_channels}"
            )
        steps = _STEPS.search(str(config.get("set_timesteps", "")))
        defaults = {}
        for ours, theirs, default in BUNDLE_COVARIATES:
            value = config.get(theirs, default)
            defaults[ours] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
        latent = LatentSpec(autoencoder=autoencoder, shape=latent_shape, scale_factor=1.0)
        same = (unet, autoencoder, latent_shape) == (base.unet, base.latent.autoencoder, base.latent.shape)
        spec = ModelSpec(
            name="ldm-1mm" if same else "monai-brain-ldm",
            unet=unet,
            schedule=schedule,
            grid=GridGeometry.centred_on_mni_box(latent.decoded_shape),
            default_sampler=SamplerSettings("ddim", int(steps.group(1)) if steps else 50),
            conditions=bundle_conditions(defaults),
            latent=latent,
        )  # fmt: skip
    except BrainSynthError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source} does not describe the bundle's networks ({type(exc).__name__}: {exc})"
        ) from None
    check_memory(spec, source=source)
    return spec


def read_config(path: Path) -> dict:
    """``configs/inference.json`` as data (JSON only; its ``$`` expressions are never run)."""
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path.name} is {path.stat().st_size:,} bytes; a bundle config is a few kB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc}") from None
    from engine.checkpoint_checks import _json_depth

    if _json_depth(text) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path.name} is nested too deeply to be a bundle config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} is not valid JSON ({exc})") from None
    return _mapping(data, path.name)


def convert_old_keys(
    old: Mapping[str, torch.Tensor], expected: Iterable[str], *, source: str
) -> dict[str, torch.Tensor]:
    """A state dict under MONAI GenerativeModels' key names, renamed to today's MONAI names.

    The renames are those of MONAI's ``AutoencoderKL.load_old_state_dict`` and
    ``DiffusionModelUNet.load_old_state_dict``; a key already under its new name is taken as
    it is (files saved by today's MONAI load too).

    Raises:
        CheckpointError: keys of the network the file lacks, or keys of the file the network
            has no place for (named, as :func:`engine.checkpoint.check_state_dict` names them).
    """
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for key in expected:
        for candidate in _old_names(key):
            if candidate in old and candidate not in used:
                out[key] = old[candidate]
                used.add(candidate)
                break
    leftover = {k: v for k, v in old.items() if k not in used}
    if len(out) != len(list(expected)) or leftover:
        # Name what is missing (under the new names) and what is left over (under the file's).
        check_state_dict(_Names(expected), {**out, **leftover}, source=source, spec_name=None)
    return out


def _old_names(key: str) -> list[str]:
    names = [key]
    if ".attn.to_q." in key or ".attn.to_k." in key or ".attn.to_v." in key:
        names.append(key.replace(".attn.to_", ".to_"))
    if ".attn.out_proj." in key:
        names.append(key.replace(".attn.out_proj.", ".proj_attn."))
    if "transformer_blocks" in key and ".out_proj." in key:
        names.append(key.replace(".out_proj.", ".to_out.0."))
    if "postconv" in key:
        names.append(key.replace("postconv", "conv"))
    return names


class _Names:
    def __init__(self, names: Iterable[str]) -> None:
        self._state = {k: torch.empty(0, device="meta") for k in names}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def load_weights_only(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A ``torch.save``d state dict read with ``weights_only=True``, and the file's SHA-256.

    Raises:
        CheckpointError: a pickle that would run code (refused before anything runs), a file
            that is not a PyTorch file, or one that holds no tensors.
    """
    from engine.checkpoint import _extract_weights, _first_line

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path.name}: it contains pickled Python objects other than tensors, which could run "
            f"arbitrary code; nothing in it was run (PyTorch said: {_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch file: {_first_line(exc)}") from None
    weights, _ = _extract_weights(obj, path)
    return weights, digest


def import_bundle(
    folder: str | Path,
    *,
    geometry: str = "register",
    ddim_spacing: str | None = None,
    register_seed: int = 0,
    register_steps: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Checkpoint:
    """The bundle in ``folder`` as a BrainSynth checkpoint (in memory; save it with ``.save``).

    Args:
        folder: the downloaded bundle (holding ``models/`` and ``configs/``).
        geometry: ``"register"`` (generate one volume, register it to the MNI template, keep the
            translation) or ``"mni-centre"`` (centre the 1 mm grid on the 1 mm MNI box).
        ddim_spacing: the DDIM timestep layout to record (a name of :data:`BUNDLE_SPACINGS`);
            None: the one of the MONAI version the bundle's metadata names (:func:`bundle_spacing`).
        register_seed: seed of the volume generated for registration.
        register_steps: DDIM steps of that volume (None: the bundle's own, 50).
        device: where that volume is generated.
        progress: called with a line of text at each stage.

    Raises:
        CheckpointError: files missing, unsafe or not the bundle's networks.
        MissingDependencyError: ``"register"`` without antspyx/nilearn (with the install hint).
    """
    if geometry not in GEOMETRIES:
        raise CheckpointError(f"unknown geometry {geometry!r}; use one of: {', '.join(GEOMETRIES)}")
    if ddim_spacing is not None and ddim_spacing not in BUNDLE_SPACINGS:
        raise CheckpointError(f"unknown DDIM spacing {ddim_spacing!r}; use one of: {', '.join(BUNDLE_SPACINGS)}")
    say = progress or (lambda _text: None)
    files = find_bundle(folder)
    config = read_config(files.config) if files.config else None
    spec = bundle_spec(config)
    spacing, why = bundle_spacing(read_config(files.metadata) if files.metadata else None)
    if ddim_spacing is not None:
        spacing, why = ddim_spacing, f"{ddim_spacing}, as asked for at import (the bundle's metadata: {why})"
    scheduler = dict((config or {}).get("scheduler", {}))
    offset = scheduler.get("steps_offset", 0)
    try:
        sampler = replace(spec.default_sampler, spacing=spacing, steps_offset=offset)
        spec = replace(spec, default_sampler=sampler, conditions=documented_conditions(spec.conditions))
    except BrainSynthError as exc:
        raise CheckpointError(f"{CONFIG_FILE}: its scheduler cannot be followed ({exc})") from None
    if geometry == "register":
        # Fail before minutes of reading and sampling when the registration cannot run.
        from engine.preprocess.ants_io import require_ants
        from engine.preprocess.template import load_template

        require_ants()
        load_template()
    say(f"reading {AUTOENCODER_FILE} and {DIFFUSION_FILE} (weights only)")
    from engine.checkpoint_checks import expected_state

    names = list(expected_state(spec))
    expected = {
        part: [k[len(part) + 1 :] for k in names if k.startswith(part + ".")] for part in ("unet", "autoencoder")
    }
    ae_old, ae_sha = load_weights_only(files.autoencoder)
    unet_old, unet_sha = load_weights_only(files.diffusion)
    autoencoder = convert_old_keys(ae_old, expected["autoencoder"], source=AUTOENCODER_FILE)
    unet = convert_old_keys(unet_old, expected["unet"], source=DIFFUSION_FILE)
    weights = {f"unet.{k}": v for k, v in unet.items()} | {f"autoencoder.{k}": v for k, v in autoencoder.items()}
    validate_weights(weights, spec, source=files.root.name)
    provenance = {
        "source": f"MONAI model zoo bundle {BUNDLE_NAME} ({files.root.name})",
        "imported_from": {
            AUTOENCODER_FILE: {"sha256": ae_sha},
            DIFFUSION_FILE: {"sha256": unet_sha},
            **({CONFIG_FILE: {"read": True}} if files.config else {CONFIG_FILE: {"read": False, "used": "ldm-1mm"}}),
        },
        "conditions": (
            "sex, age, ventricular_vol, brain_vol, given in real units and min-max scaled to the [0, 1] the "
            f"network takes, with the training ranges of {RANGES_SOURCE}; the bundle's own README, configs and "
            "metadata.json give no ranges; which sex is 0 and which 1 is documented nowhere, so sex stays 0-1"
        ),
        "sampling": {
            "sampler": "ddim",
            "steps": sampler.steps,
            "spacing": sampler.spacing,
            "steps_offset": sampler.steps_offset,
            "timesteps": _first_timesteps(spec),
            "why": why,
            # The config's scheduler arguments as written (scalars only: the record stays small).
            "scheduler": {k: v for k, v in scheduler.items() if isinstance(v, str | int | float | bool)},
        },
    }
    ckpt = Checkpoint(spec=spec, weights=weights, provenance=provenance)
    if geometry == "mni-centre":
        ckpt.provenance["geometry"] = {
            "method": "mni-centre",
            "description": "1 mm grid centred on the 1 mm MNI box (0, -18, 18) mm, not registered",
        }
        return ckpt
    say("generating one volume to register to the MNI152 template")
    volume = _generate_one(ckpt, seed=register_seed, steps=register_steps, device=device)
    say("registering it rigidly to the template (ANTs)")
    grid, record = register_grid(volume, spec, spec.grid)
    ckpt.spec = replace(spec, grid=grid)
    ckpt.provenance["geometry"] = {
        "method": "registered",
        "description": (
            f"one generated volume (seed {register_seed}, default conditions) registered rigidly to the MNI152 "
            f"2009a template; translation {record['shift_mm']} mm from the MNI-box centre kept, "
            f"rotation {record['rotation_deg']:.1f} degrees not representable in a grid, ignored"
        ),
        **record,
    }
    return ckpt


def _first_timesteps(spec: ModelSpec) -> str:
    """``"980, 960, 940, ..., 0"``: the default sampler's layout, for the provenance."""
    from engine.samplers import timestep_layout

    timesteps, _ = timestep_layout(spec.schedule.num_train_timesteps, spec.default_sampler)
    shown = timesteps if len(timesteps) <= 4 else [*timesteps[:3], "...", timesteps[-1]]
    return ", ".join(map(str, shown))


def _generate_one(ckpt: Checkpoint, *, seed: int, steps: int | None, device: str) -> np.ndarray:
    from engine.generation import GenerationRequest, generate

    request = GenerationRequest.for_checkpoint(ckpt, seeds=(seed,), steps=steps, device=device)
    model = ckpt.build_model(device=request.torch_device)
    volumes = [v for event in generate(model, request) for v in event.finished]
    return ckpt.spec.intensity.model_to_standard(volumes[0].array)


def register_grid(standard: np.ndarray, spec: ModelSpec, guess: GridGeometry, *, fast: bool = True):
    """The grid ``standard`` (a volume in standard intensity on ``guess``) really lies on.

    Rigid registration of its brain (the background rule of :mod:`engine.masking`) to the
    template; the grid keeps its spacing and gets the origin that maps its voxels where the
    registration puts them (the translation at the grid's centre).

    Returns:
        The grid and a record: ``shift_mm`` (of the grid centre from ``guess``), ``rotation_deg``.
    """
    from engine.masking import zero_background
    from engine.preprocess.ants_io import require_ants, to_ants
    from engine.preprocess.template import load_template

    ants = require_ants()
    template = load_template()
    brain, _ = zero_background(np.asarray(standard, dtype=np.float32), scale=spec.intensity.scale)
    moving = to_ants(brain, guess.affine)
    fixed = to_ants(template.t1, template.affine)
    result = ants.registration(
        fixed,
        moving,
        type_of_transform="Rigid",
        aff_iterations=(200, 100) if fast else (1000, 500, 250),
        aff_shrink_factors=(6, 4) if fast else (6, 4, 2),
        aff_smoothing_sigmas=(3, 2) if fast else (3, 2, 1),
        verbose=False,
    )
    transform = ants.read_transform(result["fwdtransforms"][0])
    # The forward transform maps template (fixed) points to the generated volume's (moving)
    # points, in LPS mm; invert it to carry the grid's points into template (MNI) space.
    inverse = transform.invert()
    lps = np.diag([-1.0, -1.0, 1.0])
    centre_voxel = [(n - 1) / 2 for n in guess.shape]
    centre = guess.voxel_to_mm(centre_voxel)
    mapped = lps @ np.asarray(inverse.apply_to_point(tuple(lps @ centre)))
    matrix = np.asarray(transform.parameters[:9], dtype=float).reshape(3, 3)
    rotation = float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    shift = mapped - centre
    grid = GridGeometry(
        shape=guess.shape, spacing_mm=guess.spacing_mm, origin_mm=tuple(np.asarray(guess.origin_mm) + shift)
    )
    return grid, {"shift_mm": [round(float(v), 2) for v in shift], "rotation_deg": rotation}


def _mapping(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{name} is not a JSON object")
    return value
