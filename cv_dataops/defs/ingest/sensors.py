"""The landing sensor: newly landed objects become a batch partition and a run, exactly once. (A batch whose run
then fails is requested again by the reconcile sensor, defs/shared/reconcile.py.)"""

import json

import dagster as dg

from cv_dataops.core.lease import Lease, LeaseHeld
from cv_dataops.defs.shared.jobs import ingest_batch_job
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.resources import CatalogResource, LandingResource


def pending_batches(instance: dg.DagsterInstance, batch_ids: list[str], after: str) -> list[str]:
    """Batches never requested yet: newer than the cursor or without a partition, and not yet ingested (the
    reconcile sensor finishes the ones whose run failed)."""
    known = set(instance.get_dynamic_partitions(batch_partitions.name))
    done = instance.get_materialized_partitions(dg.AssetKey("raw_images"))
    return [b for b in batch_ids if (b > after or b not in known) and b not in done]


@dg.sensor(job=ingest_batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def landing_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource,
                   landing: LandingResource) -> dg.SensorResult | dg.SkipReason:
    """Groups newly landed objects into a batch, adds its partition and requests its run (run_key = batch id, so
    a tick repeated after a crash makes no second run). The cursor is the newest batch requested. Planning holds
    the data root's lease: while a `cv-dataops run` batches it, the tick skips, naming that holder."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    ledger = catalog.ledger()
    try:
        with Lease(catalog.storage(), "landing sensor"):
            created = landing.plan(ledger)
    except LeaseHeld as held:
        return dg.SkipReason(str(held))
    batch_ids = ledger.batch_ids()
    pending = pending_batches(context.instance, batch_ids, cursor.get("last_batch", ""))
    if not pending:
        return dg.SkipReason("nothing new in the landing zone")
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_partitions = [b for b in pending if b not in known]
    context.log.info(f"{len(created)} new batch(es); requesting {len(pending)}: {', '.join(pending)}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"batch:{b}") for b in pending],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps({"last_batch": max(batch_ids), "batches": len(batch_ids)}),
    )
