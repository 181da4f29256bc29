"""Batching: every landed object version is assigned to exactly one batch, even across crashes."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from cv_dataops.core.storage import (
    LocalStorage,
    S3ClientSettings,
    StorageError,
    open_storage,
)
from cv_dataops.ingest.landing import INDEX_KEY, BatchLedger, BatchManifest
from cv_dataops_tests.conftest import encode, photo, write_files
from cv_dataops_tests.fault_proxy import FaultProxy


def test_new_objects_become_one_batch_then_nothing(tmp_path):
    write_files(tmp_path / "in", {"a.jpg": b"1", "b/c.jpg": b"2"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    (batch,) = ledger.plan(landing)
    assert sorted(o.key for o in batch.objects) == ["a.jpg", "b/c.jpg"]
    assert ledger.plan(landing) == []
    assert ledger.batch_ids() == [batch.batch_id]
    assert ledger.manifest(batch.batch_id) == batch


def test_only_newly_landed_and_replaced_objects_form_the_next_batch(tmp_path):
    write_files(tmp_path / "in", {"a.jpg": b"1", "b.jpg": b"2"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    first = ledger.plan(landing, now=datetime(2026, 1, 1, tzinfo=UTC))[0]
    write_files(tmp_path / "in", {"c.jpg": b"3", "a.jpg": b"replaced"})
    second = ledger.plan(landing, now=datetime(2026, 1, 2, tzinfo=UTC))[0]
    assert sorted(o.key for o in second.objects) == ["a.jpg", "c.jpg"]
    assert first.batch_id < second.batch_id  # batch ids sort by landing time


def test_large_landings_are_split_and_young_files_wait(tmp_path):
    write_files(tmp_path / "in", {f"{i:03d}.jpg": b"x" for i in range(25)})
    old = time.time() - 3600
    for path in (tmp_path / "in").iterdir():
        os.utime(path, (old, old))
    write_files(tmp_path / "in", {"still-copying.jpg": b"partial"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    batches = ledger.plan(landing, min_age_seconds=60, max_batch_size=10)
    assert [len(b.objects) for b in batches] == [10, 10, 5]
    assert len({b.batch_id for b in batches}) == 3
    assert "still-copying.jpg" not in {o.key for b in batches for o in b.objects}
    (late,) = ledger.plan(landing, min_age_seconds=0)
    assert [o.key for o in late.objects] == ["still-copying.jpg"]


def test_a_crash_between_manifest_and_index_assigns_nothing_twice(tmp_path):
    write_files(tmp_path / "in", {"a.jpg": b"1"})
    root = LocalStorage(tmp_path / "root")
    ledger, landing = BatchLedger(root), LocalStorage(tmp_path / "in")
    (batch,) = ledger.plan(landing)
    root.delete(INDEX_KEY)  # as if the process died right after writing the manifest
    write_files(tmp_path / "in", {"b.jpg": b"2"})
    (second,) = ledger.plan(landing)
    assert [o.key for o in second.objects] == ["b.jpg"]
    assert root.exists(INDEX_KEY)


def test_manifest_round_trips_through_json(tmp_path):
    write_files(tmp_path / "in", {"ü b.jpg": b"1"})
    (batch,) = BatchLedger(LocalStorage(tmp_path / "root")).plan(LocalStorage(tmp_path / "in"))
    assert BatchManifest.from_json(batch.to_json()) == batch


def test_batch_ids_sort_in_creation_order_even_within_one_second(tmp_path):
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    made = []
    for index in range(12):
        write_files(tmp_path / "in", {f"{index}.jpg": bytes([index])})
        made += [b.batch_id for b in ledger.plan(landing, now=now)]
    assert made == sorted(made) == ledger.batch_ids() and len(set(made)) == 12


def _defer(ledger, batch, keys, now):
    ledger.record_deferred(batch.batch_id, {key: "S3 answered 503 SlowDown" for key in keys}, now=now)


def test_deferred_objects_are_assigned_again_once_and_handed_over(tmp_path):
    """A deferred object still listed goes into the next batch (once); the batch that deferred it knows it was
    handed over, so ingesting that batch again cannot make it an image twice."""
    write_files(tmp_path / "in", {"a.jpg": b"1", "b.jpg": b"2"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    now = datetime.now(UTC)
    (first,) = ledger.plan(landing, now=now)
    _defer(ledger, first, ["a.jpg"], now)
    (second,) = ledger.plan(landing, now=now)
    assert [o.key for o in second.objects] == ["a.jpg"]
    assert ledger.plan(landing, now=now) == []  # assigned again once, not on every planning
    assert ledger.handed_over(first) == {"a.jpg": second.batch_id} and ledger.handed_over(second) == {}
    _defer(ledger, second, ["a.jpg"], now)  # deferred a second time: the next try waits a minute
    assert ledger.plan(landing, now=now) == []
    (third,) = ledger.plan(landing, now=now + timedelta(seconds=61))
    assert [o.key for o in third.objects] == ["a.jpg"]
    ledger.record_deferred(third.batch_id, {})  # read fine this time: nothing left to retry
    assert ledger.plan(landing, now=now + timedelta(days=1)) == []


def test_a_deferred_object_that_vanished_is_only_assigned_again_when_it_is_back(tmp_path):
    write_files(tmp_path / "in", {"a.jpg": b"1"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    (first,) = ledger.plan(landing)
    stat = os.stat(tmp_path / "in" / "a.jpg")
    os.rename(tmp_path / "in" / "a.jpg", tmp_path / "away.jpg")
    _defer(ledger, first, ["a.jpg"], datetime.now(UTC))
    assert ledger.plan(landing) == []
    os.rename(tmp_path / "away.jpg", tmp_path / "in" / "a.jpg")  # back, same version
    assert os.stat(tmp_path / "in" / "a.jpg").st_mtime_ns == stat.st_mtime_ns
    (again,) = ledger.plan(landing)
    assert [o.key for o in again.objects] == ["a.jpg"] and again.objects[0].version == first.objects[0].version


def test_a_deferred_object_is_quarantined_after_the_retry_limit_naming_the_last_error(tmp_path):
    """Each batch that defers an object counts as one attempt; after ``max_attempts`` the next planning assigns
    it as a refusal its batch quarantines unread, and it is retried no more."""
    write_files(tmp_path / "in", {"a.jpg": b"1", "b.jpg": b"2"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    now = datetime.now(UTC)
    batches = ledger.plan(landing, now=now, max_attempts=3, retry_pause_seconds=0)
    for attempt in range(1, 4):
        ledger.record_deferred(batches[-1].batch_id, {"a.jpg": f"S3 answered 503 SlowDown (try {attempt})"},
                               now=now)
        assert ledger.awaiting_retry() == {batches[-1].batch_id: {"a.jpg": f"S3 answered 503 SlowDown (try {attempt})"}}
        batches += ledger.plan(landing, now=now, max_attempts=3, retry_pause_seconds=0)
        assert [o.key for o in batches[-1].objects] == ["a.jpg"] and len(batches) == attempt + 1
    final = batches[-1].objects[0]
    assert final.refusal == "unreadable_after_retries" and final.version == batches[0].objects[0].version
    assert "3 batches" in final.unsafe_reason and "last error: S3 answered 503 SlowDown (try 3)" in final.unsafe_reason
    assert ledger.manifest(batches[-1].batch_id) == batches[-1]  # the refusal is in the manifest
    assert ledger.awaiting_retry() == {}  # handed over to the batch that quarantines it
    assert ledger.plan(landing, now=now + timedelta(days=1), max_attempts=3) == []  # retried no more


def test_the_retry_pause_is_a_parameter(tmp_path):
    write_files(tmp_path / "in", {"a.jpg": b"1"})
    ledger, landing = BatchLedger(LocalStorage(tmp_path / "root")), LocalStorage(tmp_path / "in")
    now = datetime.now(UTC)
    (first,) = ledger.plan(landing, now=now)
    _defer(ledger, first, ["a.jpg"], now)
    (second,) = ledger.plan(landing, now=now)  # the first retry never waits
    _defer(ledger, second, ["a.jpg"], now)
    assert ledger.plan(landing, now=now + timedelta(seconds=9), retry_pause_seconds=10) == []
    (third,) = ledger.plan(landing, now=now + timedelta(seconds=10), retry_pause_seconds=10)
    assert [o.key for o in third.objects] == ["a.jpg"]


def test_a_folder_that_vanishes_while_listed_is_an_entry_not_silence(tmp_path):
    """os.walk lists a folder's entries before it enters its subfolders; one removed in between (here: while the
    listing generator waits after the root's first file) is reported, so its contents are known to be missing."""
    import shutil

    write_files(tmp_path / "in", {"a.jpg": encode(photo(1), "JPEG"), "gone/b.jpg": b"2", "gone/c/d.jpg": b"3"})

    class VanishingFolder(LocalStorage):
        def list(self, prefix=""):
            for position, info in enumerate(super().list(prefix)):
                yield info
                if position == 0:
                    shutil.rmtree(self.root / "gone")

    ledger = BatchLedger(LocalStorage(tmp_path / "root"))
    (batch,) = ledger.plan(VanishingFolder(tmp_path / "in"))
    by_key = {o.key: o for o in batch.objects}
    assert sorted(by_key) == ["a.jpg", "gone/"]
    assert by_key["gone/"].refusal == "unlistable" and "vanished while" in by_key["gone/"].unsafe_reason

    from cv_dataops.ingest.batch import ingest_batch

    result = ingest_batch(batch, LocalStorage(tmp_path / "in"))  # one outcome each, the folder with its reason
    assert [(r["relative_path"], r["reason"]) for r in result.quarantine.to_pylist()] == [("gone/", "unlistable")]
    assert sorted(result.objects.column("outcome").to_pylist()) == ["image", "quarantined"]
    write_files(tmp_path / "in", {"gone/b.jpg": b"2"})  # back: what it holds is listed now
    (later,) = ledger.plan(LocalStorage(tmp_path / "in"))
    assert [o.key for o in later.objects] == ["gone/b.jpg"]


def test_an_s3_listing_that_fails_plans_nothing_and_says_why(tmp_path, s3_bucket, s3_endpoint):
    """No batch is made from a partial or failed listing: planning raises a one-line error naming S3, writes no
    manifest, and the next planning once S3 answers takes everything in."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for index in range(3):
        client.put_object(Bucket=s3_bucket, Key=f"in/{index}.jpg", Body=bytes([index]))
    proxy = FaultProxy(s3_endpoint)
    try:
        landing = open_storage(f"s3://{s3_bucket}/in", S3ClientSettings(endpoint_url=proxy.url, max_attempts=1).client)
        ledger = BatchLedger(LocalStorage(tmp_path / "root"))
        proxy.outage("503")
        with pytest.raises(StorageError, match="S3 answered 503"):
            ledger.plan(landing)
        assert ledger.batch_ids() == []
        proxy.heal()
        (batch,) = ledger.plan(landing)
        assert sorted(o.key for o in batch.objects) == ["0.jpg", "1.jpg", "2.jpg"]
    finally:
        proxy.close()
