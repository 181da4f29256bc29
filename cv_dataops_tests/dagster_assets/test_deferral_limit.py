"""Transient failures do not retry forever: an object every batch fails to read for a reason that may pass is
quarantined `unreadable_after_retries` (naming the last error) after the configured number of batches, nothing is
lost, every batch still accounts for each of its objects once, and `status` shows what waits for a retry."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from cv_dataops.config import Settings
from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.ingest import checks
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.accounting import account_for_batch
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import CatalogResource, LandingResource
from cv_dataops.runner import deferred_counts, status_of
from cv_dataops_tests.conftest import encode, photo, write_files

CHECKS = [checks.raw_images_schema, checks.raw_images_unique_image_id, checks.raw_images_accounted_for]


def _outcomes(catalog: Catalog, batch_id: str) -> dict[str, str]:
    reasons = {row["relative_path"]: row["reason"] for row in catalog.read("quarantine", [batch_id]).to_pylist()}
    return {row["relative_path"]: reasons.get(row["relative_path"], row["outcome"])
            for row in catalog.read("objects", [batch_id]).to_pylist()}


@pytest.mark.timeout(180)
def test_an_object_never_readable_is_quarantined_after_the_retry_limit(tmp_path):
    landing_dir, data = tmp_path / "landing", tmp_path / "data"
    write_files(landing_dir, {"a.jpg": encode(photo(1), "JPEG"), "b.jpg": encode(photo(2), "JPEG")})
    instance = dg.DagsterInstance.ephemeral()
    catalog = CatalogResource(data_root=str(data))
    landing = LandingResource(uri=str(landing_dir), labels="none", min_age_seconds=0, read_backoff_seconds=0,
                              retry_batches=3, retry_pause_seconds=0)
    ledger = BatchLedger(LocalStorage(data))
    tables = Catalog(LocalStorage(data))

    def plan() -> list[str]:
        batch_ids = [b.batch_id for b in landing.plan(ledger)]
        instance.add_dynamic_partitions(batch_partitions.name, batch_ids)
        return batch_ids

    def ingest(batch_id: str) -> None:
        result = dg.materialize([raw_images, *CHECKS], partition_key=batch_id, instance=instance,
                                resources={"catalog": catalog, "landing": landing}, raise_on_error=False)
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())  # accounting among them

    batches = plan()
    for attempt in range(3):  # listed at planning, gone when read (a sync tool moving it), back afterwards
        os.rename(landing_dir / "a.jpg", tmp_path / "a.jpg")
        ingest(batches[-1])
        os.rename(tmp_path / "a.jpg", landing_dir / "a.jpg")
        assert _outcomes(tables, batches[-1])["a.jpg"] == "deferred"
        assert deferred_counts(ledger) == {batches[-1]: 1}
        if attempt == 0:  # status shows it per batch, and in one line
            status = status_of(instance, landing=str(landing_dir), data_root=str(data),
                               settings=Settings.build(landing=landing_dir, data_root=data))
            assert status.batches[0].deferred == 1
            assert status.lines()[0].startswith(f"batch {batches[0]}: UNFINISHED: raw_images: done")  # only ingested
            assert status.lines()[0].endswith("; 1 deferred (awaiting a retry)")
            assert status.deferred_line() == f"deferred: 1 object(s) awaiting a retry by a later run " \
                                             f"(batch {batches[0]}: 1)"
        batches += plan()
        assert len(batches) == attempt + 2
    (final,) = [o for o in ledger.manifest(batches[-1]).objects]
    assert final.key == "a.jpg" and final.refusal == "unreadable_after_retries"
    ingest(batches[-1])  # readable by now, but it was given up: quarantined unread, with the last error
    (row,) = tables.read("quarantine", [batches[-1]]).to_pylist()
    assert row["relative_path"] == "a.jpg" and row["reason"] == "unreadable_after_retries"
    assert "3 batches" in row["detail"] and "last error: FileNotFoundError" in row["detail"]
    assert deferred_counts(ledger) == {} and plan() == []  # retried no more

    # nothing lost or doubled: b is an image, a has one final outcome; every batch accounts for its objects
    assert tables.read("images").column("relative_path").to_pylist() == ["b.jpg"]
    assert [_outcomes(tables, b).get("a.jpg") for b in batches] == ["deferred"] * 3 + ["unreadable_after_retries"]
    for batch_id in batches:
        assert account_for_batch(tables, ledger.manifest(batch_id)).passed
    ingest(batches[0])  # the first batch again: a stays deferred there (handed over), nothing doubles
    assert _outcomes(tables, batches[0]) == {"a.jpg": "deferred", "b.jpg": "image"}
    assert tables.read("quarantine").num_rows == 1
