"""One module per subcommand; each exposes ``register(subparsers)``.

Command modules import heavy libraries (torch, monai) inside their ``run`` functions so that
``brainsynth-cli --help`` answers at once.
"""

COMMAND_MODULES = (
    "info",
    "prepare",
    "preprocess",
    "sample",
    "train",
    "evaluate",
    "demo_data",
    "study",
    "utility",
    "import_bundle",
    "train_autoencoder",
)
