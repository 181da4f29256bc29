"""The reconcile sensor: a batch whose run failed (or was killed) is requested again, until every per-batch stage
of it is done; then the assets spanning all batches are requested again when their last attempt failed or a batch
changed since they were materialized.

Each batch request has a fresh run key, ``batch:<id>:attempt:<n>`` with ``n`` the number of failed runs of that
batch, so a repeated tick makes no second run while a new failure makes a new request. Attempts are spaced out
(``BACKOFF_SECONDS`` doubled after each failure) and capped: after ``MAX_ATTEMPTS`` failed runs the batch stays
failed (``cv-dataops status`` and this sensor's ticks show it) until someone fixes the cause and runs
`cv-dataops run`, which always tries again. Batches only stale by a code version change are left to the
automation sensor, batches never run to the landing sensor.

The spanning assets get at most one request per tick (one run of ``refresh_spanning`` holding every failed or
outdated spanning asset and the spanning assets downstream of them), and only once no batch is running or about to
be retried (a batch that changes would outdate them again). Outdated ones are left ``OUTDATED_GRACE_SECONDS`` to the
automation sensor, whose eager condition refreshes them after a batch changes: only what it did not pick up (a
dependency missing somewhere, a refresh that failed) is requested here. Its run key names what it answers,
``spanning:<newest batch change>:<failed run ids>``, and the cursor keeps the last one requested, so the same
situation is requested once however many ticks see it. Failed refreshes back off and are capped like batches. The
tick's text (in the UI) says where batches and spanning assets stand.
"""

from __future__ import annotations

import hashlib
import json
import time

import dagster as dg

from cv_dataops.core.lease import Lease
from cv_dataops.defs.shared.jobs import ingest_batch_job, refresh_spanning_job
from cv_dataops.resources import LAUNCHED_BY_CLI, LAUNCHED_BY_TAG, CatalogResource
from cv_dataops.status import (
    BATCH_JOB,
    DATA_ROOT_TAG,
    PipelineStatus,
    fail_orphaned_runs,
    newest_batch_change_time,
    pipeline_status,
    stages_to_run,
)

MAX_ATTEMPTS = 4
BACKOFF_SECONDS = 60.0
OUTDATED_GRACE_SECONDS = 600.0  # what the automation sensor has to refresh outdated spanning assets first
SPANNING_TAG = "cv_dataops/reconcile"  # = "spanning" on the refresh runs this sensor requests
REFRESH_STATES = ("failed", "outdated")


def _last_failure_end(instance: dg.DagsterInstance, batch_id: str) -> float:
    runs = instance.get_run_records(filters=dg.RunsFilter(
        job_name=BATCH_JOB, tags={"dagster/partition": batch_id},
        statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]), limit=1)
    return max((r.end_time or r.update_timestamp.timestamp() for r in runs), default=0.0)


