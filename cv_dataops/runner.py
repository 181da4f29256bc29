"""`cv-dataops run` in-process: what the landing sensor and the runs it requests would do, then everything downstream.

Runs go to a persistent Dagster instance (DAGSTER_HOME), so they show in the UI afterwards, exactly like runs the
daemon launches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from cv_dataops.definitions import load_definitions
from cv_dataops.defs.ingest.sensors import pending_batches
from cv_dataops.defs.shared.partitions import batch_partitions, per_batch_assets
from cv_dataops.resources import default_dagster_home

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class PipelineFailed(RuntimeError):
    """A run failed; the message names the failed step(s) and why."""


@dataclass
class RunSummary:
    new_batches: list[str] = field(default_factory=list)
    ingested_batches: list[str] = field(default_factory=list)
    downstream_assets: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def open_instance(data_root: str) -> dg.DagsterInstance:
    """The persistent instance for this data root (DAGSTER_HOME, or one kept beside a local catalog)."""
    home = default_dagster_home(data_root).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def _failure_message(result: dg.ExecuteInProcessResult, what: str) -> str:
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            reason = (error.message.strip().splitlines() or ["failed"])[-1] if error else "failed"
            failures.append(f"step {event.step_key} failed: {reason}")
    return f"{what}: " + ("; ".join(failures) or f"run {result.run_id} did not succeed")


def _selected_keys(defs: dg.Definitions, select: Sequence[str] | None) -> set[dg.AssetKey] | None:
    if not select:
        return None
    graph = defs.resolve_asset_graph()
    unknown = [name for name in select if dg.AssetKey(name) not in graph.get_all_asset_keys()]
    if unknown:
        known = ", ".join(sorted(key.to_user_string() for key in graph.get_all_asset_keys()))
        raise ValueError(f"unknown asset(s) {', '.join(unknown)}; known assets: {known}")
    return set(dg.AssetSelection.assets(*select).upstream().resolve(graph))


@contextmanager
def pipeline_environment(landing: str, data_root: str, labels: str) -> Iterator[None]:
    """Point the definitions' resources at these locations (as a code server's environment would)."""
    settings = {"CV_DATAOPS_LANDING": landing, "CV_DATAOPS_DATA_ROOT": data_root, "CV_DATAOPS_LABELS": labels,
                "CV_DATAOPS_MIN_AGE_SECONDS": "0"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_pipeline(instance: dg.DagsterInstance, *, landing: str, data_root: str, labels: str = "imagefolder",
                 select: Sequence[str] | None = None,
                 on_batch: Callable[[str, int, int], None] | None = None) -> RunSummary:
    """Batch what landed since the last run, run every pending batch, then refresh what spans all batches.

    The runs are those of the code location's own jobs, with its resources pointed at ``landing`` and
    ``data_root``. With nothing new landed and nothing pending, nothing runs and nothing changes.
    """
    with pipeline_environment(landing, data_root, labels):
        defs = load_definitions()
        return _run(defs, instance, select, on_batch)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, select: Sequence[str] | None,
         on_batch: Callable[[str, int, int], None] | None) -> RunSummary:
    resources = defs.resources
    summary = RunSummary()
    ledger = resources["catalog"].ledger()
    summary.new_batches = [m.batch_id for m in ledger.plan(resources["landing"].storage(), min_age_seconds=0,
                                                           max_batch_size=resources["landing"].max_batch_size)]
    pending = pending_batches(instance, ledger.batch_ids(), after="")
    known = set(instance.get_dynamic_partitions(batch_partitions.name))
    missing = [b for b in pending if b not in known]
    if missing:
        instance.add_dynamic_partitions(batch_partitions.name, missing)

    graph = defs.resolve_asset_graph()
    wanted = _selected_keys(defs, select)
    per_batch = set(per_batch_assets.resolve(graph))
    batch_keys = sorted(per_batch if wanted is None else per_batch & wanted)
    spanning_keys = sorted((set(graph.get_all_asset_keys()) if wanted is None else wanted) - per_batch)

    if batch_keys:
        job = defs.resolve_job_def("ingest_batch")
        for position, batch_id in enumerate(pending, start=1):
            if on_batch:
                on_batch(batch_id, position, len(pending))
            result = job.execute_in_process(instance=instance, partition_key=batch_id, asset_selection=batch_keys,
                                            raise_on_error=False, run_config=QUIET_RUN_CONFIG,
                                            tags={"cv_dataops/launched_by": "cli"})
            summary.run_ids.append(result.run_id)
            if not result.success:
                raise PipelineFailed(_failure_message(result, f"batch {batch_id}"))
            summary.ingested_batches.append(batch_id)

    never_built = [k for k in spanning_keys if instance.get_latest_materialization_event(k) is None]
    if spanning_keys and (summary.ingested_batches or never_built):
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, asset_selection=spanning_keys, raise_on_error=False, run_config=QUIET_RUN_CONFIG,
                                        tags={"cv_dataops/launched_by": "cli"})
        summary.run_ids.append(result.run_id)
        if not result.success:
            raise PipelineFailed(_failure_message(result, "downstream assets"))
        summary.downstream_assets = [k.to_user_string() for k in spanning_keys]
    return summary


def dagster_ui_hint(landing: str, data_root: str) -> str:
    home = default_dagster_home(data_root).resolve()
    env = f"DAGSTER_HOME={home} CV_DATAOPS_LANDING={_shell(landing)} CV_DATAOPS_DATA_ROOT={_shell(data_root)}"
    return f"{env} .venv/bin/dagster dev -m cv_dataops.definitions   (then open http://127.0.0.1:3000)"


def _shell(uri: str) -> str:
    text = uri if "://" in uri else str(Path(uri).resolve())
    return text if all(c.isalnum() or c in "/._-:" for c in text) else "'" + text.replace("'", "'\\''") + "'"
