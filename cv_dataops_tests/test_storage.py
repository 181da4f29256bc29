"""The storage abstraction behaves the same on a folder and on a real S3 API."""

from __future__ import annotations

import os
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


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/some/prefix")


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
