"""PyInstaller entry script of ``brainsynth-cli`` (the frozen twin of the console script)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # DataLoader workers re-run the executable when frozen
    from training_cli.main import main

    sys.exit(main())
