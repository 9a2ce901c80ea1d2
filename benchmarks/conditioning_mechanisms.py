"""Time-embedding or cross-attention conditioning of MONAI's DiffusionModelUNet: what each costs.

Compares, on a preset's network, the covariate embedding added to the time embedding (what
BrainSynth uses: MONAI's ``class_embedding`` slot) with MONAI's cross-attention conditioning
(``with_conditioning=True``, ``cross_attention_dim``, context ``(B, 1, D)``, as the MONAI brain
LDM bundle conditions on four covariates):

* parameters, and the time of one training step (forward + backward, batch 4) on this machine;
* whether the unconditional network's weights still load (the transfer-learning route:
  ``--init-from`` an unconditional checkpoint);
* whether the cross-attention output depends on the image at all with one context token (with
  a single key the softmax is 1, so the block adds the same vector at every voxel).

    python benchmarks/conditioning_mechanisms.py --preset demo
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch


def _step_seconds(model, shape, *, repeats: int, **kwargs) -> float:
    x = torch.randn(4, 1, *shape)
    t = torch.randint(0, 1000, (4,)).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(x, timesteps=t, **kwargs).square().mean().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    from monai.networks.nets import DiffusionModelUNet

    from engine.conditions import ConditionSpec, Covariate
    from engine.specs import get_preset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = get_preset(args.preset)
    conditions = ConditionSpec(
        (
            Covariate("age", "continuous", minimum=45, maximum=85),
            Covariate("sex", "categorical", categories=("F", "M")),
            Covariate("group", "categorical", categories=("control", "ftd")),
        )
    )
    plain = base.build_model()
    time_embedding = replace(base, conditions=conditions).build_model()
    u = base.unet
    dim = 4 * u.channels[0]
    cross = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=u.channels,
        attention_levels=u.attention_levels,
        num_res_blocks=u.num_res_blocks,
        num_head_channels=u.num_head_channels,
        norm_num_groups=u.norm_num_groups,
        with_conditioning=True,
        cross_attention_dim=dim,
    )
    cross_embedding = replace(base, conditions=conditions).build_model().class_embedding  # same covariate encoder
    labels = conditions.encode([{"age": 70.0, "sex": "F", "group": "ftd"}] * 4)

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    shape = tuple(base.grid.shape)
    print(f"preset {args.preset}, grid {shape}, one thread, batch 4, median of {args.repeats} steps")
    print(
        f"unconditional:        {count(plain):>10,} parameters, "
        f"{_step_seconds(plain, shape, repeats=args.repeats):.2f} s/step"
    )
    print(
        f"time embedding:       {count(time_embedding):>10,} parameters, "
        f"{_step_seconds(time_embedding, shape, repeats=args.repeats, class_labels=labels):.2f} s/step"
    )
    context = cross_embedding(labels)[:, None, :]
    print(
        f"cross-attention:      {count(cross) + count(cross_embedding):>10,} parameters, "
        f"{_step_seconds(cross, shape, repeats=args.repeats, context=context.detach()):.2f} s/step"
    )
    plain_keys = set(plain.state_dict())
    print(
        "unconditional weights load into: time embedding "
        f"{plain_keys <= set(time_embedding.state_dict())}, cross-attention {plain_keys <= set(cross.state_dict())} "
        f"({len(plain_keys - set(cross.state_dict()))} of {len(plain_keys)} keys missing)"
    )
    # One context token: is the cross-attention term the same at every voxel?
    blocks = [m for m in cross.modules() if type(m).__name__ == "CrossAttentionBlock"]
    block = next(b for b in blocks if b.context_input_size == dim)  # attn2, the cross-attention
    h = torch.randn(2, 50, block.hidden_input_size)
    c = torch.randn(2, 1, dim)
    with torch.no_grad():
        out = block(h, context=c)
    spread = float((out - out[:, :1]).abs().max())
    print(f"cross-attention output with one context token: spread over positions {spread:.2e} (0 = image-independent)")


if __name__ == "__main__":
    main()
