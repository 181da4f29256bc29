"""One storage abstraction for local folders and ``s3://`` URIs.

Every stage reads and writes through :class:`Storage`, so a data root or a landing zone can be a folder on a
laptop or a bucket prefix in production without any stage knowing which. Keys are POSIX paths relative to the
storage's root; writes are atomic (written under a temporary name, then published in one step), so a crashed run
never leaves a half-written object behind.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPORARY_PREFIX = "_tmp/"


class StorageError(RuntimeError):
    """A storage location is missing, unreachable or refused us; the message is meant for the user."""


class UnsafeKeyError(ValueError):
    """A key would escape its storage root (absolute, ``..``, or a symlink leading outside)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by :meth:`Storage.list`.

    ``version`` changes whenever the object's content may have changed (S3 ETag, or size and mtime locally), so a
    file replaced under the same name is seen as new. ``unsafe_reason`` is set for entries that must not be read
    because they escape the root; they are still listed so that they can be accounted for.
    """

    key: str
    size: int
    version: str
    modified: float
    unsafe_reason: str | None = None


def unsafe_key_reason(key: str) -> str | None:
    """Why ``key`` is not a safe relative key, or None when it is."""
    if not key:
        return "empty key"
    if "\x00" in key:
        return "key contains a NUL byte"
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        return "absolute key"
    if any(part == ".." for part in key.replace("\\", "/").split("/")):
        return "key contains '..'"
    return None


def check_key(key: str) -> str:
    reason = unsafe_key_reason(key)
    if reason:
        raise UnsafeKeyError(f"{reason}: {key!r}")
    return key


class Storage(ABC):
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in no particular order (temporary write objects excluded)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically create or replace ``key``: readers see the old object or the new one, never a part."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Atomically create ``key`` only if it does not exist yet: True if this call created it, False if it was
        already there (left as it was). Lets concurrent runs agree on one object, e.g. one fitted model."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri_of(self, key: str) -> str:
        """The URI users and other tools open the object with (an absolute path locally, ``s3://`` otherwise)."""

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """A storage rooted at ``prefix`` below this one."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the storage is local, for tools that want one (DuckDB, pyarrow)."""
        return None

    def ensure_exists(self) -> None:
        """Raise :class:`StorageError` with a clear message when the root cannot be reached."""

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))


