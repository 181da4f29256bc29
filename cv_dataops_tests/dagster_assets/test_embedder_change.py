"""A change of embedder: vectors are read by embedder version only, and the spanning stages use the current
embedder's while the other batches wait to be re-embedded (another dimension, or the same dimension in another
space). Tiny built-in embedders, fitted in well under a second."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.curation.assets import curated_dataset
from cv_dataops.defs.curation.checks import (
    curated_no_leakage,
    curated_no_unusable_image,
)
from cv_dataops.defs.discovery.assets import scenarios
from cv_dataops.defs.duplicates.assets import image_duplicates
from cv_dataops.defs.embeddings.assets import image_embeddings
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.quality.assets import image_quality
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.embeddings.embedders import PatchKMeansEmbedder
from cv_dataops.embeddings.store import configured_version, model_key
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import (
    current_embedder_version,
    current_vectors,
    current_version,
    iter_vectors,
    read_vectors,
)
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import EmbeddingResource, build_resources
from cv_dataops_tests.conftest import encode, photo, write_files

TINY = {"kind": "patch-kmeans", "n_centroids": 8, "n_patches": 2000, "dimension": 8, "kmeans_iterations": 2}
CHANGES = {"another dimension": {**TINY, "dimension": 12}, "the same dimension": {**TINY, "seed": 1}}


def _fit(spec: dict, seeds: range) -> PatchKMeansEmbedder:
    options = {k: v for k, v in spec.items() if k != "kind"}
    return PatchKMeansEmbedder.fit([photo(s) for s in seeds], **options)


def _write(catalog: Catalog, batch_id: str, embedder: PatchKMeansEmbedder, seeds: range) -> None:
    vectors = embedder.embed([photo(s) for s in seeds])
    catalog.write(EMBEDDINGS, EMBEDDINGS.from_rows(
        {"image_id": f"{s:064x}", "batch_id": batch_id, "vector": v.tolist(), "embedder": embedder.name,
         "embedder_version": embedder.version} for s, v in zip(seeds, vectors, strict=True)), batch_id)


# --- the library ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", CHANGES)
def test_vectors_are_read_by_embedder_version_only(tmp_path, change):
    catalog = Catalog(LocalStorage(tmp_path))
    old, new = _fit(TINY, range(12)), _fit(CHANGES[change], range(12))
    assert old.version != new.version
    assert (old.dimension == new.dimension) == (change == "the same dimension")
    _write(catalog, "b1", new, range(0, 6))  # re-embedded already
    _write(catalog, "b2", old, range(6, 10))
    _write(catalog, "b3", old, range(10, 15))

    newest = read_vectors(catalog, new.version)
    assert newest.embedder_version == new.version and newest.matrix.dtype == np.float32
    assert newest.matrix.shape == (6, new.dimension) and set(newest.batch_ids) == {"b1"}
    assert newest.waiting == {"b2": 4, "b3": 5} and newest.summary()["batches_waiting_for_reembedding"] == ["b2", "b3"]
    np.testing.assert_allclose(np.linalg.norm(newest.matrix, axis=1), 1.0, atol=1e-5)

    # Unknown configured version: the version of the most images.
    majority = read_vectors(catalog)
    assert majority.embedder_version == old.version and len(majority) == 9 and majority.waiting == {"b1": 6}
    assert current_version(Counter({"a": 2, "b": 2})) == "b"  # ties: the greatest version string
    assert current_version(Counter({"a": 3}), configured="c") == "c"  # configured, even before any vector
    none_yet = read_vectors(catalog, "c")
    assert len(none_yet) == 0 and none_yet.images_waiting == 15
    assert read_vectors(Catalog(LocalStorage(tmp_path / "empty"))).embedder_version is None

    chunks = list(iter_vectors(catalog, old.version, chunk_rows=3))
    assert [len(c) for c in chunks] == [0, 3, 1, 3, 2] and sum(c.images_waiting for c in chunks) == 6
    assert np.concatenate([c.matrix for c in chunks if len(c)]).shape == (9, old.dimension)


def test_the_configured_embedder_decides_once_the_store_knows_it(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path))
    old, new = _fit(TINY, range(12)), _fit(CHANGES["the same dimension"], range(12))
    for batch in ("b1", "b2"):
        _write(catalog, batch, old, range(0, 6) if batch == "b1" else range(6, 12))
    _write(catalog, "b3", new, range(12, 15))
    spec = CHANGES["the same dimension"]
    assert configured_version(spec, catalog.storage) is None  # not fitted yet: the majority
    assert current_embedder_version(catalog, catalog.storage, spec) == old.version
    catalog.storage.write_bytes(model_key(spec), new.to_bytes())
    assert configured_version(spec, catalog.storage) == new.version
    assert current_embedder_version(catalog, catalog.storage, spec) == new.version
    vectors = current_vectors(catalog, catalog.storage, spec)
    assert len(vectors) == 3 and vectors.waiting == {"b1": 6, "b2": 6}


# --- through Dagster ------------------------------------------------------------------------------------------


def _land(tmp_path, instance, name: str, seeds: range) -> str:
    write_files(tmp_path / "landing", {f"{name}/{'cat' if s % 2 else 'dog'}/{s}.png": encode(photo(s), "PNG")
                                       for s in seeds})
    (batch,) = BatchLedger(LocalStorage(tmp_path / "data")).plan(LocalStorage(tmp_path / "landing"))
    instance.add_dynamic_partitions(batch_partitions.name, [batch.batch_id])
    return batch.batch_id


def _resources(tmp_path, spec: dict) -> dict:
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"))
    resources["embedding"] = EmbeddingResource(spec=spec)
    return resources


SPANNING = [image_duplicates, scenarios, curated_dataset, curated_no_leakage, curated_no_unusable_image]


def _spanning(instance, resources) -> dict[str, dict]:
    result = dg.materialize(SPANNING, instance=instance, resources=resources)
    assert result.success
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"curated_no_leakage": True, "curated_no_unusable_image": True}
    return {e.asset_key.path[-1]: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.mark.parametrize("change", CHANGES)
def test_spanning_assets_use_the_current_embedder_while_batches_wait(tmp_path, change):
    instance = dg.DagsterInstance.ephemeral()
    old_resources, new_resources = _resources(tmp_path, TINY), _resources(tmp_path, CHANGES[change])
    batches = [_land(tmp_path, instance, "one", range(0, 10)), _land(tmp_path, instance, "two", range(10, 18))]
    for batch in batches:
        assert dg.materialize([raw_images, image_quality, image_embeddings], partition_key=batch, instance=instance,
                              resources=old_resources).success
    before = _spanning(instance, old_resources)
    assert before["scenarios"]["images_waiting_for_reembedding"] == 0
    assert before["curated_dataset"]["pool"] == 18 and before["curated_dataset"]["dagster/row_count"] > 0

    # The embedder changes; only the first batch is re-embedded so far.
    assert dg.materialize([image_embeddings], partition_key=batches[0], instance=instance,
                          resources=new_resources).success
    embeddings = pq.read_table(tmp_path / "data" / "catalog" / "embeddings").to_pandas()
    assert embeddings.embedder_version.nunique() == 2 and embeddings.vector.map(len).nunique() == (
        2 if change == "another dimension" else 1)
    during = _spanning(instance, new_resources)
    new_version = embeddings[embeddings.batch_id == batches[0]].embedder_version.iloc[0]
    for asset in ("scenarios", "curated_dataset"):
        assert during[asset]["embedder_version"] == new_version
        assert during[asset]["images_waiting_for_reembedding"] == 8
        assert during[asset]["batches_waiting_for_reembedding"] == [batches[1]]
    first_batch = set(embeddings[embeddings.batch_id == batches[0]].image_id)
    table = tmp_path / "data" / "catalog"
    assert set(pq.read_table(table / "scenarios").column("image_id").to_pylist()) == first_batch
    assert during["curated_dataset"]["pool"] == 10
    assert set(pq.read_table(table / "curated").column("image_id").to_pylist()) <= first_batch

    assert dg.materialize([image_embeddings], partition_key=batches[1], instance=instance,
                          resources=new_resources).success
    after = _spanning(instance, new_resources)
    assert after["scenarios"]["images_waiting_for_reembedding"] == 0
    assert after["curated_dataset"]["pool"] == 18
    assert len(pq.read_table(table / "scenarios")) == 18


def test_before_the_first_batch_is_re_embedded_the_spanning_assets_wait(tmp_path):
    """An ONNX embedder's version is known before it embedded anything: the spanning assets then keep their last
    result instead of working on no images; from the first re-embedded batch on, they work on those."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cv_dataops_tests.unit.test_embeddings import MEAN, STD, _conv_model

    onnx = {"kind": "onnx", "path": str(_conv_model(tmp_path / "tiny.onnx")), "input_size": [16, 16],
            "mean": list(MEAN), "std": list(STD)}  # 8 dimensions, like TINY: the same dimension, another space
    instance = dg.DagsterInstance.ephemeral()
    old_resources, new_resources = _resources(tmp_path, TINY), _resources(tmp_path, onnx)
    batches = [_land(tmp_path, instance, "one", range(0, 10)), _land(tmp_path, instance, "two", range(10, 18))]
    for batch in batches:
        assert dg.materialize([raw_images, image_quality, image_embeddings], partition_key=batch, instance=instance,
                              resources=old_resources).success
    _spanning(instance, old_resources)
    table = tmp_path / "data" / "catalog"
    scenarios_before = pq.read_table(table / "scenarios")
    curated_before = pq.read_table(table / "curated")

    waiting = dg.materialize([scenarios, curated_dataset, curated_no_leakage], instance=instance,
                             resources=new_resources)
    assert waiting.success and not waiting.get_asset_materialization_events()
    assert pq.read_table(table / "scenarios").equals(scenarios_before)
    assert pq.read_table(table / "curated").equals(curated_before)

    assert dg.materialize([image_embeddings], partition_key=batches[0], instance=instance,
                          resources=new_resources).success
    during = _spanning(instance, new_resources)
    assert during["scenarios"]["images_waiting_for_reembedding"] == 8
    assert during["curated_dataset"]["batches_waiting_for_reembedding"] == [batches[1]]
    assert len(pq.read_table(table / "scenarios")) == 10
