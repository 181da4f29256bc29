"""One storage abstraction for local folders and ``s3://`` URIs.

Every stage reads and writes through :class:`Storage`, so a data root or a landing zone can be a folder on a
laptop or a bucket prefix in production without any stage knowing which. Keys are POSIX paths relative to the
storage's root; writes are atomic (written under a temporary name, then published in one step), so a crashed run
never leaves a half-written object behind.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import shutil
import stat as stat_module
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPORARY_PREFIX = "_tmp/"
LOCAL_TEMPORARY = ".cv-dataops-tmp-"  # a temporary file or staging folder beside what it becomes; never listed


class StorageError(RuntimeError):
    """A storage location is missing, unreachable or refused us; the message is meant for the user."""


class TransientStorageError(StorageError):
    """A failure that may pass if the same thing is tried again later: the endpoint is down or unreachable, S3
    throttled or answered 5xx, a connection dropped mid-read."""


class ObjectTooLargeError(StorageError):
    """An object is larger than the caller's ``max_bytes``; it was not read (or not read past the limit)."""


class NotARegularFileError(StorageError):
    """The key names a FIFO, socket, device or folder: opening or reading it could block or never end."""


class UnsafeKeyError(ValueError):
    """A key would escape its storage root (absolute, ``..``, or a symlink leading outside)."""


# errno values of local reads that may succeed later (a file gone for now, a flaky network filesystem).
_TRANSIENT_ERRNOS = frozenset({errno.ENOENT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT,
                               errno.ESTALE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                               errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED})


