"""Shared fixtures: tiny models and checkpoints the tests make themselves."""

from __future__ import annotations

import gc
import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Precision timings and other caches go to a folder of this run, not the user's cache.
os.environ.setdefault("BRAINSYNTH_CACHE_DIR", tempfile.mkdtemp(prefix="brainsynth-test-cache-"))

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


@pytest.fixture(scope="session")
def damping_model() -> tuple[ModelSpec, torch.nn.Module]:
    """The tiny network as an x_0 predictor with its output layer scaled by 0.3: a contraction.

    For invariance tests (batch size, shards). A batched convolution rounds differently from
    single runs (~1e-6 per call); a random epsilon predictor is no denoiser and can magnify that
    to ~1e-2 over a DDIM chain (x_0 = (x - sqrt(1 - abar) eps) / sqrt(abar)), so a tolerance
    would only hold by luck. This network's output changes ~0.3x as fast as its input, so the
    sampler damps such differences: measured ~2e-6 after 25 to 50 steps of every sampler.
    """
    from dataclasses import replace

    base = PRESETS["tiny"]
    spec = replace(base, schedule=replace(base.schedule, prediction_type="sample"))
    model = spec.build_random_model(seed=0)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.weight.mul_(0.3)
        if last.bias is not None:
            last.bias.mul_(0.3)
    return spec, model.eval()


@pytest.fixture
def damping_checkpoint(tmp_path, damping_model):
    """:func:`damping_model` saved as a BrainSynth checkpoint (no EMA)."""
    spec, model = damping_model
    path = tmp_path / "damping.safetensors"
    save_checkpoint(path, spec=spec, weights=model.state_dict(), provenance={"source": "test"})
    return path


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """Commands run in-process set PyTorch's thread count (one per core); give the next test its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests():
    """Once a window has moved cyclic collection onto the GUI thread's timer, tests that never run
    an event loop would not collect at all: collect here, on the main thread, as the timer would."""
    yield
    if not gc.isenabled():  # only the GUI-thread collector turns automatic collection off
        from brainsynth_gui.gui_thread_gc import collect_garbage_on_gui_thread

        collect_garbage_on_gui_thread().check()
