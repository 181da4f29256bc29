"""Curation: which images go to labelling and training, split without leakage, as a content-addressed version.

The steps, each a plain function of data frames and numpy arrays (no Dagster here):

1. :mod:`~cv_dataops.curation.pool`: every image embedded by the current embedder, with its quality, duplicate
   group and scenario.
2. :mod:`~cv_dataops.curation.eligibility`: unusable images and all but one member of each duplicate group out.
3. :mod:`~cv_dataops.curation.selection`: the budget spread over strata (label, else scenario), picked by kernel
   herding or k-center greedy.
4. :mod:`~cv_dataops.curation.splits`: ``train``/``val``/``test`` by whole clusters, and the leakage count.
5. :mod:`~cv_dataops.curation.snapshots`: the canonical manifest and its content-addressed ``snapshot_id``.

:mod:`~cv_dataops.curation.settings` holds the settings; the export formats live in :mod:`cv_dataops.exports`.
"""