class LocalStorage(Storage):
    """A folder. Symlinks are never followed out of the root: such entries are listed as unsafe."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStorage({self.uri!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def ensure_exists(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"folder does not exist: {self.root}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = self.root / prefix if prefix else self.root
        if not start.is_dir():
            return
        real_root = os.path.realpath(self.root)
        for directory, subdirectories, files in os.walk(start, followlinks=False):
            rel_dir = os.path.relpath(directory, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            if rel_dir.startswith(TEMPORARY_PREFIX):
                subdirectories[:] = []
                continue
            # Symlinked directories are not walked; one that points outside the root is reported as unsafe.
            for name in list(subdirectories):
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    subdirectories.remove(name)
                    if not _inside(os.path.realpath(path), real_root):
                        yield ObjectInfo(rel_dir + name, 0, "symlink", os.lstat(path).st_mtime,
                                         f"symlinked folder points outside the root to {os.path.realpath(path)}")
            for name in files:
                if name.startswith(".cv-dataops-tmp-"):
                    continue
                path = os.path.join(directory, name)
                key = rel_dir + name
                try:
                    link_stat = os.lstat(path)
                except FileNotFoundError:
                    continue  # vanished between walk and stat: it was never fully landed
                if os.path.islink(path):
                    target = os.path.realpath(path)
                    if not _inside(target, real_root):
                        yield ObjectInfo(key, 0, "symlink", link_stat.st_mtime,
                                         f"symlink points outside the root to {target}")
                        continue
                    try:
                        stat = os.stat(path)
                    except FileNotFoundError:
                        yield ObjectInfo(key, 0, "symlink", link_stat.st_mtime, "dangling symlink")
                        continue
                else:
                    stat = link_stat
                yield ObjectInfo(key, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}", stat.st_mtime)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if path.is_symlink() and not _inside(os.path.realpath(path), os.path.realpath(self.root)):
            raise UnsafeKeyError(f"symlink escapes the root: {key!r}")
        try:
            return path.read_bytes()
        except FileNotFoundError as error:
            raise FileNotFoundError(f"no such object: {self.uri_of(key)}") from error

    def _synced_temporary(self, key: str, data: bytes) -> tuple[Path, str]:
        """``data`` written and fsynced to a temporary file beside ``key``'s path: (the path, the temporary).

        The file gets the mode ``open()`` would give it (0666 less the umask), not mkstemp's 0600, so a training
        job running as another user can read what the pipeline wrote; folders get 0777 less the umask."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".cv-dataops-tmp-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            os.unlink(temporary)
            raise
        return path, temporary

    def write_bytes(self, key: str, data: bytes) -> None:
        path, temporary = self._synced_temporary(key, data)
        try:
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def create_bytes(self, key: str, data: bytes) -> bool:
        path, temporary = self._synced_temporary(key, data)
        try:
            os.link(temporary, path)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri_of(self, key: str) -> str:
        return str(self._path(key))

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix.strip("/")))

    def local_path(self, key: str) -> Path:
        return self._path(key)


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and putting it back (which a file created by
    another thread at that instant could see)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class S3Storage(Storage):
    """A bucket prefix, through a boto3 S3 client (AWS, MinIO, or any S3 API).

    The client comes from the caller (dagster-aws's ``S3Resource`` in the Dagster layer), so endpoint, credentials,
    region and retries (throttling and 5xx) are configured in one place.
    """

    def __init__(self, uri: str, client: Any):
        bucket, prefix = parse_s3_uri(uri)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"no such object: s3://{self.bucket}/{kwargs.get('Key', '')}") from error
            if code == "NoSuchBucket":
                raise StorageError(f"bucket does not exist: s3://{self.bucket}") from error
            raise StorageError(f"S3 refused {what} on {self.uri}: {code or error}") from error
        except BotoCoreError as error:
            raise StorageError(f"cannot reach S3 for {self.uri}: {error}") from error

    def ensure_exists(self) -> None:
        try:
            self._call("head_bucket", self.client.head_bucket, Bucket=self.bucket)
        except FileNotFoundError:  # HEAD answers a bare 404 for a missing bucket
            raise StorageError(f"bucket does not exist: s3://{self.bucket}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        iterator = iter(pages)
        while True:
            page = self._call("list_objects_v2", lambda: next(iterator, None))
            if page is None:
                return
            for item in page.get("Contents", []):
                full_key = item["Key"]
                key = full_key[len(self.prefix):]
                if key.startswith(TEMPORARY_PREFIX):
                    continue
                if full_key.endswith("/") and item["Size"] == 0:
                    continue  # a "folder" marker made by consoles, not a landed object
                modified = item["LastModified"].timestamp()
                yield ObjectInfo(key, item["Size"], item.get("ETag", "").strip('"'), modified, unsafe_key_reason(key))

    def read_bytes(self, key: str) -> bytes:
        response = self._call("get_object", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        # Write under a temporary key, then publish with a server-side copy: the final key is only ever a whole object.
        final_key = self._key(key)
        temporary_key = f"{self.prefix}{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        self._call("put_object", self.client.put_object, Bucket=self.bucket, Key=temporary_key, Body=data)
        try:
            self._call("copy_object", self.client.copy_object, Bucket=self.bucket, Key=final_key,
                       CopySource={"Bucket": self.bucket, "Key": temporary_key})
        finally:
            self._call("delete_object", self.client.delete_object, Bucket=self.bucket, Key=temporary_key)

    def create_bytes(self, key: str, data: bytes) -> bool:
        # S3 conditional write: one PUT is atomic, and If-None-Match makes the second writer fail.
        try:
            self._call("put_object", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                       IfNoneMatch="*")
            return True
        except StorageError as error:
            if "PreconditionFailed" in str(error) or "ConditionalRequestConflict" in str(error):
                return False
            raise

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        self._call("delete_object", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(self.uri_of(prefix.strip("/")), self.client)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, posixpath.normpath(prefix) if prefix.strip("/") else ""


@dataclass(frozen=True)
class S3ClientSettings:
    """How to build the S3 client: the fields of dagster-aws's ``S3Resource`` (None: boto3's own environment and
    config files, e.g. ``AWS_ENDPOINT_URL`` for MinIO). Plain and picklable, so a worker process builds exactly the
    client of the process that configured it; tables and image bytes both use :meth:`client`."""

    region_name: str | None = None
    endpoint_url: str | None = None
    profile_name: str | None = None
    use_ssl: bool = True
    verify: str | bool | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    max_attempts: int = 5
    use_unsigned_session: bool = False

    def client(self) -> Any:
        """A boto3 S3 client with standard retries (throttling and 5xx), built as ``S3Resource.get_client`` does."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile_name)
        config = Config(retries={"max_attempts": self.max_attempts, "mode": "standard"},
                        signature_version=UNSIGNED if self.use_unsigned_session else None)
        return session.client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url,
                              use_ssl=self.use_ssl, verify=self.verify, aws_access_key_id=self.aws_access_key_id,
                              aws_secret_access_key=self.aws_secret_access_key,
                              aws_session_token=self.aws_session_token, config=config)


class UriReader:
    """Reads the bytes behind the URIs catalog tables hold (absolute paths, ``file://`` or ``s3://bucket/key``),
    with one S3 client per process built from ``s3``. Picklable: a worker process gets the settings, never the
    parent's client (whose sockets must not be shared), and builds its own the same way."""

    def __init__(self, s3: S3ClientSettings | None = None):
        self.s3 = s3 or S3ClientSettings()
        self._client: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"s3": self.s3}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["s3"])

    def __repr__(self) -> str:
        return f"UriReader({self.s3!r})"

    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._pid != os.getpid():  # a client inherited through fork is not ours
                self._client, self._pid = self.s3.client(), os.getpid()
            return self._client

    def __call__(self, uri: str) -> bytes:
        return read_uri(uri, self.client() if uri.startswith("s3://") else None)


def read_uri(uri: str, s3_client: Any | None = None) -> bytes:
    """The bytes behind a URI from a catalog table (an absolute path or ``s3://bucket/key``). Prefer a
    :class:`UriReader` from the catalog resource, which carries the configured S3 client; without a client this
    uses boto3's default configuration (the environment)."""
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        parent, _, name = key.rpartition("/")
        return S3Storage(f"s3://{bucket}/{parent}", s3_client or _DEFAULT_READER.client()).read_bytes(name)
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).read_bytes()


_DEFAULT_READER = UriReader()  # boto3's default configuration, for callers without a configured reader


def open_storage(uri: str | os.PathLike[str], s3_client: Any | Callable[[], Any] | None = None) -> Storage:
    """Open a local folder (path or ``file://``) or an ``s3://bucket/prefix`` as a :class:`Storage`.

    ``s3_client`` may be a client or a zero-argument factory; it is only created for ``s3://`` URIs.
    """
    text = os.fspath(uri)
    if text.startswith("s3://"):
        client = s3_client() if callable(s3_client) and not hasattr(s3_client, "get_object") else s3_client
        return S3Storage(text, client or S3ClientSettings().client())
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        raise StorageError(f"unsupported storage URI (use a folder or s3://bucket/prefix): {text}")
    return LocalStorage(text)
