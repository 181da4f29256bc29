"""Drift: does a batch differ from the data the current model was trained on, where and why.

Modules: :mod:`.reference` (which images to compare with), :mod:`.statistics` (KS / chi-squared per image
property), :mod:`.embedding_tests` (MMD, domain classifier, scenario shares and novel images, label-model outputs
and the accuracy estimate), :mod:`.detect` (one call per batch: every test, weighted Holm, severity),
:mod:`.explain` (causes in words), :mod:`.report` (the offline HTML page), :mod:`.alerts` (the webhook),
:mod:`.tables` (`drift`, `drift_summary`, `drift_atypicality`).

Import from the modules themselves: this package imports nothing, so reading the tables' definitions
(``cv_dataops.drift.tables``, gathered by ``cv_dataops.tables`` for every command) does not load SciPy.
"""
