"""Where every batch stands, read from the Dagster instance: what `cv-dataops run`, `cv-dataops status` and the
reconcile sensor finish.

For each batch partition and each per-batch asset (those tagged ``cv_dataops/scope=batch``) the state is one of

- ``done``: materialized, by the current code version, after its per-batch upstream;
- ``stale``: materialized, but by another code version, or before its upstream was materialized again;
- ``failed``: the latest attempt (a run that planned it) ended without materializing it;
- ``running``: the latest attempt's run has not finished;
- ``missing``: never attempted.

The assets spanning all batches are ``fresh``, ``outdated`` (a batch changed since their last materialization),
``never`` materialized, ``failed`` (latest attempt failed) or ``running``.

:func:`failed_checks` reads which asset checks of given runs failed, with their severity and what they saw.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from cv_dataops.defs.shared.partitions import batch_partitions, per_batch_assets

BATCH_JOB = "ingest_batch"
UNFINISHED = ("missing", "failed", "stale")
CODE_VERSION_TAG = "dagster/code_version"
DATA_ROOT_TAG = "cv_dataops/data_root"


@dataclass(frozen=True)
class StageState:
    state: str
    run_id: str | None = None
    detail: str = ""


@dataclass
class BatchStatus:
    batch_id: str
    stages: dict[str, StageState]
    failed_runs: int = 0
    deferred: int = 0  # objects it could not read for now that no later batch has taken over yet

    @property
    def done(self) -> bool:
        return all(s.state == "done" for s in self.stages.values())

    @property
    def running(self) -> bool:
        return any(s.state == "running" for s in self.stages.values())

    def unfinished(self) -> list[str]:
        return [name for name, s in self.stages.items() if s.state in UNFINISHED]


@dataclass
class PipelineStatus:
    batches: list[BatchStatus] = field(default_factory=list)
    spanning: dict[str, StageState] = field(default_factory=dict)
    newest_batch_change: int = 0  # storage id of the latest materialization of any batch's per-batch asset
    newest_batch_change_key: dg.AssetKey | None = None  # and its asset

    def unfinished_batches(self) -> list[BatchStatus]:
        return [b for b in self.batches if b.unfinished()]

    def spanning_needs_refresh(self) -> bool:
        return any(s.state != "fresh" for s in self.spanning.values())

    def lines(self) -> list[str]:
        """One line per batch (its stages' states), then one per spanning asset: what `cv-dataops status` prints."""
        lines = []
        for batch in self.batches:
            stages = ", ".join(f"{name}: {s.state}" + (f" ({s.detail})" if s.detail else "")
                               for name, s in batch.stages.items())
            waiting = f"; {batch.deferred} deferred (awaiting a retry)" if batch.deferred else ""
            lines.append(f"batch {batch.batch_id}: {'done' if batch.done else 'UNFINISHED'}: {stages}{waiting}")
        if not self.batches:
            lines.append("no batches yet")
        for name, s in self.spanning.items():
            lines.append(f"{name}: {s.state}" + (f" ({s.detail})" if s.detail else ""))
        return lines

    def deferred_line(self) -> str | None:
        """How many objects are deferred (transient read failures awaiting a retry by a later run), per batch."""
        waiting = [b for b in self.batches if b.deferred]
        if not waiting:
            return None
        return (f"deferred: {sum(b.deferred for b in waiting)} object(s) awaiting a retry by a later run ("
                + ", ".join(f"batch {b.batch_id}: {b.deferred}" for b in waiting) + ")")

    def counts(self) -> str:
        states = Counter("done" if b.done else "running" if b.running else "unfinished" for b in self.batches)
        return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"


def per_batch_keys(graph) -> list[dg.AssetKey]:
    """The per-batch assets in dependency order (upstream first)."""
    wanted = set(per_batch_assets.resolve(graph))
    return [key for level in graph.toposorted_asset_keys_by_level for key in sorted(level) if key in wanted]


def _run_states(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> dict[str, dg.DagsterRunStatus]:
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    return {run.run_id: run.status for run in instance.get_runs(filters=dg.RunsFilter(run_ids=ids))}


def _latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey,
                             partitions: Sequence[str] | None) -> dict[str | None, tuple[int, str | None]]:
    """partition -> (storage id, code version) of its latest materialization."""
    if partitions is None:
        result = instance.fetch_materializations(key, limit=1)
        return {None: (r.storage_id, r.asset_materialization.tags.get(CODE_VERSION_TAG) if
                       r.asset_materialization else None) for r in result.records}
    ids = instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION, set(partitions))
    latest: dict[str | None, tuple[int, str | None]] = {}
    storage_ids = sorted(ids.values())
    for start in range(0, len(storage_ids), 500):
        chunk = storage_ids[start:start + 500]
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk),
                                                  limit=len(chunk)).records
        for record in records:
            materialization = record.asset_materialization
            latest[record.partition_key] = (record.storage_id,
                                            materialization.tags.get(CODE_VERSION_TAG) if materialization else None)
    return latest


