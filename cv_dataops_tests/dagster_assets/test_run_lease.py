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
