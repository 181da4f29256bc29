"""Hostile landing contents never block anything else, and transient failures are told apart from final ones.

A landing zone holding a FIFO, a socket, a device, broken and looping symlinks, names that are not UTF-8, a path
beyond PATH_MAX and a sparse 2 GB file is planned and ingested through Dagster: nothing hangs (pytest-timeout), every
entry gets exactly one outcome, memory stays bounded. S3 outages and 5xx answers are injected between boto3 and
moto's server by a loopback proxy: good images are deferred, not quarantined, and ingested by the next batch, once.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import tempfile
from collections import Counter
from pathlib import Path

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.ingest import checks
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.accounting import account_for_batch
from cv_dataops.ingest.landing import BatchLedger, BatchManifest
from cv_dataops.resources import CatalogResource, LandingResource
from cv_dataops_tests.conftest import encode, photo, write_files
from cv_dataops_tests.fault_proxy import FaultProxy

CHECKS = [checks.raw_images_schema, checks.raw_images_unique_image_id, checks.raw_images_accounted_for]
DEEP_KEY_PREFIX = "deep/"


def _deep_path(root: Path, levels: int = 24) -> None:
    """``deep/ddd.../ddd.../deep.jpg`` longer than PATH_MAX (4096), made with directory descriptors (openat), which
    no path-based call could do."""
    descriptor = os.open(root, os.O_RDONLY)
    try:
        for name in ["deep"] + ["d" * 200] * levels:
            os.mkdir(name, dir_fd=descriptor)
            inner = os.open(name, os.O_RDONLY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        handle = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
        os.write(handle, encode(photo(7), "JPEG"))
        os.close(handle)
    finally:
        os.close(descriptor)


def hostile_corpus(root: Path) -> dict[str, str]:
    """Write a landing zone of hostile entries beside two good images; return key -> expected outcome or reason
    (the deep path: its key prefix)."""
    write_files(root, {"good/a.jpg": encode(photo(1), "JPEG"), "good/b.png": encode(photo(2), "PNG")})
    os.mkfifo(root / "x.jpg")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(root / "socket.jpg"))
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("loop2.jpg", root / "loop1.jpg")
    os.symlink("loop1.jpg", root / "loop2.jpg")
    bad_name = os.fsencode(root) + b"/caf\xe9.jpg"  # latin-1 bytes: not UTF-8
    with open(bad_name, "wb") as handle:
        handle.write(encode(photo(3), "JPEG"))
    os.makedirs(os.fsencode(root) + b"/d\xff")
    with open(os.fsencode(root) + b"/d\xff/in.jpg", "wb") as handle:
        handle.write(encode(photo(4), "JPEG"))
    with open(root / "huge.jpg", "wb") as handle:
        handle.truncate(2 * 1024 ** 3)  # sparse: 2 GB listed, no disk used
    _deep_path(root)
    expected = {
        "good/a.jpg": "image", "good/b.png": "image", "x.jpg": "not_a_regular_file",
        "socket.jpg": "not_a_regular_file", "dangling.jpg": "broken_symlink", "loop.jpg": "broken_symlink",
        "loop1.jpg": "broken_symlink", "loop2.jpg": "broken_symlink", "caf%E9.jpg": "undecodable_name",
        "d%FF/in.jpg": "undecodable_name", "huge.jpg": "too_large", DEEP_KEY_PREFIX: "unlistable",
    }
    if os.geteuid() == 0:  # a device node needs root to make; /dev/null's numbers
        os.mknod(root / "device.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected["device.jpg"] = "not_a_regular_file"
    return expected


def _outcomes(catalog: Catalog, batch_id: str) -> dict[str, str]:
    """relative path -> outcome, with quarantined objects given by their reason."""
    reasons = {row["relative_path"]: row["reason"] for row in catalog.read("quarantine", [batch_id]).to_pylist()}
    return {row["relative_path"]: reasons.get(row["relative_path"], row["outcome"])
            for row in catalog.read("objects", [batch_id]).to_pylist()}


def _by_expected_key(found: dict[str, str]) -> dict[str, str]:
    """The deep path's entry under its prefix (its real key is thousands of characters long)."""
    return {(DEEP_KEY_PREFIX if key.startswith(DEEP_KEY_PREFIX) else key): value for key, value in found.items()}


def _materialize(instance, batch_id, catalog, landing):
    return dg.materialize([raw_images, *CHECKS], partition_key=batch_id, instance=instance,
                          resources={"catalog": catalog, "landing": landing}, raise_on_error=False)


def _plan(instance, ledger: BatchLedger, landing) -> list[str]:
    batch_ids = [b.batch_id for b in ledger.plan(landing)]
    instance.add_dynamic_partitions(batch_partitions.name, batch_ids)
    return batch_ids