def _spanning_failures(instance: dg.DagsterInstance) -> tuple[int, float]:
    """(failed refresh runs this sensor requested since its last successful one, when the latest of them ended)."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={SPANNING_TAG: "spanning"}), limit=MAX_ATTEMPTS + 1)
    failed, last_end = 0, 0.0
    for record in records:  # newest first
        if record.dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            break
        failed += 1
        last_end = max(last_end, record.end_time or record.update_timestamp.timestamp())
    return failed, last_end


def spanning_request(status: PipelineStatus, graph, last_key: str | None, now: float,
                     failures: tuple[int, float], changed_at: float | None) -> tuple[dg.RunRequest | None, str]:
    """The one refresh of the spanning assets this tick should request (or None), and a few words on why;
    ``changed_at``: when the newest batch change happened."""
    if any(s.state == "running" for s in status.spanning.values()):
        return None, "spanning assets: a refresh is running"
    wanted = sorted(name for name, s in status.spanning.items() if s.state in REFRESH_STATES)
    if not wanted:
        return None, ""
    failed_runs = sorted({s.run_id for s in status.spanning.values() if s.state == "failed" and s.run_id})
    if not failed_runs and changed_at is not None and now < changed_at + OUTDATED_GRACE_SECONDS:
        return None, f"spanning assets: outdated, left to the automation sensor for now ({', '.join(wanted)})"
    key = f"spanning:{status.newest_batch_change}:" + (
        hashlib.sha256(",".join(failed_runs).encode()).hexdigest()[:12] if failed_runs else "-")
    if key == last_key:
        return None, f"spanning assets: already requested ({', '.join(wanted)})"
    attempt, last_end = failures
    if failed_runs and attempt >= MAX_ATTEMPTS:
        return None, (f"spanning assets: gave up after {MAX_ATTEMPTS} failed refreshes (see `cv-dataops status`, "
                      f"fix, then `cv-dataops run`): {', '.join(wanted)}")
    if failed_runs and attempt:
        due = last_end + BACKOFF_SECONDS * 2 ** (attempt - 1)
        if now < due:
            return None, f"spanning assets: backing off (attempt {attempt + 1} in {due - now:.0f} s)"
    spanning = {dg.AssetKey.from_user_string(name) for name in status.spanning}
    chosen = {dg.AssetKey.from_user_string(name) for name in wanted}
    selection = sorted(chosen | {key for key in spanning if graph.get_ancestor_asset_keys(key) & chosen},
                       key=lambda k: k.to_user_string())
    request = dg.RunRequest(run_key=key, job_name=refresh_spanning_job.name, asset_selection=selection,
                            tags={SPANNING_TAG: "spanning", "cv_dataops/attempt": str(attempt + 1)})
    return request, f"re-requesting spanning assets: {', '.join(wanted)} ({'failed' if failed_runs else 'outdated'})"


@dg.sensor(jobs=[ingest_batch_job, refresh_spanning_job], default_status=dg.DefaultSensorStatus.RUNNING,
           minimum_interval_seconds=60)
def reconcile_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource) -> dg.SensorResult:
    """Re-requests every batch with a failed or killed run, then what spans all batches when its last attempt
    failed or a batch changed since (see the module), with backoff and a cap."""
    instance = context.instance
    storage = catalog.storage()
    try:  # runs `cv-dataops run` left unfinished when it was killed: fail them, if no batcher is alive
        with Lease(storage, "reconcile sensor"):
            orphans = fail_orphaned_runs(instance, {LAUNCHED_BY_TAG: LAUNCHED_BY_CLI, DATA_ROOT_TAG: storage.uri})
        if orphans:
            context.log.info(f"marked {len(orphans)} run(s) of a killed `cv-dataops run` failed")
    except Exception as error:  # noqa: BLE001 - a held lease (or an unreachable root) only defers this
        context.log.debug(f"orphaned runs not checked: {error}")

    cursor = json.loads(context.cursor) if context.cursor else {}
    graph = context.repository_def.asset_graph
    status = pipeline_status(instance, graph)
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
            job_name=ingest_batch_job.name, asset_selection=stages_to_run(batch, graph),
            tags={"cv_dataops/attempt": str(attempt + 1)}))
    summary = f"batches: {status.counts()}"
    if requests:
        summary += f"; re-requesting {', '.join(r.partition_key for r in requests)}"
    if waiting:
        summary += f"; backing off: {', '.join(waiting)}"
    if gave_up:
        summary += (f"; gave up after {MAX_ATTEMPTS} failed runs (see `cv-dataops status`, fix, then "
                    f"`cv-dataops run`): {', '.join(gave_up)}")
    if requests or waiting or any(b.running for b in status.batches):
        spanning_note = "spanning assets: waiting for the batches" if any(
            s.state in REFRESH_STATES for s in status.spanning.values()) else ""
    else:
        refresh, spanning_note = spanning_request(status, graph, cursor.get("spanning_key"), now,
                                                  _spanning_failures(instance),
                                                  newest_batch_change_time(instance, status))
        if refresh is not None:
            requests.append(refresh)
            cursor["spanning_key"] = refresh.run_key
    if spanning_note:
        summary += f"; {spanning_note}"
    context.log.info(summary)
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else dg.SkipReason(summary),
                           cursor=json.dumps(cursor) if cursor else None)
