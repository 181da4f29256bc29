"""Labels: import with provenance, the append-only `labels` store and the audited label per image.

``taxonomy`` (the classes, as configuration), ``sources`` (label files and reviews read into events),
``store`` (the versioned, append-only `labels` table), ``audit`` (the best label per image and why) and
``tables`` (`labels`, `audited_labels`, `label_issues`). Plain Python: the Dagster assets wire them.
"""
