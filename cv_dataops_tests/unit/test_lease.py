"""The data root's lease, locally and on a real S3 API (moto's server): one holder at a time, renewed while held,
expiring (or broken at once) when the holder crashed, and a refusal that names the holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cv_dataops.core.lease import LEASE_KEY, Lease, LeaseHeld
from cv_dataops.core.storage import LocalStorage


def test_one_holder_at_a_time_and_the_refusal_names_it(storage):
    first = Lease(storage, "cv-dataops run").acquire()
    try:
        second = Lease(storage, "landing sensor")
        with pytest.raises(LeaseHeld) as refused:
            second.acquire()
        message = str(refused.value)
        assert "is being batched by cv-dataops run" in message and f"pid {os.getpid()}" in message
        assert "\n" not in message and refused.value.holder.token == first.token
    finally:
        first.release()
    with Lease(storage, "landing sensor") as second:  # released: free again
        assert storage.exists(LEASE_KEY) and second.current().token == second.token
    assert not storage.exists(LEASE_KEY)


def test_a_contender_waits_a_bounded_time(storage):
    holder = Lease(storage, "first").acquire()
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="after waiting 1 s"):
        Lease(storage, "second", wait_seconds=1.0, poll_seconds=0.2).acquire()
    assert time.monotonic() - started >= 0.9  # it did wait (the error says it gave up after 1 s)
    releaser = threading.Timer(0.5, holder.release)
    releaser.start()
    with Lease(storage, "second", wait_seconds=20, poll_seconds=0.1) as second:
        assert second.current().holder == "second"
    releaser.join()


def test_a_held_lease_is_renewed_past_its_time_to_live(storage):
    # a time to live of seconds, not tenths: on a loaded 2-core machine running two test workers, a renewal due
    # every 0.3 s (a third of a 0.9 s time to live) was once late enough for the lease to lapse
    with Lease(storage, "long run", ttl_seconds=2.4) as holder:
        first_expiry = holder.current().expires_at
        time.sleep(5.0)
        assert holder.current().expires_at > first_expiry + 1.5 and not holder.lost
        with pytest.raises(LeaseHeld):
            Lease(storage, "second").acquire()


def test_a_crashed_holder_elsewhere_expires(storage):
    """A holder on another machine that stopped renewing: refused until its expiry, then taken over."""
    record = {"holder": "cv-dataops run", "pid": 4242, "host": "another-host", "token": "dead",
              "expires_at": time.time() + 1.5}
    assert storage.create_bytes(LEASE_KEY, json.dumps(record).encode())
    with pytest.raises(LeaseHeld, match="pid 4242 on another-host"):
        Lease(storage, "next").acquire()
    with Lease(storage, "next", wait_seconds=10, poll_seconds=0.2) as lease:
        assert lease.current().token == lease.token


def test_a_killed_holder_on_this_host_is_broken_at_once(tmp_path):
    storage = LocalStorage(tmp_path / "data")
    script = ("import sys, time\nfrom cv_dataops.core.lease import Lease\nfrom cv_dataops.core.storage import "
              "LocalStorage\nlease = Lease(LocalStorage(sys.argv[1]), 'killed run', ttl_seconds=600).acquire()\n"
              "print('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="killed run"):
            Lease(storage, "next").acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Lease(storage, "next") as lease:  # no waiting for the 600 s time to live
        assert lease.current().holder == "next"


def test_contenders_for_an_expired_lease_never_both_win(storage):
    record = {"holder": "old", "pid": 1, "host": "another-host", "token": "expired", "expires_at": 0.0}
    assert storage.create_bytes(LEASE_KEY, json.dumps(record).encode())
    winners, barrier = [], threading.Barrier(6)

    def contend(index: int) -> None:
        lease = Lease(storage, f"contender {index}")
        barrier.wait()
        if lease.try_acquire() is None:
            winners.append(lease)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) <= 1
    current = Lease(storage, "reader").current()
    if winners:
        assert current.token == winners[0].token
    else:  # all lost the race to a breaker that then lost the create: the next attempt wins
        assert Lease(storage, "late").try_acquire() is None


def test_releasing_while_the_storage_is_down_leaves_the_lease_to_expire(s3_endpoint, s3_bucket, caplog):
    """An S3 outage at the end of a run must not replace what ended the run with an error about the lease: the
    release gives up with a warning, and the lease expires by itself."""
    from cv_dataops.core.storage import S3ClientSettings, S3Storage
    from cv_dataops_tests.fault_proxy import FaultProxy

    proxy = FaultProxy(s3_endpoint)
    try:
        settings = S3ClientSettings(endpoint_url=proxy.url, max_attempts=1, aws_access_key_id="testing",
                                    aws_secret_access_key="testing", region_name="us-east-1")
        storage = S3Storage(f"s3://{s3_bucket}/root", settings.client())
        lease = Lease(storage, "run", ttl_seconds=3).acquire()
        proxy.outage("refuse")
        lease.release()  # does not raise
        assert "could not release the lease" in caplog.text
        proxy.heal()
        assert storage.exists(LEASE_KEY)  # still there, ...
        time.sleep(3.5)
        Lease(storage, "next", ttl_seconds=3).acquire().release()  # ... and expired: the next holder gets it
    finally:
        proxy.close()
