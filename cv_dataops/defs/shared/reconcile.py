"""The reconcile sensor: a batch whose run failed (or was killed) is requested again, until every per-batch stage
of it is done.

Each request has a fresh run key, ``batch:<id>:attempt:<n>`` with ``n`` the number of failed runs of that batch,
so a repeated tick makes no second run while a new failure makes a new request. Attempts are spaced out
(``BACKOFF_SECONDS`` doubled after each failure) and capped: after ``MAX_ATTEMPTS`` failed runs the batch stays
failed (``cv-dataops status`` and this sensor's ticks show it) until someone fixes the cause and runs
`cv-dataops run`, which always tries again. Batches only stale by a code version change are left to the
automation sensor, batches never run to the landing sensor. The tick's text (in the UI) says where batches stand.
"""

from __future__ import annotations

import time

import dagster as dg

from cv_dataops.core.lease import Lease
from cv_dataops.resources import CatalogResource
from cv_dataops.status import (
    BATCH_JOB,
    DATA_ROOT_TAG,
    fail_orphaned_runs,
    pipeline_status,
    stages_to_run,
)

MAX_ATTEMPTS = 4
BACKOFF_SECONDS = 60.0


def _last_failure_end(instance: dg.DagsterInstance, batch_id: str) -> float:
    runs = instance.get_run_records(filters=dg.RunsFilter(
        job_name=BATCH_JOB, tags={"dagster/partition": batch_id},
        statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]), limit=1)
    return max((r.end_time or r.update_timestamp.timestamp() for r in runs), default=0.0)


@dg.sensor(job_name=BATCH_JOB, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60)
def reconcile_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource) -> dg.SensorResult:
    """Re-requests every batch with a failed or killed run (see the module), with backoff and a cap."""
    instance = context.instance
    storage = catalog.storage()
    try:  # runs `cv-dataops run` left unfinished when it was killed: fail them, if no batcher is alive
        with Lease(storage, "reconcile sensor"):
            orphans = fail_orphaned_runs(instance, {"cv_dataops/launched_by": "cli", DATA_ROOT_TAG: storage.uri})
        if orphans:
            context.log.info(f"marked {len(orphans)} run(s) of a killed `cv-dataops run` failed")
    except Exception as error:  # noqa: BLE001 - a held lease (or an unreachable root) only defers this
        context.log.debug(f"orphaned runs not checked: {error}")

    graph = context.repository_def.asset_graph
    status = pipeline_status(instance, graph, spanning=[])
    now = time.time()
    requests, waiting, gave_up = [], [], []
    for batch in status.batches:
        unfinished = batch.unfinished()
        if batch.running or not unfinished or batch.failed_runs == 0:
            continue
        if all(batch.stages[name].state == "stale" for name in unfinished):
            continue
        attempt = batch.failed_runs
        if attempt >= MAX_ATTEMPTS:
            gave_up.append(batch.batch_id)
            continue
        due = _last_failure_end(instance, batch.batch_id) + BACKOFF_SECONDS * 2 ** (attempt - 1)
        if now < due:
            waiting.append(f"{batch.batch_id} (attempt {attempt + 1} in {due - now:.0f} s)")
            continue
        requests.append(dg.RunRequest(
            partition_key=batch.batch_id, run_key=f"batch:{batch.batch_id}:attempt:{attempt}",
            asset_selection=stages_to_run(batch, graph), tags={"cv_dataops/attempt": str(attempt + 1)}))
    summary = f"batches: {status.counts()}"
    if requests:
        summary += f"; re-requesting {', '.join(r.partition_key for r in requests)}"
    if waiting:
        summary += f"; backing off: {', '.join(waiting)}"
    if gave_up:
        summary += (f"; gave up after {MAX_ATTEMPTS} failed runs (see `cv-dataops status`, fix, then "
                    f"`cv-dataops run`): {', '.join(gave_up)}")
    context.log.info(summary)
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else dg.SkipReason(summary))
