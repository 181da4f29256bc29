"""The storage abstraction behaves the same on a folder and on a real S3 API."""

from __future__ import annotations

import os
import stat
import threading

import boto3
import pytest

from cv_dataops.core.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    UnsafeKeyError,
    open_storage,
    unsafe_key_reason,
)


def test_write_read_list_delete(storage):
    storage.write_bytes("a/b c/ünï.bin", b"one")
    storage.write_bytes("top.txt", b"two")
    assert storage.read_bytes("a/b c/ünï.bin") == b"one"
    listed = {info.key: info for info in storage.list()}
    assert set(listed) == {"a/b c/ünï.bin", "top.txt"}
    assert listed["top.txt"].size == 3 and listed["top.txt"].unsafe_reason is None
    assert {info.key for info in storage.list("a/")} == {"a/b c/ünï.bin"}
    assert storage.exists("top.txt") and not storage.exists("missing")
    storage.delete("top.txt")
    assert not storage.exists("top.txt")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("top.txt")


def test_replacing_an_object_changes_its_version(storage):
    storage.write_bytes("x.bin", b"first")
    before = next(iter(storage.list())).version
    storage.write_bytes("x.bin", b"second, longer")
    after = next(iter(storage.list())).version
    assert before != after and storage.read_bytes("x.bin") == b"second, longer"


def test_writes_leave_no_temporary_objects(storage):
    for index in range(5):
        storage.write_bytes("t.bin", bytes([index]) * 1000)
    assert [info.key for info in storage.list()] == ["t.bin"]


def test_a_tree_is_published_whole_and_replaces_the_one_before(storage):
    with storage.tree_writer("snap/imagefolder") as write:
        write("train/cat/a.jpg", b"a")
        write("val/dog/b.jpg", b"b")
    assert {info.key for info in storage.list()} == {"snap/imagefolder/train/cat/a.jpg",
                                                     "snap/imagefolder/val/dog/b.jpg"}
    with pytest.raises(RuntimeError, match="stopped"), storage.tree_writer("snap/imagefolder") as write:
        write("train/cat/c.jpg", b"c")
        raise RuntimeError("stopped")
    if isinstance(storage, LocalStorage):  # staged: nothing of a tree that failed is published
        assert {info.key for info in storage.list()} == {"snap/imagefolder/train/cat/a.jpg",
                                                         "snap/imagefolder/val/dog/b.jpg"}
        assert [p.name for p in storage.root.joinpath("snap").iterdir()] == ["imagefolder"]
    with storage.tree_writer("snap/imagefolder") as write:
        write("test/cat/d.jpg", b"d")
    expected = {"snap/imagefolder/test/cat/d.jpg"}
    if isinstance(storage, S3Storage):  # objects, one at a time: earlier ones stay unless deleted
        expected |= {"snap/imagefolder/train/cat/a.jpg", "snap/imagefolder/val/dog/b.jpg",
                     "snap/imagefolder/train/cat/c.jpg"}
    assert {info.key for info in storage.list()} == expected
    assert storage.read_bytes("snap/imagefolder/test/cat/d.jpg") == b"d"
    with pytest.raises(UnsafeKeyError), storage.tree_writer("snap/t") as write:
        write("../escape.jpg", b"x")


def test_a_staged_tree_honours_the_umask_and_is_never_listed_half_written(tmp_path):
    previous = os.umask(0o022)
    try:
        storage = LocalStorage(tmp_path / "root")
        with storage.tree_writer("s/imagefolder") as write:
            write("train/cat/a.jpg", b"a")
            assert list(storage.list()) == []  # still staged
    finally:
        os.umask(previous)
    # read-only: a tree's files may be hard links shared with other trees, so none may change in place
    assert stat.S_IMODE(os.stat(storage.local_path("s/imagefolder/train/cat/a.jpg")).st_mode) == 0o444
    for folder in ("s/imagefolder", "s/imagefolder/train", "s/imagefolder/train/cat"):
        assert stat.S_IMODE(os.stat(storage.local_path(folder)).st_mode) == 0o755, folder


