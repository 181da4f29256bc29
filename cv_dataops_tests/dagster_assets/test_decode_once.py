"""Each landed file is decoded once, at ingest: quality and embeddings read the batch's analysis cache, and give
exactly the same rows when the cache is gone and they fetch and decode the files themselves."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.embeddings.assets import image_embeddings
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.quality.assets import image_quality
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.images.analysis_cache import cache_key, read_analysis_cache
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import EmbeddingResource, build_resources
from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC, encode, photo, write_files


def _files() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6
    big = encode(photo(1, (1024, 768)), "JPEG", quality=90)
    return {
        **{f"photos/{i}.jpg": encode(photo(i, (800, 600)), "JPEG", quality=85) for i in range(2, 8)},
        "photos/big.jpg": big,
        "photos/rotated.jpg": encode(photo(9, (640, 480)), "JPEG", exif=exif),
        "other/gray.png": encode(photo(10, (300, 200)).convert("L"), "PNG"),
        "other/alpha.png": encode(photo(11, (200, 300)).convert("RGBA"), "PNG"),
        "other/gray16.png": encode(Image.fromarray((np.arange(96 * 64).reshape(64, 96) * 9).astype(np.uint16)),
                                   "PNG"),
        "bad/truncated.jpg": big[: len(big) // 2],
    }


def test_quality_and_embeddings_read_what_ingest_decoded_and_match_a_fresh_decode(tmp_path):
    write_files(tmp_path / "landing", _files())
    data = LocalStorage(tmp_path / "data")
    (batch,) = BatchLedger(data).plan(LocalStorage(tmp_path / "landing"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batch_partitions.name, [batch.batch_id])
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"))
    resources["embedding"] = EmbeddingResource(spec=dict(TINY_EMBEDDER_SPEC))

    def run(assets):
        result = dg.materialize(assets, partition_key=batch.batch_id, instance=instance, resources=resources)
        assert result.success
        return {e.asset_key.to_user_string(): e.materialization.metadata for e in
                result.get_asset_materialization_events()}

    first = run([raw_images, image_quality, image_embeddings])
    catalog = Catalog(data)
    images = catalog.read("images", [batch.batch_id]).to_pandas()
    assert len(images) == 11 and catalog.read("quarantine").to_pandas().reason.tolist() == ["truncated"]
    cached = read_analysis_cache(data, batch.batch_id)
    assert set(cached) == set(images.image_id)  # one analysis image per ingested image, none for the quarantined
    assert first["image_quality"]["decoded_at_ingest"].value == len(images)
    assert first["image_embeddings"]["decoded_at_ingest"].value == len(images)
    def quality_rows():  # in image order: the process pool returns rows as they complete
        frame = catalog.read("quality", [batch.batch_id]).to_pandas()
        return frame.sort_values("image_id").reset_index(drop=True)

    quality = quality_rows()
    vectors = catalog.read("embeddings", [batch.batch_id]).to_pandas()

    data.delete(cache_key(batch.batch_id))  # an older batch, or a backfill after the cache was removed
    again = run([image_quality, image_embeddings])
    assert again["image_quality"]["decoded_at_ingest"].value == 0
    assert again["image_embeddings"]["decoded_at_ingest"].value == 0
    pd.testing.assert_frame_equal(quality_rows(), quality)  # bit-identical from the cache and from the files
    fresh = catalog.read("embeddings", [batch.batch_id]).to_pandas()
    assert fresh.embedder_version.tolist() == vectors.embedder_version.tolist()
    np.testing.assert_array_equal(np.stack(fresh.vector), np.stack(vectors.vector))
