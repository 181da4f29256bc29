"""The drift sensor: a batch whose drift report says it drifted gets the assets that adapt to it refreshed at once,
the curated snapshot and the review round (which puts the batch's most atypical images first), instead of waiting
for the next refresh of everything spanning all batches."""

import dagster as dg

ADAPT = [dg.AssetKey("curated_dataset"), dg.AssetKey("review_queue")]


@dg.asset_sensor(asset_key=dg.AssetKey("drift_report"), job_name="refresh_spanning",  # defs/shared/jobs.py
                 default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def drift_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """One run of curated_dataset and review_queue per drifted batch report (run key drift:<batch>:<run id>)."""
    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    drifted = metadata.get("drifted")
    batch_id = materialization.partition if materialization else None
    if drifted is None or not drifted.value:
        return dg.SkipReason(f"the latest drift report (batch {batch_id}) found no drift")
    cause = metadata.get("top_cause")
    context.log.info(f"batch {batch_id} drifted: {cause.value if cause else 'cause unknown'}; re-curating")
    return dg.RunRequest(run_key=f"drift:{batch_id}:{asset_event.run_id}", asset_selection=ADAPT,
                         tags={"cv_dataops/drifted_batch": str(batch_id)})
