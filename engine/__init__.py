"""BrainSynth engine: everything computational, with no Qt and no argument parsing.

Front ends (``training_cli``, ``brainsynth_gui``) are thin layers over this package.
"""

__version__ = "0.1.0"