def _attempt_state(run_status: dg.DagsterRunStatus | None, run_id: str, dead_runs=frozenset()) -> StageState:
    if run_id in dead_runs:
        return StageState("failed", run_id, f"run {run_id[:8]} killed")
    if run_status is None or run_status in FINISHED_STATUSES:
        label = run_status.value.lower() if run_status else "deleted"
        return StageState("failed", run_id, f"run {run_id[:8]} {label}")
    return StageState("running", run_id, f"run {run_id[:8]} {run_status.value.lower()}")


def failed_run_counts(instance: dg.DagsterInstance) -> Counter:
    """batch id -> number of finished, unsuccessful runs of the per-batch job for it."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=BATCH_JOB, statuses=[
        dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]))
    return Counter(run.tags.get("dagster/partition") for run in runs if run.tags.get("dagster/partition"))


def pipeline_status(instance: dg.DagsterInstance, graph, batch_ids: Sequence[str] | None = None,
                    spanning: Sequence[dg.AssetKey] | None = None,
                    dead_runs: Iterable[str] = (), deferred: Mapping[str, int] | None = None) -> PipelineStatus:
    """The state of every batch (default: every batch partition) and of the spanning assets (default: every
    asset not per batch) of ``graph`` (the definitions' asset graph). ``dead_runs``: ids of unfinished runs known
    to have no live process (see :func:`orphaned_runs`), shown failed. ``deferred``: batch id -> objects awaiting
    a retry (from the ledger, :meth:`~cv_dataops.ingest.landing.BatchLedger.awaiting_retry`)."""
    deferred = deferred or {}
    dead_runs = frozenset(dead_runs)
    batch_ids = list(instance.get_dynamic_partitions(batch_partitions.name) if batch_ids is None else batch_ids)
    keys = per_batch_keys(graph)
    per_batch = set(keys)
    latest = {key: _latest_materializations(instance, key, batch_ids) for key in keys}
    attempts = {key: instance.event_log_storage
                .get_latest_asset_partition_materialization_attempts_without_materializations(key) for key in keys}
    spanning_keys = sorted(set(graph.get_all_asset_keys()) - per_batch) if spanning is None else list(spanning)
    planned = {key: instance.get_latest_planned_materialization_info(key) for key in spanning_keys}
    run_status = _run_states(instance, [run_id for by_partition in attempts.values()
                                        for run_id, _ in by_partition.values()]
                             + [info.run_id for info in planned.values() if info is not None])
    failures = failed_run_counts(instance)

    status = PipelineStatus()
    for batch_id in batch_ids:
        stages: dict[str, StageState] = {}
        for key in keys:
            name = key.to_user_string()
            attempt = attempts[key].get(batch_id)
            materialized = latest[key].get(batch_id)
            if attempt is not None and (materialized is None or attempt[1] > materialized[0]):
                stages[name] = _attempt_state(run_status.get(attempt[0]), attempt[0], dead_runs)
            elif materialized is None:
                stages[name] = StageState("missing")
            else:
                stages[name] = _materialized_state(graph, key, batch_id, materialized, latest, per_batch)
        status.batches.append(BatchStatus(batch_id, stages, failures.get(batch_id, 0), deferred.get(batch_id, 0)))

    newest_batch_change = max((sid for by_partition in latest.values() for sid, _ in by_partition.values()),
                              default=0)
    status.newest_batch_change = newest_batch_change
    status.newest_batch_change_key = next((key for key, by_partition in latest.items() for sid, _ in
                                           by_partition.values() if sid == newest_batch_change), None)
    for key in spanning_keys:
        name = key.to_user_string()
        materialized = _latest_materializations(instance, key, None).get(None)
        info = planned[key]
        if info is not None and (materialized is None or info.storage_id > materialized[0]):
            status.spanning[name] = _attempt_state(run_status.get(info.run_id), info.run_id, dead_runs)
        elif materialized is None:
            status.spanning[name] = StageState("never")
        elif materialized[0] < newest_batch_change and graph.get_ancestor_asset_keys(key) & per_batch:
            status.spanning[name] = StageState("outdated", detail="a batch changed since")
        else:
            status.spanning[name] = StageState("fresh")
    return status


def newest_batch_change_time(instance: dg.DagsterInstance, status: PipelineStatus) -> float | None:
    """When the newest per-batch materialization happened (None: there is none)."""
    if status.newest_batch_change_key is None:
        return None
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=status.newest_batch_change_key, storage_ids=[status.newest_batch_change]), limit=1).records
    return records[0].timestamp if records else None


def _materialized_state(graph, key, batch_id, materialized, latest, per_batch) -> StageState:
    version = graph.get(key).code_version
    if version is not None and materialized[1] is not None and materialized[1] != version:
        return StageState("stale", detail="code version changed")
    for parent in graph.get(key).parent_keys & per_batch:
        upstream = latest[parent].get(batch_id)
        if upstream is not None and upstream[0] > materialized[0]:
            return StageState("stale", detail=f"{parent.to_user_string()} is newer")
    return StageState("done")


def stages_to_run(batch: BatchStatus, graph, allowed: Iterable[dg.AssetKey] | None = None) -> list[dg.AssetKey]:
    """The unfinished stages of ``batch`` and every per-batch stage downstream of them (their inputs change)."""
    keys = per_batch_keys(graph)
    per_batch = set(keys)
    chosen: set[dg.AssetKey] = set()
    for key in keys:
        if batch.stages[key.to_user_string()].state in UNFINISHED or graph.get(key).parent_keys & chosen:
            chosen.add(key)
    allowed = per_batch if allowed is None else set(allowed)
    return [key for key in keys if key in chosen and key in allowed]


def orphaned_runs(instance: dg.DagsterInstance, tags: Mapping[str, str]) -> list[dg.DagsterRun]:
    """The unfinished runs carrying ``tags`` (e.g. this data root's CLI runs): orphans if the data root's lease
    is free or held by the caller, since then no such run can still be alive (its process was killed)."""
    return list(instance.get_runs(filters=dg.RunsFilter(tags=dict(tags), statuses=[
        s for s in dg.DagsterRunStatus if s not in FINISHED_STATUSES])))


def fail_orphaned_runs(instance: dg.DagsterInstance, tags: Mapping[str, str]) -> list[str]:
    """Mark :func:`orphaned_runs` failed. Only call this while holding the data root's lease."""
    runs = orphaned_runs(instance, tags)
    for run in runs:
        instance.report_run_failed(run, message="the process running it ended without finishing it "
                                                "(killed?); marked failed by the next `cv-dataops run`")
    return [run.run_id for run in runs]


@dataclass(frozen=True)
class FailedCheck:
    """An asset check that failed in a run: its severity (``ERROR`` or ``WARN``) and what it saw, in one line."""

    asset: str
    check: str
    severity: str
    saw: str
    batch_id: str | None = None
    blocking: bool = False
    run_id: str = ""

    def line(self) -> str:
        where = f"batch {self.batch_id}" if self.batch_id else self.asset
        return f"{where}: {self.check} ({self.severity}{', blocking' if self.blocking else ''}): {self.saw}"


SAW_LIMIT = 240  # characters of a check's description or metadata shown on its line


def failed_checks(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> tuple[list[FailedCheck], int]:
    """(the failed checks, how many checks were evaluated) in the runs ``run_ids``, read from the event log's
    ASSET_CHECK_EVALUATION events, in the order they were evaluated."""
    failed, evaluated = [], 0
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        partition = run.tags.get("dagster/partition") if run is not None else None
        for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = record.dagster_event.event_specific_data
            evaluated += 1
            if evaluation.passed:
                continue
            failed.append(FailedCheck(
                asset=evaluation.asset_key.to_user_string(), check=evaluation.check_name,
                severity=evaluation.severity.value, saw=_saw(evaluation.description, evaluation.metadata),
                batch_id=evaluation.partition or partition, blocking=bool(evaluation.blocking), run_id=run_id))
    return failed, evaluated


def _saw(description: str | None, metadata: Mapping) -> str:
    """What a check saw: its description if it gave one, else its metadata as ``key=value`` pairs (links to
    reports and long previews left out); cut to :data:`SAW_LIMIT` characters."""
    parts = [" ".join(description.split())] if description else []
    if not description:
        for key, value in metadata.items():
            raw = getattr(value, "value", value)
            if isinstance(value, dg.MetadataValue) and type(value).__name__ in (
                    "PathMetadataValue", "UrlMetadataValue", "MarkdownMetadataValue", "NotebookMetadataValue"):
                continue
            if isinstance(raw, float):
                text = f"{raw:.3g}"
            elif isinstance(raw, dict | list):
                text = json.dumps(raw, separators=(",", ":"), default=str)
            else:
                text = str(raw)
            parts.append(f"{key}={text}")
    text = "; ".join(parts) or "(no details)"
    return text if len(text) <= SAW_LIMIT else text[:SAW_LIMIT - 1] + "…"
