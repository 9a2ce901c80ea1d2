"""Does augmentation with synthetic scans help? The ``brainsynth-cli utility`` experiment.

A small MONAI 3-D classifier (or regressor) is trained on real scans alone, on real plus
synthetic scans at several ratios, and on synthetic scans alone, with the same architecture,
optimizer-step budget and augmentation, and is measured on a held-out set of real subjects.

Modules, in the order an experiment uses them:

* :mod:`engine.utility.data`: labelled real scans (``participants.tsv`` / manifest, read as
  training reads covariates) and labelled synthetic volumes (their sidecars' conditions);
  loading onto one grid.
* :mod:`engine.utility.splits`: the subject-level, label-stratified test split per repeat, the
  nested real training subsets of the learning curve and the validation split.
* :mod:`engine.utility.leakage`: refusing synthetic volumes whose generator was trained on a
  test subject (the checkpoint's run ``split.csv``).
* :mod:`engine.utility.classifier`: the network and one training run (early stopping).
* :mod:`engine.utility.stats`: ROC AUC, balanced accuracy, MAE, bootstrap intervals over test
  subjects and repeats, paired differences.
* :mod:`engine.utility.experiment`: options, the plan of runs, resumable execution, the result.
* :mod:`engine.utility.report`: ``utility.json``, ``report.md`` and the PNG plots.
"""