def _checks_passed(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.mark.timeout(120)
def test_hostile_corpus_is_planned_and_ingested_with_one_outcome_each(tmp_path):
    expected = hostile_corpus(tmp_path / "landing")
    ledger = BatchLedger(LocalStorage(tmp_path / "data"))
    landing_storage = LocalStorage(tmp_path / "landing")
    (manifest,) = ledger.plan(landing_storage)
    assert _by_expected_key({o.key: o.refusal or "read" for o in manifest.objects}) == {
        k: ("read" if v in ("image", "too_large") else v) for k, v in expected.items()}
    assert BatchManifest.from_json(manifest.to_json()) == manifest  # every key stores as UTF-8 JSON
    raw = {o.key: o.raw_key for o in manifest.objects if o.raw_key}
    assert os.fsdecode(bytes.fromhex(raw["caf%E9.jpg"])) == os.fsdecode(b"caf\xe9.jpg")  # lossless
    assert ledger.plan(landing_storage) == []  # hostile entries have stable versions: planned once

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batch_partitions.name, [manifest.batch_id])
    catalog = CatalogResource(data_root=str(tmp_path / "data"))
    landing = LandingResource(uri=str(tmp_path / "landing"), labels="none", max_bytes=64 * 1024 ** 2)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = _materialize(instance, manifest.batch_id, catalog, landing)
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert result.success and all(_checks_passed(result).values()), _checks_passed(result)
    tables = Catalog(LocalStorage(tmp_path / "data"))
    assert _by_expected_key(_outcomes(tables, manifest.batch_id)) == expected
    assert account_for_batch(tables, manifest).passed
    assert peak_growth_mb < 300, f"peak memory grew by {peak_growth_mb:.0f} MB (the 2 GB file must not be read)"
    (materialization,) = result.asset_materializations_for_node("raw_images")
    assert materialization.metadata["images"].value == 2


@pytest.mark.timeout(60)
def test_a_fifo_swapped_in_after_listing_is_refused_without_blocking(tmp_path):
    write_files(tmp_path / "landing", {"x.jpg": encode(photo(1), "JPEG"), "ok.jpg": encode(photo(2), "JPEG")})
    ledger = BatchLedger(LocalStorage(tmp_path / "data"))
    instance = dg.DagsterInstance.ephemeral()
    (batch_id,) = _plan(instance, ledger, LocalStorage(tmp_path / "landing"))
    (tmp_path / "landing" / "x.jpg").unlink()
    os.mkfifo(tmp_path / "landing" / "x.jpg")
    result = _materialize(instance, batch_id, CatalogResource(data_root=str(tmp_path / "data")),
                          LandingResource(uri=str(tmp_path / "landing"), labels="none"))
    assert result.success
    assert _outcomes(Catalog(LocalStorage(tmp_path / "data")), batch_id) == {
        "ok.jpg": "image", "x.jpg": "not_a_regular_file"}


