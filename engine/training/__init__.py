"""Headless training of the diffusion model: config, data, the loop, distribution and logs.

The public entry point is :func:`engine.training.trainer.train` with a
:class:`engine.training.config.TrainConfig`; ``brainsynth-cli train`` is a thin front end.
Nothing here parses command lines or prints: progress goes to a callback.
"""

from engine.training.config import TrainConfig, load_config
from engine.training.errors import TrainingError

__all__ = ["TrainConfig", "TrainingError", "load_config"]
