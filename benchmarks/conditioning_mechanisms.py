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
    python benchmarks/conditioning_mechanisms.py --preset tiny --train-steps 300

With ``--train-steps N``, a controlled steering test: both variants of the preset's network
(same seed, same data order, Adam) learn N steps on ellipsoid "brains" whose size is set by one
continuous covariate (radius 0.45 + 0.35 a, a in [0, 1]); then the held-out v-loss at fixed
timesteps with the true covariate and with the covariates shuffled between volumes. The gap
(shuffled - true) is how much the network uses the condition.
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
    parser.add_argument("--train-steps", type=int, default=0, help="run the steering test for this many steps")
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
    if args.train_steps:
        steering(base, args.train_steps)


def _blobs(shape, sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Model-space ellipsoids (inside 0.6 plus texture, outside -1) of radius 0.45 + 0.35 a."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    out = []
    for a in sizes:
        radius = 0.45 + 0.35 * float(a)
        texture = 0.2 * torch.cos(6 * r2 + torch.rand((), generator=generator) * 3)
        out.append(torch.where(r2 < radius**2, 0.6 + texture, torch.tensor(-1.0)))
    return torch.stack(out)[:, None]


def steering(base, steps: int) -> None:
    from dataclasses import replace

    from monai.networks.nets import DiffusionModelUNet

    from engine.conditions import ConditionSpec, Covariate, apply_dropout

    conditions = ConditionSpec((Covariate("size", "continuous", minimum=0.0, maximum=1.0),), dropout=0.1)
    spec = replace(base, conditions=conditions, schedule=replace(base.schedule, prediction_type="v_prediction"))
    shape = tuple(spec.grid.shape)
    u = spec.unet

    class CrossAttentionUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dim = 4 * u.channels[0]
            self.unet = DiffusionModelUNet(
                spatial_dims=3, in_channels=1, out_channels=1, channels=u.channels,
                attention_levels=u.attention_levels, num_res_blocks=u.num_res_blocks,
                num_head_channels=u.num_head_channels, norm_num_groups=u.norm_num_groups,
                with_conditioning=True, cross_attention_dim=dim,
            )  # fmt: skip
            self.embed = spec.build_model().class_embedding

        def forward(self, x, timesteps, class_labels):
            return self.unet(x, timesteps=timesteps, context=self.embed(class_labels)[:, None])

    def make(kind: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return spec.build_model() if kind == "time embedding" else CrossAttentionUNet()

    def loss(model, x0, labels, t, eps) -> torch.Tensor:
        xt = spec.schedule.add_noise(x0, eps, t)
        target = spec.schedule.training_target(x0, eps, *spec.schedule.noise_coefficients(t, ndim=5))
        return torch.nn.functional.mse_loss(model(xt, timesteps=t.float(), class_labels=labels), target)

    g = torch.Generator().manual_seed(1)
    sizes = torch.rand(32, generator=g)
    val_x = _blobs(shape, sizes, g)
    val_eps = torch.randn(val_x.shape, generator=g)
    print(f"\nsteering test: {steps} steps of batch 8 on {shape} ellipsoids, size from one covariate")
    for kind in ("time embedding", "cross-attention"):
        model = make(kind)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(2)
        start = time.perf_counter()
        for _ in range(steps):
            a = torch.rand(8, generator=data)
            x0 = _blobs(shape, a, data)
            t = torch.randint(0, 1000, (8,), generator=data)
            eps = torch.randn(x0.shape, generator=data)
            labels = conditions.encode([{"size": float(v)} for v in a])
            labels = apply_dropout(labels, conditions, data)
            optimizer.zero_grad()
            loss(model, x0, labels, t, eps).backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        model.eval()
        shuffled = sizes[torch.randperm(len(sizes), generator=torch.Generator().manual_seed(3))]
        with torch.no_grad():
            row = []
            for t_value in (200, 500, 800):
                t = torch.full((len(sizes),), t_value)
                true = loss(model, val_x, conditions.encode([{"size": float(v)} for v in sizes]), t, val_eps)
                wrong = loss(model, val_x, conditions.encode([{"size": float(v)} for v in shuffled]), t, val_eps)
                null = loss(model, val_x, conditions.null(len(sizes)), t, val_eps)
                row.append(f"t={t_value}: true {true:.4f}, null {null:.4f}, shuffled {wrong:.4f}")
        print(f"{kind:>16}: {seconds:.0f} s; held-out v-loss " + "; ".join(row))


if __name__ == "__main__":
    main()