def _list_as_nobody(root: Path) -> list[dict]:
    """List ``root`` in a forked child that dropped root's privileges (root reads every folder whatever its mode)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            listed = [{"key": o.key, "refusal": o.refusal, "why": o.unsafe_reason} for o in LocalStorage(root).list()]
            os.write(writer, json.dumps(listed).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.timeout(60)
def test_a_folder_that_cannot_be_listed_is_an_entry_not_a_silent_skip():
    """Tests run as root, who may read a mode-000 folder: the listing then runs in a child that is user nobody.
    The folder lives under /tmp (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="cv-dataops-perm-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        write_files(base / "landing", {"ok.jpg": b"1", "locked/inside.jpg": b"2"})
        os.chmod(base / "landing", 0o755)
        os.chmod(base / "landing" / "ok.jpg", 0o644)
        os.chmod(base / "landing" / "locked", 0o000)
        if os.geteuid() == 0:
            listed = _list_as_nobody(base / "landing")
        else:
            listed = [{"key": o.key, "refusal": o.refusal, "why": o.unsafe_reason}
                      for o in LocalStorage(base / "landing").list()]
        by_key = {entry["key"]: entry for entry in listed}
        assert set(by_key) == {"ok.jpg", "locked/"}
        assert by_key["locked/"]["refusal"] == "unlistable" and "Permission denied" in by_key["locked/"]["why"]
    finally:
        os.chmod(base / "landing" / "locked", 0o755)
        import shutil

        shutil.rmtree(base)


@pytest.mark.timeout(120)
def test_a_file_gone_at_read_time_is_deferred_and_ingested_once_when_it_is_back(tmp_path):
    write_files(tmp_path / "landing", {"a.jpg": encode(photo(1), "JPEG"), "b.jpg": encode(photo(2), "JPEG")})
    ledger = BatchLedger(LocalStorage(tmp_path / "data"))
    landing_storage = LocalStorage(tmp_path / "landing")
    instance = dg.DagsterInstance.ephemeral()
    catalog = CatalogResource(data_root=str(tmp_path / "data"))
    landing = LandingResource(uri=str(tmp_path / "landing"), labels="none")
    (first,) = _plan(instance, ledger, landing_storage)
    os.rename(tmp_path / "landing" / "a.jpg", tmp_path / "a.jpg")  # gone for now (a sync tool moving it)
    assert _materialize(instance, first, catalog, landing).success
    tables = Catalog(LocalStorage(tmp_path / "data"))
    assert _outcomes(tables, first) == {"a.jpg": "deferred", "b.jpg": "image"}
    assert tables.read("quarantine").num_rows == 0
    note = f"batches/_deferred/{first}.json"
    assert account_for_batch(tables, ledger.manifest(first)).passed
    saved = tables.storage.read_bytes(note)
    tables.storage.delete(note)  # a deferred object no note names would never be retried: accounting says so
    assert account_for_batch(tables, ledger.manifest(first)).outcome_without_row == ["a.jpg"]
    tables.storage.write_bytes(note, saved)
    assert _plan(instance, ledger, landing_storage) == []  # not listed: nothing to retry yet
    os.rename(tmp_path / "a.jpg", tmp_path / "landing" / "a.jpg")  # back, the same version
    (second,) = _plan(instance, ledger, landing_storage)
    assert _materialize(instance, second, catalog, landing).success
    assert _outcomes(tables, second) == {"a.jpg": "image"}
    rerun = _materialize(instance, first, catalog, landing)  # the first batch again: a.jpg stays deferred
    assert rerun.success and all(_checks_passed(rerun).values())
    assert _outcomes(tables, first) == {"a.jpg": "deferred", "b.jpg": "image"}
    assert sorted(tables.read("images").column("relative_path").to_pylist()) == ["a.jpg", "b.jpg"]


def _s3_landing(bucket: str, count: int) -> None:
    client = boto3.client("s3")
    for index in range(count):
        client.put_object(Bucket=bucket, Key=f"in/cat/{index:02d}.jpg", Body=encode(photo(index), "JPEG"))
    client.put_object(Bucket=bucket, Key="in/junk.jpg", Body=b"not an image")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_an_s3_outage_defers_good_images_and_the_next_batch_ingests_them_once(tmp_path, s3_bucket, s3_endpoint,
                                                                             mode):
    """The endpoint answers 503 SlowDown (or refuses connections) for the whole run: the 12 good images are
    deferred, not quarantined; the final refusal (junk) stays final. Once it is back, the next planning makes a
    batch of the deferred images only, which ingests them; running the first batch again doubles nothing."""
    _s3_landing(s3_bucket, 12)
    proxy = FaultProxy(s3_endpoint)
    try:
        landing = LandingResource(uri=f"s3://{s3_bucket}/in", labels="imagefolder", read_attempts=2,
                                  s3=S3Resource(endpoint_url=proxy.url, max_attempts=1))
        catalog = CatalogResource(data_root=str(tmp_path / "data"))
        ledger, instance = catalog.ledger(), dg.DagsterInstance.ephemeral()
        (first,) = _plan(instance, ledger, landing.storage())
        proxy.outage(mode)
        # junk.jpg is read while the endpoint is down too: it is deferred, and refused only once it can be read
        result = _materialize(instance, first, catalog, landing)
        assert result.success and all(_checks_passed(result).values())
        tables = Catalog(catalog.storage())
        assert Counter(_outcomes(tables, first).values()) == {"deferred": 13}
        assert tables.read("quarantine", [first]).num_rows == 0
        (materialization,) = result.asset_materializations_for_node("raw_images")
        assert materialization.metadata["deferred"].value == 13

        proxy.heal()
        (second,) = _plan(instance, ledger, landing.storage())
        assert len(ledger.manifest(second).objects) == 13
        assert _materialize(instance, second, catalog, landing).success
        assert Counter(_outcomes(tables, second).values()) == {"image": 12, "not_an_image": 1}
        assert _plan(instance, ledger, landing.storage()) == []  # nothing left to retry

        rerun = _materialize(instance, first, catalog, landing)
        assert rerun.success and all(_checks_passed(rerun).values())
        assert Counter(_outcomes(tables, first).values()) == {"deferred": 13}
        assert tables.read("images").num_rows == 12
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_short_s3_blips_are_absorbed_by_retries(tmp_path, s3_bucket, s3_endpoint):
    """Some 503 answers and dropped connections mid-run: retried with backoff, every good image is ingested."""
    _s3_landing(s3_bucket, 12)
    proxy = FaultProxy(s3_endpoint)
    try:
        landing = LandingResource(uri=f"s3://{s3_bucket}/in", labels="imagefolder", read_attempts=4,
                                  s3=S3Resource(endpoint_url=proxy.url, max_attempts=1))
        catalog = CatalogResource(data_root=str(tmp_path / "data"))
        ledger, instance = catalog.ledger(), dg.DagsterInstance.ephemeral()
        (batch_id,) = _plan(instance, ledger, landing.storage())
        proxy.fail_next(3, "503")
        result = _materialize(instance, batch_id, catalog, landing)
        assert result.success
        outcomes = Counter(_outcomes(Catalog(catalog.storage()), batch_id).values())
        assert outcomes == {"image": 12, "not_an_image": 1}
        assert proxy.counts["503"] == 3
    finally:
        proxy.close()
