"""What training updates: the network, its EMA, the optimizer and scaler, built for one run.

:func:`build_networks` makes them in a fixed order (seeded initialisation, ``--init-from``
weights, frozen encoder levels, the EMA copy, the DDP wrapper, Adam) so that every rank and
every resume builds the same thing; the trainer then only steps them and
:mod:`engine.training.resume` saves and restores their state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.training.config import TrainConfig
from engine.training.distributed import DistContext
from engine.training.errors import TrainingError

if TYPE_CHECKING:
    from engine.specs import ModelSpec

CONDITION_PREFIX = "class_embedding."
"""State-dict prefix of the covariate embedding of a conditional UNet (MONAI's class embedding slot)."""

Report = Callable[[str, str], None]
"""``report(kind, message)``: an ``"info"`` line for the front end."""


def freeze_encoder(model: torch.nn.Module, levels: int) -> list[str]:
    """Stop gradients for the input convolution and the first ``levels`` encoder levels.

    The time embedding stays trainable: it conditions every level, including the ones
    being fine-tuned. Returns the frozen parameter names.
    """
    if levels <= 0:
        return []
    frozen = []
    modules = [("conv_in", model.conv_in)] + [(f"down_blocks.{i}", model.down_blocks[i]) for i in range(levels)]
    for prefix, module in modules:
        for name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return frozen


class EMA:
    """Exponential moving average of a model's floating-point state, as a second module.

    Decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (as in diffusers'
    EMAModel), so the first epochs are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _tensor_pairs(self, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            src, dst = model.state_dict(keep_vars=True), self.module.state_dict(keep_vars=True)
            self._pairs = [(dst[k].data, src[k].data) for k in dst if dst[k].is_floating_point()]
        return self._pairs

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        pairs = self._tensor_pairs(model)
        torch._foreach_lerp_([d for d, _ in pairs], [s for _, s in pairs], 1.0 - decay)


@dataclass
class Networks:
    """What training updates, on the training device.

    Attributes:
        model: the network being trained.
        ddp: the module the forward pass runs through (the DDP wrapper, or ``model`` itself
            in one process).
        ema: the exponential moving average of ``model``, or None (``ema_decay`` 0).
        params: the trainable parameters (frozen encoder levels excluded).
        optimizer: Adam over ``params``.
        scaler: the fp16 gradient scaler (disabled in other precisions).
        init_info: provenance of ``--init-from`` weights, empty without them.
    """

    model: torch.nn.Module
    ddp: torch.nn.Module
    ema: EMA | None
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    init_info: dict[str, Any]


def build_networks(
    config: TrainConfig,
    ctx: DistContext,
    spec: ModelSpec,
    *,
    precision: str,
    init_seed: int,
    report: Report,
    autoencoder=None,
) -> Networks:
    """Build the run's networks on ``ctx.device``.

    Args:
        config: the resolved config (init-from, frozen levels, EMA decay, Adam settings).
        ctx: this process's place in the job (device; DDP when distributed).
        spec: the preset being trained.
        precision: the resolved precision (``fp16`` turns the gradient scaler on).
        init_seed: seeds the global RNG for the initialisation (the same on every rank).
        report: receives info lines (the starting weights, frozen levels).
        autoencoder: for a latent model, the trained autoencoder
            (:class:`engine.autoencoder_checkpoint.AutoencoderCheckpoint`): its weights go into
            the model, frozen (never in the optimizer, never under DDP's gradient reduction).

    Raises:
        TrainingError: ``--init-from`` weights of another network.
    """
    device = ctx.device
    torch.manual_seed(init_seed)
    model = spec.build_model(use_flash_attention=device.type == "cuda")
    init_info: dict[str, Any] = {}
    if config.init_from:
        init_info = _load_init(config, spec, model, report=report)
    if autoencoder is not None:
        model.autoencoder.load_state_dict(autoencoder.select_weights(prefer_ema=True), strict=True)
        model.autoencoder.requires_grad_(False)
        init_info["autoencoder"] = str(Path(autoencoder.path).resolve()) if autoencoder.path else None
        init_info["autoencoder_sha256"] = autoencoder.sha256
    frozen = freeze_encoder(model, config.freeze_encoder_levels)
    if frozen and ctx.is_main:
        report("info", f"frozen: input convolution and {config.freeze_encoder_levels} encoder level(s)")
    model.to(device)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    ddp: torch.nn.Module = model
    if ctx.distributed:
        kwargs: dict[str, Any] = {"device_ids": [device.index]} if device.type == "cuda" else {}
        ddp = torch.nn.parallel.DistributedDataParallel(model, **kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=config.lr,
        betas=tuple(config.adam_betas),
        weight_decay=config.weight_decay,
        fused=device.type in ("cuda", "cpu"),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed volume shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
    return Networks(
        model=model, ddp=ddp, ema=ema, params=params, optimizer=optimizer, scaler=scaler, init_info=init_info
    )


def _load_init(config: TrainConfig, spec: ModelSpec, model: torch.nn.Module, *, report: Report) -> dict[str, Any]:
    """Load ``--init-from`` weights into ``model``; returns their provenance."""
    from engine.checkpoint import check_state_dict, load_checkpoint

    source = Path(config.init_from)
    ckpt = load_checkpoint(source)
    if ckpt.spec.unet != spec.unet:
        raise TrainingError(
            f"--init-from {source.name} holds a {ckpt.spec.name!r} network, which does not "
            f"match preset {spec.name!r}; use --preset {ckpt.spec.name}"
        )
    kind, weights = ckpt.select_weights(prefer_ema=config.init_use_ema)
    use_ema = kind == "ema"
    new_layers = ""
    if spec.conditions is not None and ckpt.spec.conditions != spec.conditions:
        # An unconditional (or differently conditioned) start: keep this run's fresh covariate
        # embedding, whose zero-initialised output makes the first step the old model's.
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith(CONDITION_PREFIX)}
        weights = {**{k: v for k, v in weights.items() if not k.startswith(CONDITION_PREFIX)}, **fresh}
        new_layers = "; the covariate embedding is new (its output starts at zero)"
    check_state_dict(model, weights, source=ckpt.describe_source())
    model.load_state_dict(weights, strict=True)
    report("info", f"starting from {source.name} ({'EMA' if use_ema else 'raw'} weights){new_layers}")
    if ckpt.spec.schedule.prediction_type != spec.schedule.prediction_type:
        report(
            "info",
            f"the starting weights predicted {ckpt.spec.schedule.prediction_type}; "
            f"this run trains them to predict {spec.schedule.prediction_type}",
        )
    return {
        "init_from": str(source.resolve()),
        "init_from_sha256": ckpt.sha256,
        "init_from_weights": "ema" if use_ema else "model",
    }
