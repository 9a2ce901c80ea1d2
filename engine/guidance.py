"""The model call of a sampling step: conditions and classifier-free guidance, in one place.

Every sampler (:mod:`engine.samplers`) calls its network as ``model(x, timesteps=t)``; the
function :func:`conditioned_call` returns is that call for a conditional model, so no stepper
knows about conditions. Classifier-free guidance (Ho & Salimans 2022, eq. 6, written with
``w = guidance``)::

    prediction = null + w * (conditional - null)

``w = 1`` is the plain conditional prediction, ``w = 0`` the unconditional one (the null
condition), ``w > 1`` pushes the sample towards the condition. The two predictions come from
one batched model call per step: the batch ``x`` is stacked twice, with the conditions and
with the null, and split after. The combination is linear in the network's output, so it is
the same for epsilon, v and x_0 prediction. Rows are independent in a UNet with group norm, so
a volume's prediction does not depend on the other volumes in the call (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelCall = Callable[..., torch.Tensor]


def conditioned_call(model: ModelCall, encoded: torch.Tensor | None, guidance: float | None) -> ModelCall:
    """The step's model call for one batch.

    Args:
        model: the network (or its autocast wrapper), called as
            ``model(x, timesteps=t, class_labels=c)``.
        encoded: the batch's encoded conditions ``(B, 2 n)``
            (:meth:`engine.conditions.ConditionSpec.encode`), or None for an unconditional model.
        guidance: the guidance weight w, or None for no guidance (the conditions as given).

    Returns:
        ``call(x, *, timesteps) -> output`` of the shape of ``x``.
    """
    if encoded is None:
        return model
    if guidance is None or guidance == 1.0:
        return lambda x, *, timesteps: model(x, timesteps=timesteps, class_labels=encoded)
    null = torch.zeros_like(encoded)
    if guidance == 0.0:
        return lambda x, *, timesteps: model(x, timesteps=timesteps, class_labels=null)
    both = torch.cat([encoded, null])
    weight = float(guidance)

    def call(x: torch.Tensor, *, timesteps: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), timesteps=torch.cat([timesteps, timesteps]), class_labels=both)
        conditional, unconditional = out.float().chunk(2)
        return unconditional + weight * (conditional - unconditional)

    return call