def test_a_tree_links_files_of_another_tree_instead_of_copying_them(storage):
    with storage.tree_writer("one/imagefolder") as write:
        write("train/cat/a.jpg", b"a")
        write("val/dog/b.jpg", b"b")
    storage.write_bytes("outside.jpg", b"o")
    with storage.tree_writer("two/imagefolder") as writer:
        assert writer.link("train/cat/a.jpg", "one/imagefolder/train/cat/a.jpg")
        assert not writer.link("val/dog/c.jpg", "one/imagefolder/val/dog/c.jpg")  # no such file: caller writes
        writer("val/dog/c.jpg", b"c")
    assert storage.read_bytes("two/imagefolder/train/cat/a.jpg") == b"a"
    assert {info.key for info in storage.list("two/")} == {"two/imagefolder/train/cat/a.jpg",
                                                          "two/imagefolder/val/dog/c.jpg"}
    if isinstance(storage, LocalStorage):  # the same file, not a copy: one inode, two names
        first, second = (os.stat(storage.local_path(f"{tree}/imagefolder/train/cat/a.jpg")) for tree in ("one", "two"))
        assert first.st_ino == second.st_ino and first.st_nlink == 2
    assert storage.delete_tree("one/imagefolder") == 2
    assert {info.key for info in storage.list()} == {"outside.jpg", "two/imagefolder/train/cat/a.jpg",
                                                     "two/imagefolder/val/dog/c.jpg"}
    assert storage.read_bytes("two/imagefolder/train/cat/a.jpg") == b"a"  # the other name keeps the file
    assert storage.delete_tree("one/imagefolder") == 0


def test_a_local_tree_copies_writable_files_and_removes_trees_holding_links_to_folders(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.write_bytes("old/imagefolder/a.jpg", b"a")  # written 0644, as trees were before they were read-only
    with storage.tree_writer("new/imagefolder") as writer:
        assert not writer.link("a.jpg", "old/imagefolder/a.jpg")  # it could change under the new tree: copy
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_bytes(b"k")
    os.symlink(tmp_path / "elsewhere", storage.local_path("old/imagefolder/linked"))
    assert storage.delete_tree("old/imagefolder") == 2
    assert not storage.local_path("old/imagefolder").exists() and not list(storage.list("old/"))
    assert [p.name for p in storage.local_path("old").iterdir()] == []  # nothing hidden left behind
    assert (tmp_path / "elsewhere" / "keep.txt").read_bytes() == b"k"  # a symlink is removed, never followed


def test_a_local_tree_never_links_through_a_symlink_or_from_outside_the_root(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"secret")
    storage = LocalStorage(tmp_path / "root")
    with storage.tree_writer("one/imagefolder") as write:
        write("real.jpg", b"r")
    os.symlink(tmp_path / "secret.txt", storage.local_path("one/imagefolder/link.jpg"))
    with storage.tree_writer("two/imagefolder") as writer:
        assert not writer.link("a.jpg", "one/imagefolder/link.jpg")
        assert writer.link("b.jpg", "one/imagefolder/real.jpg")
        with pytest.raises(UnsafeKeyError):
            writer.link("c.jpg", "../secret.txt")
    assert {info.key for info in storage.list("two/")} == {"two/imagefolder/b.jpg"}


def test_create_only_if_absent_lets_one_writer_win(storage):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(lambda n: storage.create_bytes("models/m.bin", f"model {n}".encode()), range(8)))
    assert created.count(True) == 1  # exactly one writer created it; the others were told it existed
    winner = created.index(True)
    assert storage.read_bytes("models/m.bin") == f"model {winner}".encode()
    assert storage.create_bytes("models/m.bin", b"late") is False
    assert storage.read_bytes("models/m.bin") == f"model {winner}".encode()
    assert [o.key for o in storage.list()] == ["models/m.bin"]  # no temporary object left behind


def test_keys_that_escape_the_root_are_refused(storage):
    for key in ("../outside", "a/../../b", "/etc/passwd"):
        with pytest.raises(UnsafeKeyError):
            storage.write_bytes(key, b"no")
        with pytest.raises(UnsafeKeyError):
            storage.read_bytes(key)


def test_child_storage_is_rooted_below(storage):
    child = storage.child("sub")
    child.write_bytes("k", b"v")
    assert storage.read_bytes("sub/k") == b"v"
    assert child.uri_of("k") == storage.uri_of("sub/k")


def test_concurrent_readers_never_see_a_partial_object(tmp_path):
    storage = LocalStorage(tmp_path)
    small, large = b"a" * 10, b"b" * 5_000_000
    storage.write_bytes("obj", small)
    seen, stop = set(), threading.Event()

    def read_loop():
        while not stop.is_set():
            seen.add(len(storage.read_bytes("obj")))

    reader = threading.Thread(target=read_loop)
    reader.start()
    for _ in range(20):
        storage.write_bytes("obj", large)
        storage.write_bytes("obj", small)
    stop.set()
    reader.join()
    assert seen <= {len(small), len(large)}


def test_local_symlinks_out_of_the_root_are_listed_as_unsafe(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    root = tmp_path / "landing"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"fine")
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    os.symlink(outside, root / "linked_dir")
    os.symlink(root / "ok.jpg", root / "inside_link.jpg")
    storage = LocalStorage(root)
    listed = {info.key: info for info in storage.list()}
    assert listed["link.jpg"].unsafe_reason and "outside" in listed["link.jpg"].unsafe_reason
    assert listed["linked_dir"].unsafe_reason
    assert listed["ok.jpg"].unsafe_reason is None and listed["inside_link.jpg"].unsafe_reason is None
    with pytest.raises(UnsafeKeyError):
        storage.read_bytes("link.jpg")


