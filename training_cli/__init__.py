"""Headless command line for BrainSynth: ``brainsynth-cli``. A thin layer over ``engine``."""
