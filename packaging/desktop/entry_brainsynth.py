"""PyInstaller entry script of the ``brainsynth`` desktop app (the frozen twin of the console script)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # DataLoader workers re-run the executable when frozen
    from brainsynth_gui.app import main

    sys.exit(main())
