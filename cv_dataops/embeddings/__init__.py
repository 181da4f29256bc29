"""Embeddings: every image as a unit vector, and the one way to compare them.

- :mod:`~cv_dataops.embeddings.embedders`: the :class:`~cv_dataops.embeddings.embedders.Embedder` protocol, the
  built-in patch k-means embedder and ONNX models;
- :mod:`~cv_dataops.embeddings.store`: where a fitted embedder lives under the data root, and its version;
- :mod:`~cv_dataops.embeddings.vectors`: reading vectors, always those of ONE embedder version;
- :mod:`~cv_dataops.embeddings.neighbors`: the one nearest-neighbour engine every consumer uses;
- :mod:`~cv_dataops.embeddings.clustering`: the one k-means wrapper (scenarios, curation's cells);
- :mod:`~cv_dataops.embeddings.tables`: the ``embeddings`` table.
"""