def test_s3_keys_with_dot_dot_are_listed_as_unsafe(s3_bucket):
    client = boto3.client("s3")
    client.put_object(Bucket=s3_bucket, Key="land/../escape.jpg", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="land/good.jpg", Body=b"y")
    client.put_object(Bucket=s3_bucket, Key="land/folder/", Body=b"")
    listed = {info.key: info for info in open_storage(f"s3://{s3_bucket}/land").list()}
    assert set(listed) == {"../escape.jpg", "good.jpg"}
    assert listed["../escape.jpg"].unsafe_reason == "key contains '..'"
    assert listed["good.jpg"].version  # the ETag


def test_missing_folder_and_bucket_give_clear_errors(tmp_path, s3_endpoint):
    with pytest.raises(StorageError, match="folder does not exist"):
        LocalStorage(tmp_path / "nope").ensure_exists()
    with pytest.raises(StorageError, match="bucket does not exist"):
        open_storage("s3://no-such-bucket-here/x").ensure_exists()


def test_unreachable_endpoint_is_a_storage_error():
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="a",
                          aws_secret_access_key="b", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(StorageError, match="cannot reach S3"):
        S3Storage("s3://bucket/prefix", client).ensure_exists()


def test_unsafe_key_reasons():
    assert unsafe_key_reason("a/b.jpg") is None
    assert unsafe_key_reason("") and unsafe_key_reason("a\x00b") and unsafe_key_reason("C:/x")
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_storage("gs://bucket/x")


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, folder_mode):
    """As open() and mkdir() would: a training job running as another user can read a snapshot under umask 022."""
    previous = os.umask(umask)
    try:
        storage = LocalStorage(tmp_path / "root")
        storage.write_bytes("snapshots/v1/manifest.json", b"{}")
        assert storage.create_bytes("models/model.npz", b"weights")
    finally:
        os.umask(previous)
    for key in ("snapshots/v1/manifest.json", "models/model.npz"):
        assert stat.S_IMODE(os.stat(storage.local_path(key)).st_mode) == file_mode, key
    for folder in ("root", "root/snapshots", "root/snapshots/v1", "root/models"):
        assert stat.S_IMODE(os.stat(tmp_path / folder).st_mode) == folder_mode, folder


