"""Content is checked where it is used: a file overwritten or deleted after ingest is never measured, embedded or
exported as the image its id names; the stage leaves it out with the reason, and the new bytes are a new image."""

from __future__ import annotations

import hashlib
import pickle
import shutil

import dagster as dg
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage, UriReader
from cv_dataops.defs.embeddings.assets import image_embeddings
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.quality.assets import image_quality
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.images.verified import ContentChanged, VerifiedReader, read_verified
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import EmbeddingResource, QualityResource, build_resources
from cv_dataops_tests.conftest import encode, photo, write_files


def test_read_verified_passes_the_same_bytes_and_refuses_changed_or_vanished_ones(tmp_path):
    path = tmp_path / "a.png"
    data = encode(photo(1), "PNG")
    path.write_bytes(data)
    image_id = hashlib.sha256(data).hexdigest()
    assert read_verified(str(path), image_id) == data
    path.write_bytes(encode(photo(2), "PNG"))
    with pytest.raises(ContentChanged, match=r"changed since ingest: .*a.png now holds other bytes") as changed:
        read_verified(str(path), image_id)
    assert not changed.value.vanished and changed.value.now == hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    with pytest.raises(ContentChanged, match="no longer exists") as vanished:
        read_verified(str(path), image_id)
    assert vanished.value.vanished
    copy = pickle.loads(pickle.dumps(vanished.value))  # crosses to and from quality's worker processes
    assert (type(copy), str(copy), copy.uri) == (ContentChanged, str(vanished.value), str(path))
    reader = pickle.loads(pickle.dumps(VerifiedReader(UriReader(), {str(path): image_id})))
    with pytest.raises(ContentChanged):
        reader(str(path))


def _ingest_then_change(tmp_path, instance):
    """Three images ingested; then a.jpg is overwritten with other bytes and b.jpg deleted."""
    files = {"a.jpg": encode(photo(1), "JPEG"), "b.jpg": encode(photo(2), "JPEG"), "c.jpg": encode(photo(3), "JPEG")}
    write_files(tmp_path / "landing", files)
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "data")), LocalStorage(tmp_path / "landing")
    (batch,) = ledger.plan(landing)
    instance.add_dynamic_partitions(batch_partitions.name, [batch.batch_id])
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"))
    assert dg.materialize([raw_images], partition_key=batch.batch_id, instance=instance, resources=resources).success
    ids = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (tmp_path / "landing" / "a.jpg").write_bytes(encode(photo(9), "JPEG"))
    (tmp_path / "landing" / "b.jpg").unlink()
    shutil.rmtree(tmp_path / "data" / "cache", ignore_errors=True)  # the analysis cache absent: files are re-read
    return ledger, landing, batch.batch_id, ids, resources


@pytest.mark.parametrize("workers", [1, 2])
def test_an_overwritten_file_is_not_measured_as_the_old_image(tmp_path, workers):
    instance = dg.DagsterInstance.ephemeral()
    ledger, landing, batch_id, ids, resources = _ingest_then_change(tmp_path, instance)
    resources["quality"] = QualityResource(workers=workers)
    result = dg.materialize([image_quality], partition_key=batch_id, instance=instance, resources=resources,
                            selection=[image_quality.key])
    assert result.success
    quality = Catalog(LocalStorage(tmp_path / "data")).read("quality", [batch_id]).to_pandas()
    assert list(quality.image_id) == [ids["c.jpg"]]  # neither the new bytes of a.jpg nor the missing b.jpg
    (materialization,) = result.asset_materializations_for_node("image_quality")
    unmeasured = materialization.metadata["unmeasured"].value
    assert materialization.metadata["content_changed"].value == 2
    assert "now holds other bytes" in unmeasured[ids["a.jpg"]] and "no longer exists" in unmeasured[ids["b.jpg"]]
    # the landing planner sees the overwritten file as a new object version: its new bytes become a new image
    (later,) = ledger.plan(landing)
    assert [info.key for info in later.objects] == ["a.jpg"]


def test_an_overwritten_file_is_not_embedded_as_the_old_image(tmp_path, tiny_embedder_spec):
    instance = dg.DagsterInstance.ephemeral()
    _, _, batch_id, ids, resources = _ingest_then_change(tmp_path, instance)
    resources["embedding"] = EmbeddingResource(spec=tiny_embedder_spec)
    result = dg.materialize([image_embeddings], partition_key=batch_id, instance=instance, resources=resources)
    assert result.success
    embeddings = Catalog(LocalStorage(tmp_path / "data")).read("embeddings", [batch_id]).to_pandas()
    assert list(embeddings.image_id) == [ids["c.jpg"]]
    (materialization,) = result.asset_materializations_for_node("image_embeddings")
    assert set(materialization.metadata["content_changed"].value) == {ids["a.jpg"], ids["b.jpg"]}
