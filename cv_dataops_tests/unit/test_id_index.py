"""The image-id index: earlier batches' ids are found without reading their tables, and a missing or stale index
file is rebuilt from the batch's own `images` file."""

from __future__ import annotations

import os
from datetime import datetime

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.ingest.id_index import ImageIdIndex, batch_uniqueness
from cv_dataops.ingest.tables import IMAGES


def _images(batch_id: str, ids: list[str]):
    return IMAGES.from_rows({"image_id": i, "uri": f"/x/{i}", "batch_id": batch_id, "relative_path": i, "width": 8,
                             "height": 8, "format": "PNG", "mode": "RGB", "bytes": 1, "frames": 1,
                             "has_alpha": False, "ingested_at": datetime(2026, 1, 1)}
                            for i in ids)


def _catalog(tmp_path, batches: dict[str, list[str]], index: bool = True) -> Catalog:
    catalog = Catalog(LocalStorage(tmp_path))
    for batch_id, ids in batches.items():
        catalog.write(IMAGES, _images(batch_id, ids), batch_id)
        if index:
            ImageIdIndex(catalog).write(batch_id, ids)
    return catalog


def test_known_before_sees_only_earlier_batches(tmp_path):
    catalog = _catalog(tmp_path, {"0001": ["a" * 64, "b" * 64], "0002": ["c" * 64], "0003": ["d" * 64]})
    index = ImageIdIndex(catalog)
    assert index.known_before("0002", ["a" * 64, "c" * 64, "d" * 64, "e" * 64]) == {"a" * 64}
    assert index.known_before("0004", ["d" * 64, "e" * 64]) == {"d" * 64}
    assert index.known_before("0001", ["a" * 64]) == set()
    holders = index.holders(["c" * 64, "z"])
    assert holders.by_id == {"c" * 64: ["0002"]} and holders.ids_searched == 4


def test_uniqueness_reads_the_batch_and_the_other_batches_index(tmp_path):
    catalog = _catalog(tmp_path, {"0001": ["a" * 64, "b" * 64], "0002": ["b" * 64, "c" * 64, "c" * 64]})
    found = batch_uniqueness(catalog, "0002")
    assert found.repeated == ["b" * 64, "c" * 64]
    assert found.other_batches == {"b" * 64: ["0001"]}
    assert batch_uniqueness(catalog, "0001").repeated == ["b" * 64]


def test_a_catalog_without_index_or_with_a_stale_one_is_repaired_from_the_table(tmp_path):
    catalog = _catalog(tmp_path, {"0001": ["a" * 64], "0002": ["b" * 64]}, index=False)
    index = ImageIdIndex(catalog)
    assert index.known_before("0003", ["a" * 64, "b" * 64]) == {"a" * 64, "b" * 64}
    assert (tmp_path / "state/ingest/image_ids/0001.ids").exists()

    # the batch's images rewritten after its index file (a crash between the two writes): the table wins
    catalog.write(IMAGES, _images("0001", ["f" * 64]), "0001")
    stale = tmp_path / "state/ingest/image_ids/0001.ids"
    table = tmp_path / "catalog/images/0001.parquet"
    os.utime(stale, ns=(table.stat().st_mtime_ns - 10**9,) * 2)
    assert index.known_before("0003", ["a" * 64, "f" * 64]) == {"f" * 64}
    # a batch whose images file is gone holds nothing, whatever its old index file says
    catalog.delete(IMAGES, "0002")
    assert index.known_before("0003", ["b" * 64]) == set()


def test_the_index_works_on_s3(s3_bucket):
    from cv_dataops.core.storage import open_storage

    catalog = Catalog(open_storage(f"s3://{s3_bucket}/data"))
    catalog.write(IMAGES, _images("0001", ["a" * 64, "b" * 64]), "0001")  # a catalog older than the index
    index = ImageIdIndex(catalog)
    assert index.known_before("0002", ["b" * 64, "c" * 64]) == {"b" * 64}
    assert catalog.storage.exists(index.key("0001"))  # rebuilt from the table once, then read
    index.write("0002", ["c" * 64])
    catalog.write(IMAGES, _images("0002", ["c" * 64]), "0002")
    assert batch_uniqueness(catalog, "0002").repeated == []
