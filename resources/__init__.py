"""Bundled data: the demo checkpoint, demo scans, icons and the model card.

Kept as a package so that its files travel inside wheels; use :mod:`engine.resources` to
find them (it also handles PyInstaller bundles).
"""