def is_transient(error: BaseException) -> bool:
    """Whether reading again later may succeed where this error happened (vs. a final answer about the object)."""
    if isinstance(error, TransientStorageError):
        return True
    if isinstance(error, StorageError | UnsafeKeyError):
        return False
    if isinstance(error, ConnectionError | TimeoutError | FileNotFoundError):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by :meth:`Storage.list`.

    ``version`` changes whenever the object's content may have changed (S3 ETag, or size and mtime locally), so a
    file replaced under the same name is seen as new. ``unsafe_reason`` is set for entries that must not be read
    (they escape the root, are no regular file, have a name that is not UTF-8, or could not be listed), and
    ``refusal`` then names the quarantine reason (None: ``unsafe_path``); they are still listed so that they can be
    accounted for. ``raw_key`` is the hex of the name's bytes when they are not UTF-8 and ``key`` is their
    percent-escaped form (``os.fsdecode(bytes.fromhex(raw_key))`` gives the name back).
    """

    key: str
    size: int
    version: str
    modified: float
    unsafe_reason: str | None = None
    refusal: str | None = None
    raw_key: str | None = None


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


@dataclass(frozen=True)
class TreeWriter:
    """What :meth:`Storage.tree_writer` yields: ``writer(relative key, data)`` writes an object of the tree, and
    ``writer.link(relative key, source key)`` makes it the same object as ``source`` (another tree's file, which
    must never change: tree files are written read-only) without reading it: True if it could, False if the caller
    must write the bytes (no such source, or a storage that cannot)."""

    write: Callable[[str, bytes], None]
    link: Callable[[str, str], bool]

    def __call__(self, relative: str, data: bytes) -> None:
        self.write(relative, data)


class Storage(ABC):
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in no particular order (temporary write objects excluded)."""

    @abstractmethod
    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. With ``max_bytes``, raise :class:`ObjectTooLargeError` rather than hold more than
        that in memory, even if the object grew since it was listed."""

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

    @contextmanager
    def tree_writer(self, prefix: str) -> Iterator[TreeWriter]:
        """A :class:`TreeWriter` for many objects under ``prefix`` at once (an ImageFolder tree). Here each object
        is written as :meth:`write_bytes` writes it, and ``link`` is :meth:`copy`; a local folder stages the whole
        tree, hard-links instead of copying, and publishes the tree in one rename (:meth:`LocalStorage.tree_writer`)."""
        check_key(prefix)
        yield TreeWriter(lambda relative, data: self.write_bytes(f"{prefix}/{check_key(relative)}", data),
                         lambda relative, source: self.copy(source, f"{prefix}/{check_key(relative)}"))

    def copy(self, source: str, key: str) -> bool:
        """Make ``key`` a copy of the object ``source`` without its bytes passing through this process, where the
        storage can (a server-side copy on S3): True if done, False if the storage cannot or ``source`` is not
        there (the caller then writes the bytes itself)."""
        return False

    def delete_tree(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (a folder of keys): how many were removed."""
        keys = self._tree_keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def _tree_keys(self, prefix: str) -> list[str]:
        return [info.key for info in self.list(f"{check_key(prefix)}/") if info.unsafe_reason is None]

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
        """Every entry below ``prefix`` without opening any: what is not a regular file inside the root (FIFO,
        socket, device, dangling or looping symlink, a symlink out of the root), a name that is not UTF-8, and a
        folder or entry that could not be listed (PATH_MAX, permission denied) are listed with ``unsafe_reason``
        and ``refusal`` so they are accounted for, never read and never stop the listing."""
        start = self.root / prefix if prefix else self.root
        if not start.is_dir():
            return
        real_root = os.path.realpath(self.root)
        errors: list[OSError] = []
        for directory, subdirectories, files in os.walk(start, onerror=errors.append, followlinks=False):
            yield from self._listing_errors(errors)
            rel_dir = os.path.relpath(directory, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            if rel_dir.startswith(TEMPORARY_PREFIX):
                subdirectories[:] = []
                continue
            subdirectories[:] = [name for name in subdirectories if not name.startswith(LOCAL_TEMPORARY)]
            # Symlinked directories are not walked; one that points outside the root is reported as unsafe.
            for name in list(subdirectories):
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    subdirectories.remove(name)
                    if not _inside(os.path.realpath(path), real_root):
                        yield _entry(rel_dir + name, 0, "symlink", _lstat_mtime(path),
                                     f"symlinked folder points outside the root to {os.path.realpath(path)}",
                                     "unsafe_path")
            for name in files:
                if name.startswith(LOCAL_TEMPORARY):
                    continue
                info = self._file_entry(os.path.join(directory, name), rel_dir + name, real_root)
                if info is not None:
                    yield info
        yield from self._listing_errors(errors)

    def _file_entry(self, path: str, key: str, real_root: str) -> ObjectInfo | None:
        """One listed file name as an ObjectInfo (None if it vanished before it could be looked at)."""
        try:
            link_stat = os.lstat(path)
        except FileNotFoundError:
            return None  # vanished between walk and stat: it was never fully landed
        except OSError as error:
            return _entry(key, 0, f"error-{errno.errorcode.get(error.errno, error.errno)}", 0.0,
                          f"cannot look at the entry: {error.strerror or error}", "unlistable")
        status = link_stat
        if stat_module.S_ISLNK(link_stat.st_mode):
            target = os.path.realpath(path)
            if not _inside(target, real_root):
                return _entry(key, 0, "symlink", link_stat.st_mtime, f"symlink points outside the root to {target}",
                              "unsafe_path")
            try:
                status = os.stat(path)
            except FileNotFoundError:
                return _entry(key, 0, "symlink", link_stat.st_mtime, "dangling symlink", "broken_symlink")
            except OSError as error:
                looped = error.errno == errno.ELOOP
                return _entry(key, 0, "symlink", link_stat.st_mtime,
                              "symlink loop" if looped else f"cannot follow the symlink: {error.strerror or error}",
                              "broken_symlink")
        if not stat_module.S_ISREG(status.st_mode):
            kind = _file_kind(status.st_mode)
            return _entry(key, 0, kind, status.st_mtime, f"not a regular file but a {kind}", "not_a_regular_file")
        return _entry(key, status.st_size, f"{status.st_size}-{status.st_mtime_ns}", status.st_mtime)

    def _listing_errors(self, errors: list[OSError]) -> Iterator[ObjectInfo]:
        """Folders os.walk could not enter, as entries. A folder that vanished between being seen and being
        entered is one too (its contents were never listed: the entry says so, and they are listed when it comes
        back); its version is the time it was missed, so each time it happens is recorded."""
        while errors:
            error = errors.pop(0)
            if error.filename is None:
                continue
            relative = os.path.relpath(os.fsdecode(error.filename), self.root).replace(os.sep, "/")
            if relative == "." or relative.startswith("../"):
                continue
            if isinstance(error, FileNotFoundError):
                yield _entry(relative + "/", 0, f"vanished-{time.time_ns()}", time.time(),
                             "the folder vanished while the landing zone was listed; what it holds was not "
                             "listed, and is when it comes back", "unlistable")
                continue
            yield _entry(relative + "/", 0, f"error-{errno.errorcode.get(error.errno, error.errno)}",
                         _lstat_mtime(error.filename), f"cannot list the folder: {error.strerror or error}",
                         "unlistable")

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        if path.is_symlink() and not _inside(os.path.realpath(path), os.path.realpath(self.root)):
            raise UnsafeKeyError(f"symlink escapes the root: {key!r}")
        try:
            # O_NONBLOCK: a FIFO put where a file was listed opens at once instead of waiting for a writer.
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"no such object: {self.uri_of(key)}") from error
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(descriptor)
            if not stat_module.S_ISREG(status.st_mode):
                raise NotARegularFileError(f"not a regular file but a {_file_kind(status.st_mode)}: "
                                           f"{self.uri_of(key)}")
            if max_bytes is None:
                return handle.read()
            if status.st_size > max_bytes:
                raise ObjectTooLargeError(f"{status.st_size} bytes > limit {max_bytes}: {self.uri_of(key)}")
            data = handle.read(max_bytes + 1)  # bounded even if the file grew after the fstat
            if len(data) > max_bytes:
                raise ObjectTooLargeError(f"more than {max_bytes} bytes (it grew while read): {self.uri_of(key)}")
            return data

    def _synced_temporary(self, key: str, data: bytes) -> tuple[Path, str]:
        """``data`` written and fsynced to a temporary file beside ``key``'s path: (the path, the temporary).

        The file gets the mode ``open()`` would give it (0666 less the umask), not mkstemp's 0600, so a training
        job running as another user can read what the pipeline wrote; folders get 0777 less the umask."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=LOCAL_TEMPORARY, dir=path.parent)
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

    @contextmanager
    def tree_writer(self, prefix: str) -> Iterator[TreeWriter]:
        """Stage every file in a hidden folder beside ``prefix``, fsync them together (concurrent fsyncs share the
        filesystem's journal commits), then rename the folder into place, replacing any tree there: readers see
        the old tree or the whole new one. One fsync after another cost 1.1 s per 4,000 small files here, 90 % of
        writing a CIFAR snapshot's ImageFolder copy; together, about half. ``link`` hard-links a file of another
        tree (nothing to read, write or fsync; a tree of 100k images that the last snapshot's tree mostly holds
        costs links, not copies, on disk too). Files are written read-only (0444 less the umask): linked files are
        shared by several trees, so none may change in place. Nothing is published if the block raises, and the
        staging folder is removed."""
        target = self._path(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=LOCAL_TEMPORARY, dir=target.parent))
        written: list[Path] = []
        read_only = 0o444 & ~current_umask()
        try:
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the tree from other users
            folders: set[Path] = set()

            def staged(relative: str) -> Path:
                path = staging / check_key(relative)
                if path.parent not in folders:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(path.parent)
                return path

            def write(relative: str, data: bytes) -> None:
                path = staged(relative)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, read_only)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                written.append(path)

            real_root = os.path.realpath(self.root)
            inside: dict[Path, bool] = {}  # source folder -> resolves inside the root (a tree has few folders)

            def link(relative: str, source: str) -> bool:
                source_path = self._path(check_key(source))
                try:  # only a regular file of this root, never through a symlink
                    if source_path.parent not in inside:
                        inside[source_path.parent] = _inside(os.path.realpath(source_path.parent), real_root)
                    mode = os.lstat(source_path).st_mode
                    # a writable file (a tree written before trees were read-only) could change under every tree
                    # linking it: copy those instead
                    if not inside[source_path.parent] or not stat_module.S_ISREG(mode) or mode & 0o222:
                        return False
                    os.link(source_path, staged(relative), follow_symlinks=False)
                except OSError:  # gone, another filesystem, too many links: the caller writes the bytes
                    return False
                return True

            yield TreeWriter(write, link)
            _fsync_all([*written, *folders, staging])
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=LOCAL_TEMPORARY, dir=target.parent))
                os.rename(target, retired / "tree")
                try:
                    os.rename(staging, target)
                except BaseException:
                    os.rename(retired / "tree", target)  # the old tree back
                    raise
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(staging, target)
            _fsync_all([target.parent])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> int:
        """The folder is renamed out of sight first (readers see the whole tree or none), then removed."""
        target = self._path(check_key(prefix))
        if not target.is_dir() or target.is_symlink():
            return 0
        retired = Path(tempfile.mkdtemp(prefix=LOCAL_TEMPORARY, dir=target.parent))
        os.rename(target, retired / "tree")  # from here the tree is gone for readers, whatever the clean-up meets
        removed = 0
        for folder, folders, files in os.walk(retired):
            removed += len(files) + sum(os.path.islink(os.path.join(folder, name)) for name in folders)
        shutil.rmtree(retired, ignore_errors=True)  # a hidden leftover (a permission error) is never listed
        return removed

    def uri_of(self, key: str) -> str:
        return str(self._path(key))

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix.strip("/")))

    def local_path(self, key: str) -> Path:
        return self._path(key)


def read_with_retries(storage: Storage, key: str, max_bytes: int | None = None, attempts: int = 3,
                      first_pause: float = 0.5, max_pause: float = 8.0,
                      sleep: Callable[[float], None] = time.sleep) -> bytes:
    """``storage.read_bytes`` tried up to ``attempts`` times while it fails for a reason that may pass
    (:func:`is_transient`), pausing with jittered exponential backoff in between; the last error is raised. Final
    answers (too large, not a regular file, permission denied) are raised at once. S3 clients also retry each
    request themselves (``S3ClientSettings.max_attempts``)."""
    for attempt in range(1, attempts + 1):
        try:
            return storage.read_bytes(key, max_bytes=max_bytes)
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            sleep(min(max_pause, first_pause * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _fsync_all(paths: list[Path], threads: int = 8) -> None:
    """fsync files and folders, several at a time."""
    def sync(path: Path) -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    if len(paths) < 2 * threads:
        for path in paths:
            sync(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="fsync") as pool:
        list(pool.map(sync, paths))


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


def _file_kind(mode: int) -> str:
    for test, kind in ((stat_module.S_ISFIFO, "fifo"), (stat_module.S_ISSOCK, "socket"),
                       (stat_module.S_ISCHR, "char-device"), (stat_module.S_ISBLK, "block-device"),
                       (stat_module.S_ISDIR, "folder")):
        if test(mode):
            return kind
    return "special-file"


def _lstat_mtime(path: str | bytes) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def escape_undecodable(key: str) -> tuple[str, str | None]:
    """(key, None) for a UTF-8 name; for a name with bytes that are not UTF-8 (``os`` decodes them to surrogates),
    the name with those bytes percent-escaped and the hex of its raw bytes, so it can be stored and shown."""
    try:
        key.encode("utf-8")
        return key, None
    except UnicodeEncodeError:
        raw = os.fsencode(key)
        return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in key), raw.hex()


def _entry(key: str, size: int, version: str, modified: float, unsafe_reason: str | None = None,
           refusal: str | None = None) -> ObjectInfo:
    """An ObjectInfo for a local name, refused as ``undecodable_name`` when it is not UTF-8."""
    escaped, raw = escape_undecodable(key)
    if raw is not None and unsafe_reason is None:
        unsafe_reason, refusal = f"the name is not valid UTF-8 (raw bytes {raw})", "undecodable_name"
    elif raw is not None:
        unsafe_reason = f"{unsafe_reason} (name not UTF-8, raw bytes {raw})"
    return ObjectInfo(escaped, size, version, modified, unsafe_reason, refusal, raw)


class S3Storage(Storage):
    """A bucket prefix, through a boto3 S3 client (AWS, MinIO, or any S3 API).

    The client comes from the caller (dagster-aws's ``S3Resource`` in the Dagster layer), so endpoint, credentials,
    region and retries (throttling and 5xx) are configured in one place.
    """

    def __init__(self, uri: str, client: Any, outage_seconds: float = 0.0):
        bucket, prefix = parse_s3_uri(uri)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client
        # How long a transient failure (endpoint down, 5xx, throttled) is retried with backoff before it is raised,
        # beyond the client's own few quick retries: the catalog rides out an outage of this length, while a
        # landing zone's reads (0) fail at once and their objects are deferred to a later batch.
        self.outage_seconds = outage_seconds

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        """``function(**kwargs)`` with S3's errors as this module's, a transient one retried for up to
        ``outage_seconds`` (pauses doubling from 0.5 s to 8 s). Every call retried here is idempotent."""
        deadline, pause = None, 0.5
        while True:
            try:
                return self._call_once(what, function, **kwargs)
            except TransientStorageError:
                now = time.monotonic()
                deadline = deadline or now + self.outage_seconds
                if now >= deadline:
                    raise
                time.sleep(min(pause, deadline - now))
                pause = min(2 * pause, 8.0)

    def _call_once(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"no such object: s3://{self.bucket}/{kwargs.get('Key', '')}") from error
            if code == "NoSuchBucket":
                raise StorageError(f"bucket does not exist: s3://{self.bucket}") from error
            if status >= 500 or code in _S3_TRANSIENT_CODES:
                raise TransientStorageError(f"S3 answered {status} {code} to {what} on {self.uri}") from error
            raise StorageError(f"S3 refused {what} on {self.uri}: {code or error}") from error
        except BotoCoreError as error:
            kind = TransientStorageError if _transient_botocore(error) else StorageError
            raise kind(f"cannot reach S3 for {self.uri}: {error}") from error

    def ensure_exists(self) -> None:
        try:
            self._call("head_bucket", self.client.head_bucket, Bucket=self.bucket)
        except FileNotFoundError:  # HEAD answers a bare 404 for a missing bucket
            raise StorageError(f"bucket does not exist: s3://{self.bucket}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token = None  # paged by hand: each page's request can be retried, a paginator's generator cannot
        while True:
            request = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                request["ContinuationToken"] = token
            page = self._call("list_objects_v2", self.client.list_objects_v2, **request)
            for item in page.get("Contents", []):
                full_key = item["Key"]
                key = full_key[len(self.prefix):]
                if key.startswith(TEMPORARY_PREFIX):
                    continue
                if full_key.endswith("/") and item["Size"] == 0:
                    continue  # a "folder" marker made by consoles, not a landed object
                modified = item["LastModified"].timestamp()
                yield ObjectInfo(key, item["Size"], item.get("ETag", "").strip('"'), modified, unsafe_key_reason(key))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        response = self._call("get_object", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        try:
            if max_bytes is not None and response.get("ContentLength", 0) > max_bytes:
                raise ObjectTooLargeError(f"{response['ContentLength']} bytes > limit {max_bytes}: "
                                          f"{self.uri_of(key)}")
            data = body.read() if max_bytes is None else body.read(max_bytes + 1)
        except (ObjectTooLargeError, StorageError):
            raise
        except Exception as error:  # the connection dropped or stalled mid-body (botocore or urllib3 errors)
            raise TransientStorageError(f"reading {self.uri_of(key)} broke off: {type(error).__name__}: "
                                        f"{error}") from error
        finally:
            body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"more than {max_bytes} bytes: {self.uri_of(key)}")
        return data

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

    def copy(self, source: str, key: str) -> bool:
        try:
            self._call("copy_object", self.client.copy_object, Bucket=self.bucket, Key=self._key(key),
                       CopySource={"Bucket": self.bucket, "Key": self._key(check_key(source))})
        except FileNotFoundError:
            return False
        return True

    def delete_tree(self, prefix: str) -> int:
        """A thousand keys per request."""
        keys = self._tree_keys(prefix)
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(key)} for key in keys[start:start + 1000]]
            answer = self._call("delete_objects", self.client.delete_objects, Bucket=self.bucket,
                                Delete={"Objects": chunk, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"could not delete {len(answer['Errors'])} object(s) under "
                                   f"{self.uri_of(prefix)}: {first.get('Key')}: {first.get('Message')}")
        return len(keys)

    def uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(self.uri_of(prefix.strip("/")), self.client, self.outage_seconds)


_S3_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                                 "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "503", "500"})


def _transient_botocore(error: BaseException) -> bool:
    """Connection, timeout and broken-stream errors may pass; missing credentials or bad parameters do not."""
    from botocore import exceptions

    return isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError
                      | exceptions.ResponseStreamingError | exceptions.IncompleteReadError)


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

    def __init__(self, s3: S3ClientSettings | None = None, outage_seconds: float = 0.0):
        self.s3 = s3 or S3ClientSettings()
        self.outage_seconds = outage_seconds  # a stage reading a landed image waits out an outage this long
        self._client: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"s3": self.s3, "outage_seconds": self.outage_seconds}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["s3"], state.get("outage_seconds", 0.0))

    def __repr__(self) -> str:
        return f"UriReader({self.s3!r}, outage_seconds={self.outage_seconds})"

    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._pid != os.getpid():  # a client inherited through fork is not ours
                self._client, self._pid = self.s3.client(), os.getpid()
            return self._client

    def __call__(self, uri: str) -> bytes:
        return read_uri(uri, self.client() if uri.startswith("s3://") else None, self.outage_seconds)


def read_uri(uri: str, s3_client: Any | None = None, outage_seconds: float = 0.0) -> bytes:
    """The bytes behind a URI from a catalog table (an absolute path or ``s3://bucket/key``). Prefer a
    :class:`UriReader` from the catalog resource, which carries the configured S3 client; without a client this
    uses boto3's default configuration (the environment)."""
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        parent, _, name = key.rpartition("/")
        return S3Storage(f"s3://{bucket}/{parent}", s3_client or _DEFAULT_READER.client(),
                         outage_seconds).read_bytes(name)
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).read_bytes()


_DEFAULT_READER = UriReader()  # boto3's default configuration, for callers without a configured reader


# How long a data root on S3 retries an unreachable or failing endpoint before giving up (a step then fails).
DATA_ROOT_OUTAGE_SECONDS = 60.0


def absolute_location(uri: str | os.PathLike[str]) -> str:
    """A URI as it is, a folder as an absolute path (stages and worker processes may run in other directories)."""
    text = os.fspath(uri)
    return text if "://" in text else os.path.abspath(text)


def open_data_root(data_root: str, s3: S3ClientSettings | None = None,
                   outage_seconds: float = DATA_ROOT_OUTAGE_SECONDS) -> Storage:
    """The data root as the catalog's stages open it: the Dagster resource and the commands that only read tables
    (without importing Dagster) share this."""
    return open_storage(absolute_location(data_root), (s3 or S3ClientSettings()).client, outage_seconds)


def open_storage(uri: str | os.PathLike[str], s3_client: Any | Callable[[], Any] | None = None,
                 outage_seconds: float = 0.0) -> Storage:
    """Open a local folder (path or ``file://``) or an ``s3://bucket/prefix`` as a :class:`Storage`.

    ``s3_client`` may be a client or a zero-argument factory; it is only created for ``s3://`` URIs.
    ``outage_seconds``: how long an S3 storage retries a transient failure (see :class:`S3Storage`).
    """
    text = os.fspath(uri)
    if text.startswith("s3://"):
        client = s3_client() if callable(s3_client) and not hasattr(s3_client, "get_object") else s3_client
        return S3Storage(text, client or S3ClientSettings().client(), outage_seconds)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        raise StorageError(f"unsupported storage URI (use a folder or s3://bucket/prefix): {text}")
    return LocalStorage(text)
