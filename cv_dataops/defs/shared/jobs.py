"""The two jobs the sensors request: every per-batch stage for one batch, and the assets spanning all batches."""

import dagster as dg

from cv_dataops.defs.shared.partitions import batch_partitions, per_batch_assets

# A failed run is retried by the daemon (instance `run_retries`, deploy/dagster.yaml) from the failed step.
ingest_batch_job = dg.define_asset_job(
    "ingest_batch", selection=per_batch_assets, partitions_def=batch_partitions,
    description="Every per-batch stage for one landing batch.", tags={"dagster/max_retries": "2"})

# What the reconcile sensor requests when a spanning asset's last attempt failed or a batch changed since it ran.
refresh_spanning_job = dg.define_asset_job(
    "refresh_spanning", selection=dg.AssetSelection.all() - per_batch_assets,
    description="The assets spanning all batches (duplicates, scenarios, the curated dataset), refreshed.")