def test_uri_reader_reads_local_and_s3_with_its_own_settings_in_worker_processes(tmp_path, s3_bucket, s3_endpoint,
                                                                              monkeypatch):
    """Image bytes go through the configured S3 client (not one built from the environment), also in workers."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from cv_dataops.core.storage import S3ClientSettings, UriReader

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="in/a.bin", Body=b"remote")
    (tmp_path / "b.bin").write_bytes(b"local")
    settings = S3ClientSettings(endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                                aws_secret_access_key="testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the environment points nowhere
    reader = UriReader(settings)
    uris = [f"s3://{s3_bucket}/in/a.bin", str(tmp_path / "b.bin")]
    assert [reader(uri) for uri in uris] == [b"remote", b"local"]
    assert pickle.loads(pickle.dumps(reader)).s3 == settings  # settings travel, the client does not
    for method in ("fork", "spawn"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
            assert list(pool.map(reader, uris)) == [b"remote", b"local"], method


def test_catalog_resource_reads_image_bytes_through_its_s3_resource(s3_bucket, s3_endpoint, monkeypatch):
    from dagster_aws.s3 import S3Resource

    from cv_dataops.resources import CatalogResource

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="landing/x.jpg", Body=b"bytes")
    resource = CatalogResource(data_root=f"s3://{s3_bucket}/root", s3=S3Resource(endpoint_url=s3_endpoint))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert resource.uri_reader()(f"s3://{s3_bucket}/landing/x.jpg") == b"bytes"
    resource.storage().write_bytes("t.txt", b"table")
    assert resource.uri_reader()(f"s3://{s3_bucket}/root/t.txt") == b"table"


def test_quality_workers_read_through_the_configured_reader(s3_bucket, s3_endpoint, monkeypatch):
    """The quality process pool reads image bytes with the catalog's reader, not a client from the environment."""
    from cv_dataops.core.storage import S3ClientSettings, UriReader
    from cv_dataops.quality.measure import measure_stream
    from cv_dataops_tests.conftest import encode, photo

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="in/a.jpg", Body=encode(photo(3), "JPEG"))
    reader = UriReader(S3ClientSettings(endpoint_url=s3_endpoint, region_name="us-east-1",
                                        aws_access_key_id="testing", aws_secret_access_key="testing"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a client from the environment would fail
    for workers, method in ((1, None), (2, "fork"), (2, "spawn")):
        ((image_id, result),) = measure_stream([("a", f"s3://{s3_bucket}/in/a.jpg")], workers=workers,
                                               start_method=method, read=reader)
        assert isinstance(result, dict) and result["width"] == 64, (workers, method, result)


def test_reads_are_bounded_by_max_bytes(storage):
    from cv_dataops.core.storage import ObjectTooLargeError

    storage.write_bytes("ten.bin", b"0123456789")
    assert storage.read_bytes("ten.bin", max_bytes=10) == b"0123456789"
    with pytest.raises(ObjectTooLargeError):
        storage.read_bytes("ten.bin", max_bytes=9)
    storage.write_bytes("empty.bin", b"")
    assert storage.read_bytes("empty.bin", max_bytes=0) == b""


def test_local_reads_refuse_what_is_not_a_regular_file(tmp_path):
    """A FIFO put where a file was listed is refused at once (opened non-blocking, checked with fstat), never read:
    reading it would wait for a writer forever."""
    from cv_dataops.core.storage import NotARegularFileError, is_transient

    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(NotARegularFileError, match="fifo"):
        LocalStorage(tmp_path).read_bytes("x.jpg")
    with pytest.raises(FileNotFoundError) as missing:
        LocalStorage(tmp_path).read_bytes("gone.jpg")
    assert is_transient(missing.value)  # a file gone for now may come back


def test_read_with_retries_retries_only_what_may_pass(tmp_path):
    from cv_dataops.core.storage import NotARegularFileError, read_with_retries

    storage, pauses = LocalStorage(tmp_path), []
    with pytest.raises(FileNotFoundError):
        read_with_retries(storage, "gone.jpg", attempts=3, sleep=pauses.append)
    assert len(pauses) == 2 and pauses[1] > pauses[0] * 0.9 / 2  # backoff between the three attempts
    os.mkfifo(tmp_path / "x.jpg")
    pauses.clear()
    with pytest.raises(NotARegularFileError):
        read_with_retries(storage, "x.jpg", attempts=3, sleep=pauses.append)
    assert pauses == []  # a final answer is not retried


def test_s3_outages_and_5xx_are_transient_and_access_errors_are_not(s3_bucket, s3_endpoint):
    from cv_dataops.core.storage import (
        S3ClientSettings,
        TransientStorageError,
        read_with_retries,
    )
    from cv_dataops_tests.fault_proxy import FaultProxy

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="in/a.jpg", Body=b"bytes")
    proxy = FaultProxy(s3_endpoint)
    try:
        client = S3ClientSettings(endpoint_url=proxy.url, region_name="us-east-1", max_attempts=1).client()
        storage = S3Storage(f"s3://{s3_bucket}/in", client)
        for mode in ("503", "drop", "refuse"):
            proxy.outage(mode)
            with pytest.raises(TransientStorageError):
                storage.read_bytes("a.jpg")
            proxy.heal()
        proxy.fail_next(2, "503")
        assert read_with_retries(storage, "a.jpg", attempts=3, first_pause=0.05) == b"bytes"
        with pytest.raises(StorageError) as refused:
            S3Storage("s3://bucket-of-nobody/in", client).read_bytes("a.jpg")
        assert not isinstance(refused.value, TransientStorageError)
    finally:
        proxy.close()


def test_a_storage_with_an_outage_window_rides_out_an_outage_and_pages_listings_through_it(s3_bucket, s3_endpoint):
    """The catalog's storage (outage_seconds > 0) retries a down endpoint until it is back, listing included
    (paged by hand, so a page's request is retried and the listing resumes where it was); a window of 0 (the
    landing zone's: its objects are deferred instead) raises at once."""
    from cv_dataops.core.storage import S3ClientSettings, TransientStorageError
    from cv_dataops_tests.fault_proxy import FaultProxy

    proxy = FaultProxy(s3_endpoint)
    try:
        client = S3ClientSettings(endpoint_url=proxy.url, region_name="us-east-1", max_attempts=1).client()
        patient = S3Storage(f"s3://{s3_bucket}/catalog", client, outage_seconds=30)
        for index in range(1005):  # more than one page of 1,000 keys
            boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"catalog/k/{index:04d}", Body=b"x")
        proxy.outage("refuse", seconds=2.0)
        patient.write_bytes("table/all.parquet", b"table")  # waits for the endpoint, then writes
        assert patient.read_bytes("table/all.parquet") == b"table"
        proxy.fail_next(1, "503")  # a page request fails once: retried, the listing goes on
        listed = [info.key for info in patient.list("k/")]
        assert listed == [f"k/{index:04d}" for index in range(1005)]
        proxy.outage("refuse")
        with pytest.raises(TransientStorageError):
            S3Storage(f"s3://{s3_bucket}/catalog", client).read_bytes("table/all.parquet")
    finally:
        proxy.close()
