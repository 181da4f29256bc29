"""A lease on a data root: at most one batcher (a `cv-dataops run`, or the landing sensor's planning) works on it.

The lease is one small JSON object (holder, pid, host, token, expiry) created only if absent
(:meth:`~cv_dataops.core.storage.Storage.create_bytes`: a hard link locally, If-None-Match on S3), so two
contenders never both win. The holder renews it in a background thread; a holder that crashed stops renewing and
its lease expires, after which the next contender breaks it (at once, when the holder's process is known to be
gone: same host, no such pid). Breaking is itself a create-if-absent (of a marker
named after the expired lease's token), so two contenders never both break the same lease. Clocks of the machines
sharing a data root are assumed to agree to well within the lease's time to live.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cv_dataops.core.storage import Storage

LEASE_KEY = "_leases/batcher.json"
DEFAULT_TTL_SECONDS = 60.0


class LeaseHeld(RuntimeError):
    """Another holder has the lease; the message names it (one line)."""

    def __init__(self, message: str, holder: LeaseRecord):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    pid: int
    host: str
    token: str
    expires_at: float

    def describe(self, now: float | None = None) -> str:
        left = self.expires_at - (time.time() if now is None else now)
        return f"{self.holder} (pid {self.pid} on {self.host}, lease expires in {max(0.0, left):.0f} s)"

    @staticmethod
    def parse(data: bytes) -> LeaseRecord | None:
        try:
            fields = json.loads(data.decode("utf-8"))
            return LeaseRecord(str(fields["holder"]), int(fields["pid"]), str(fields["host"]), str(fields["token"]),
                               float(fields["expires_at"]))
        except (ValueError, KeyError, TypeError):
            return None  # a torn or foreign object: treated as expired


class Lease:
    """``with Lease(storage, "cv-dataops run"):`` holds the data root's lease for the block (see the module).

    ``wait_seconds``: how long :meth:`acquire` waits for a live holder before raising :class:`LeaseHeld`
    (0: refuse at once). While held, the lease is renewed every ``ttl_seconds / 3``; :attr:`lost` turns True if
    it was ever found taken over (only possible if this process stalled past the time to live).
    """

    def __init__(self, storage: Storage, holder: str, *, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 wait_seconds: float = 0.0, poll_seconds: float = 1.0, key: str = LEASE_KEY,
                 clock: Callable[[], float] = time.time):
        self.storage, self.holder, self.key = storage, holder, key
        self.ttl_seconds, self.wait_seconds, self.poll_seconds = ttl_seconds, wait_seconds, poll_seconds
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> LeaseRecord:
        return LeaseRecord(self.holder, os.getpid(), socket.gethostname(), self.token,
                           self.clock() + self.ttl_seconds)

    def _encode(self) -> bytes:
        return json.dumps(asdict(self._record())).encode("utf-8")

    def current(self) -> LeaseRecord | None:
        """The lease as stored now (None: nobody holds it)."""
        try:
            data = self.storage.read_bytes(self.key)
        except FileNotFoundError:
            return None
        return LeaseRecord.parse(data) or LeaseRecord("an unreadable lease", 0, "?", "torn", 0.0)

    def try_acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free or expired: None on success, else the live holder's record."""
        if self.storage.create_bytes(self.key, self._encode()):
            return None
        holder = self.current()
        if holder is None:  # released between our attempt and our read
            return self.try_acquire_once_more()
        if holder.expires_at > self.clock() and not self._holder_died(holder):
            return holder
        # Expired (or its holder died on this host): break it, once, whoever else is trying (the marker is named after the dead lease's token).
        marker = f"{self.key}.break-{holder.token}"
        if not self.storage.create_bytes(marker, self._encode()):
            breaker = LeaseRecord.parse(self._read(marker) or b"")
            if breaker is None or breaker.expires_at > self.clock():
                return breaker or holder  # someone else is breaking it right now
            self.storage.delete(marker)  # that breaker died mid-break; the next attempt retries
            return breaker
        try:
            if (self.current() or holder).token == holder.token:
                self.storage.delete(self.key)
            return self.try_acquire_once_more()
        finally:
            self.storage.delete(marker)

    @staticmethod
    def _holder_died(holder: LeaseRecord) -> bool:
        """A holder on this host whose process is gone (killed): no need to wait for its lease to expire."""
        if holder.host != socket.gethostname() or holder.pid <= 0 or holder.pid == os.getpid():
            return False
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False

    @staticmethod
    def held_by_an_ancestor(holder: LeaseRecord | None) -> bool:
        """Whether ``holder`` is this process or one of its ancestors on this host (a `cv-dataops run` whose step
        processes ask: they work under its lease)."""
        if holder is None or holder.host != socket.gethostname():
            return False
        return holder.pid in _ancestors()

    def try_acquire_once_more(self) -> LeaseRecord | None:
        if self.storage.create_bytes(self.key, self._encode()):
            return None
        return self.current()

    def _read(self, key: str) -> bytes | None:
        try:
            return self.storage.read_bytes(key)
        except FileNotFoundError:
            return None

    def acquire(self) -> Lease:
        deadline = self.clock() + self.wait_seconds
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if self.clock() >= deadline:
                waited = f" after waiting {self.wait_seconds:.0f} s" if self.wait_seconds else ""
                raise LeaseHeld(f"{self.storage.uri} is being batched by {holder.describe(self.clock())}"
                                f"{waited}; try again when it is done", holder)
            time.sleep(min(self.poll_seconds, max(0.0, deadline - self.clock())) or self.poll_seconds)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        self._renewer.start()
        return self

    def renew(self) -> bool:
        """Push the expiry out, if the lease is still ours (False, and :attr:`lost` set, if it is not)."""
        current = self.current()
        if current is None or current.token != self.token:
            self.lost = True
            return False
        self.storage.write_bytes(self.key, self._encode())
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried; the lease expires if it keeps failing
                continue

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_seconds)
            self._renewer = None
        try:
            current = self.current()
            if current is not None and current.token == self.token:
                self.storage.delete(self.key)
        except Exception as error:  # noqa: BLE001 - storage unreachable: the lease expires by itself in ttl_seconds
            # and must not hide whatever ended the holder's work (raising here replaced a step's own error)
            logging.getLogger(__name__).warning("could not release the lease %s (%s); it expires in %.0f s",
                                                self.key, error, self.ttl_seconds)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _ancestors() -> set[int]:
    """This process and its ancestors, from /proc (elsewhere: this process and its parent)."""
    found, pid = {os.getpid()}, os.getpid()
    for _ in range(64):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])  # the field after the state: the parent
        except (OSError, ValueError, IndexError):
            return found | {os.getppid()}
        if pid <= 0 or pid in found:
            return found
        found.add(pid)
    return found
