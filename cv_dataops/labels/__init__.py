"""Labels: import with provenance, the append-only `labels` store and the audited label per image."""
