"""Shared fixtures: tiny models and checkpoints the tests make themselves."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import torch

from engine.checkpoint import save_checkpoint
from engine.specs import PRESETS, ModelSpec

# One intra-op thread: the tiny test models gain nothing from more, and tests that start
# several processes (distributed training, the app) would oversubscribe 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    """The 'tiny' preset: 16 x 24 x 16 grid, a 0.18 M parameter UNet."""
    return PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_weights(tiny_spec):
    # Random weights that predict non-zero noise (MONAI zero-initialises the last layer).
    return tiny_spec.build_random_model(seed=0).state_dict()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_spec, tiny_weights):
    """A real BrainSynth checkpoint file of the tiny preset with random weights and an EMA copy."""
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in tiny_weights.items()}
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, spec=tiny_spec, weights=tiny_weights, ema_weights=ema, provenance={"source": "test"})
    return path
