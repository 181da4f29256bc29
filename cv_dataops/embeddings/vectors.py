"""Reading embedding vectors out of the catalog: always those of ONE embedder version.

Two embedders' vectors never compare (another dimension, or the same dimension in another space), so nothing reads
"every vector": :func:`read_vectors` reads the vectors of one version and says which batches hold another one (the
batches still waiting to be re-embedded after a change of embedder). Which version is *current*
(:func:`current_embedder_version`): the one the configured embedder produces when the model store knows it, else
the version that embedded the most images (ties: the greatest version string).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cv_dataops.core.storage import Storage
from cv_dataops.embeddings.tables import EMBEDDINGS

_COLUMNS = ["image_id", "batch_id", "vector", "embedder_version"]


@dataclass(frozen=True)
class Vectors:
    """The embeddings of one embedder version: row ``i`` of ``matrix`` (float32, L2-normalised) is image
    ``image_ids[i]`` of batch ``batch_ids[i]``. ``waiting`` counts, per batch, the images whose vectors are of
    another version (left out: waiting to be re-embedded). ``embedder_version`` is None for an empty catalog."""

    embedder_version: str | None
    image_ids: list[str]
    batch_ids: list[str]
    matrix: np.ndarray
    waiting: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix.ndim == 2 else 0

    def frame(self) -> pd.DataFrame:
        """``image_id, batch_id``, one row per vector, in ``matrix`` order."""
        return pd.DataFrame({"image_id": pd.Series(self.image_ids, dtype=object),
                             "batch_id": pd.Series(self.batch_ids, dtype=object)})

    def rows_of(self, image_ids: Iterable[str]) -> np.ndarray:
        """The positions in ``matrix`` of ``image_ids`` (KeyError naming the first without a vector here)."""
        positions = dict(zip(self.image_ids, range(len(self.image_ids)), strict=True))
        try:
            return np.array([positions[i] for i in image_ids], dtype=np.int64)
        except KeyError as missing:
            raise KeyError(f"image {missing.args[0]} has no vector of embedder version {self.embedder_version}") \
                from None

    @property
    def none_current_yet(self) -> bool:
        """Nothing embedded by this version yet while other versions' vectors exist: a re-embedding has just
        begun, and a spanning stage should wait (keep its last result) rather than work on no images."""
        return len(self) == 0 and bool(self.waiting)

    @property
    def images_waiting(self) -> int:
        return int(sum(self.waiting.values()))

    @property
    def batches_waiting(self) -> list[str]:
        return sorted(self.waiting)

    def summary(self) -> dict:
        """What a spanning stage worked on, for its metadata: the version, and what waits for re-embedding."""
        return {"embedder_version": self.embedder_version or "", "images_embedded": len(self),
                "images_waiting_for_reembedding": self.images_waiting,
                "batches_waiting_for_reembedding": self.batches_waiting}


def waiting_message(vectors: Vectors) -> str:
    """Why a spanning stage waits: what it would have worked on, and what is still to be re-embedded."""
    return (f"waiting for the re-embedding: no image is embedded by the current embedder (version "
            f"{vectors.embedder_version}) yet; {vectors.images_waiting} images in {len(vectors.waiting)} batches "
            f"hold another version (re-run image_embeddings on them); the last result stays")


def embedder_versions(tables) -> Counter:
    """How many images each embedder version embedded: more than one means a re-embedding is under way."""
    return Counter(tables.read(EMBEDDINGS, columns=["embedder_version"]).column("embedder_version").to_pylist())


def current_version(versions: Counter, configured: str | None = None) -> str | None:
    """The version spanning stages use: ``configured`` (the configured embedder's) when known, even before any
    batch is re-embedded with it; else the version of the most images (ties: the greatest version string); None
    when nothing is embedded and nothing is configured."""
    if configured is not None:
        return configured
    if not versions:
        return None
    return max(versions.items(), key=lambda item: (item[1], item[0]))[0]


def as_matrix(column: pa.ChunkedArray | pa.Array, version: str | None = None) -> np.ndarray:
    """A list<float32> column as a (rows, dimension) float32 matrix, without a Python object per row. Every row
    must have the same length: one embedder version has one dimension."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, 0), np.float32)
    lengths = pc.list_value_length(array)
    low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if low != high:
        raise ValueError(f"embeddings of version {version} have {low} to {high} dimensions: one embedder version "
                         f"must have one dimension")
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(array), high)


def _of_version(table: pa.Table, version: str | None) -> tuple[pa.Table, dict[str, int]]:
    """The rows of ``version``, and per batch the count of rows of other versions."""
    same = pc.equal(table.column("embedder_version"), version) if version is not None else None
    if same is None:
        return table.slice(0, 0), dict(Counter(table.column("batch_id").to_pylist()))
    same = pc.fill_null(same, False)
    if pc.all(same).as_py() is not False:  # the usual case: filtering would copy every vector for nothing
        return table, {}
    others = table.filter(pc.invert(same)).column("batch_id").to_pylist()
    return table.filter(same), dict(Counter(others))


def _vectors(table: pa.Table, version: str | None, waiting: dict[str, int]) -> Vectors:
    return Vectors(version, table.column("image_id").to_pylist(), table.column("batch_id").to_pylist(),
                   as_matrix(table.column("vector"), version), waiting)


def read_vectors(tables, embedder_version: str | None = None, *,
                 batches: Sequence[str] | None = None) -> Vectors:
    """The vectors of ``embedder_version`` (default: :func:`current_version` of the catalog) in every batch, or in
    ``batches``; the batches holding other versions are counted in ``waiting``."""
    table = tables.read(EMBEDDINGS, batches, columns=_COLUMNS)
    version = current_version(Counter(table.column("embedder_version").to_pylist()), embedder_version)
    same, waiting = _of_version(table, version)
    return _vectors(same, version, waiting)


def iter_vectors(tables, embedder_version: str, chunk_rows: int = 65_536,
                 batches: Sequence[str] | None = None) -> Iterator[Vectors]:
    """The vectors of ``embedder_version`` (in every batch, or in ``batches``), one batch file and at most
    ``chunk_rows`` rows at a time (memory bounded however large the catalog); each chunk's ``waiting`` counts its
    batch's rows of other versions."""
    for partition in tables.partitions(EMBEDDINGS) if batches is None else batches:
        same, waiting = _of_version(tables.read(EMBEDDINGS, [partition], columns=_COLUMNS), embedder_version)
        if not same.num_rows:
            if waiting:
                yield _vectors(same, embedder_version, waiting)
            continue
        for start in range(0, same.num_rows, chunk_rows):
            yield _vectors(same.slice(start, chunk_rows), embedder_version, waiting if start == 0 else {})


def current_embedder_version(tables, storage: Storage, spec: dict) -> str | None:
    """The version spanning stages use with the embedder ``spec`` configures: its version when the model store
    knows it (never fitted here), else the catalog's :func:`current_version`. Resolve it once per run and read
    with it (``read_vectors(tables, version, batches=...)``), so every read of the run agrees."""
    from cv_dataops.embeddings.store import configured_version

    configured = configured_version(spec, storage)
    return configured if configured is not None else current_version(embedder_versions(tables))


def current_vectors(tables, storage: Storage, spec: dict) -> Vectors:
    """The vectors spanning stages use: those of :func:`current_embedder_version`, with what waits for
    re-embedding."""
    from cv_dataops.embeddings.store import configured_version

    return read_vectors(tables, configured_version(spec, storage))
