"""Every step of a run the CLI did not start (the daemon's, a UI launch) holds the data root's lease while it works,
waits for another batcher's lease, and fails in one line when the wait runs out; `cv-dataops run`'s own runs do
not take it again (the CLI holds it for them)."""

from __future__ import annotations

import threading

import dagster as dg

from cv_dataops.core.lease import Lease
from cv_dataops.core.storage import LocalStorage
from cv_dataops.resources import LAUNCHED_BY_CLI, LAUNCHED_BY_TAG, CatalogResource


@dg.asset
def lease_seen_by_the_step(catalog: CatalogResource) -> dg.MaterializeResult:
    """Reads the data root's lease while the step works: who holds it."""
    record = Lease(catalog.storage(), "probe").current()
    return dg.MaterializeResult(metadata={"holder": record.holder if record else "nobody"})


def _materialize(tmp_path, *, wait_seconds=30.0, tags=None):
    catalog = CatalogResource(data_root=str(tmp_path / "data"), lease_wait_seconds=wait_seconds)
    result = dg.materialize([lease_seen_by_the_step], resources={"catalog": catalog}, tags=tags,
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return result


def _holder(result):
    (materialization,) = result.asset_materializations_for_node("lease_seen_by_the_step")
    return materialization.metadata["holder"].value


def test_a_step_holds_the_lease_while_it_works_and_frees_it(tmp_path):
    result = _materialize(tmp_path)
    assert result.success
    assert _holder(result) == f"run {result.run_id} of __ephemeral_asset_job__"
    assert Lease(LocalStorage(tmp_path / "data"), "after").current() is None  # released at the step's end


def test_a_step_waits_for_another_batcher_then_fails_in_one_line(tmp_path):
    storage = LocalStorage(tmp_path / "data")
    with Lease(storage, "cv-dataops run"):
        result = _materialize(tmp_path, wait_seconds=1.0)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE]
    message = failure.event_specific_data.error.message.strip()
    assert "\n" not in message and "is being batched by cv-dataops run" in message and "after waiting 1 s" in message, message

    holder = Lease(storage, "cv-dataops run").acquire()
    releaser = threading.Timer(3.0, holder.release)  # the batcher finishes while the step waits
    releaser.start()
    try:
        result = _materialize(tmp_path, wait_seconds=120.0)
    finally:
        releaser.join()
    assert result.success and _holder(result).startswith("run ")


def test_the_cli_s_own_runs_do_not_take_the_lease_it_holds(tmp_path):
    with Lease(LocalStorage(tmp_path / "data"), "cv-dataops run"):
        result = _materialize(tmp_path, wait_seconds=0.0, tags={LAUNCHED_BY_TAG: LAUNCHED_BY_CLI})
    assert result.success and _holder(result) == "cv-dataops run"


def test_a_re_executed_cli_run_is_no_cli_run_it_takes_the_lease_and_loses_the_cli_tag(tmp_path):
    """A run carrying the CLI's tag outside any `cv-dataops run` (a re-execution from the UI copies the tags): the
    lease is not held by an ancestor, so the step takes it, and the tag changes so no `cv-dataops run` ever takes the
    live run for an orphan of a killed one."""
    import json
    import socket
    import subprocess
    import time

    from cv_dataops.core.lease import LEASE_KEY
    from cv_dataops.resources import RE_EXECUTED_CLI_RUN

    instance = dg.DagsterInstance.ephemeral()
    catalog = CatalogResource(data_root=str(tmp_path / "data"), lease_wait_seconds=0.0)
    result = dg.materialize([lease_seen_by_the_step], resources={"catalog": catalog}, instance=instance,
                            tags={LAUNCHED_BY_TAG: LAUNCHED_BY_CLI})
    assert _holder(result).startswith(f"run {result.run_id}")
    assert instance.get_run_by_id(result.run_id).tags[LAUNCHED_BY_TAG] == RE_EXECUTED_CLI_RUN

    other = subprocess.Popen(["sleep", "60"])  # a live `cv-dataops run` elsewhere on this host, not our ancestor
    try:
        storage = LocalStorage(tmp_path / "data")
        storage.write_bytes(LEASE_KEY, json.dumps({"holder": "cv-dataops run", "pid": other.pid,
                                                   "host": socket.gethostname(), "token": "t",
                                                   "expires_at": time.time() + 60}).encode())
        refused = dg.materialize([lease_seen_by_the_step], resources={"catalog": catalog}, instance=instance,
                                 tags={LAUNCHED_BY_TAG: LAUNCHED_BY_CLI}, raise_on_error=False)
        assert not refused.success  # it waited (0 s) for that holder instead of working beside it
    finally:
        other.kill()
        other.wait()
