"""Discovery: the scenarios (clusters) and map of the catalog (:mod:`~cv_dataops.discovery.scenarios`), and search
by SQL or by similarity (:mod:`~cv_dataops.discovery.search`)."""
