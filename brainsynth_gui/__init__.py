"""BrainSynth desktop app (PySide6 + pyqtgraph): a thin front end over ``engine``."""
