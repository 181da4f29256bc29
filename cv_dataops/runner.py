"""`cv-dataops run` in-process: what the landing sensor and the runs it requests would do, then everything downstream.

The definitions are built from explicit :class:`~cv_dataops.config.Settings` (this process's environment is never
changed). Runs go to a persistent Dagster instance and carry the origin of the ``cv_dataops`` code location, so
the UI lists them under the location's jobs exactly like runs the daemon launches.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from cv_dataops.config import DEFAULT_LABELS, Settings, default_dagster_home
from cv_dataops.core.lease import Lease
from cv_dataops.core.storage import StorageError
from cv_dataops.definitions import ATTRIBUTE, CODE_LOCATION, MODULE, load_definitions
from cv_dataops.defs.shared.partitions import batch_partitions, per_batch_assets
from cv_dataops.resources import LAUNCHED_BY_CLI, LAUNCHED_BY_TAG
from cv_dataops.status import (
    DATA_ROOT_TAG,
    FailedCheck,
    PipelineStatus,
    fail_orphaned_runs,
    failed_checks,
    orphaned_runs,
    pipeline_status,
    stages_to_run,
)

# The console shows no step logs: a failure is one line from the CLI, its traceback stays in the run's logs (UI).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
CLI_TAGS = {LAUNCHED_BY_TAG: LAUNCHED_BY_CLI}
QUALITY_KEY = dg.AssetKey("image_quality")  # a run that measures quality validates it with GX next


class PipelineFailed(RuntimeError):
    """A run failed; the message names the failed step(s) and why (one line each, ``; ``-separated), and
    ``summary`` holds what was done and where every batch stands. ``checks_only``: every failed step was a
    blocking asset check that failed (the data was judged, nothing broke)."""

    def __init__(self, message: str, summary: RunSummary | None = None, checks_only: bool = False):
        super().__init__(message)
        self.summary = summary
        self.checks_only = checks_only


@dataclass
class RunSummary:
    new_batches: list[str] = field(default_factory=list)
    ingested_batches: list[str] = field(default_factory=list)
    downstream_assets: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    orphaned_runs: list[str] = field(default_factory=list)
    status: PipelineStatus | None = None
    failed_checks: list[FailedCheck] = field(default_factory=list)  # of the runs made (run_ids)
    checks_evaluated: int = 0

    def failed_error_checks(self) -> list[FailedCheck]:
        return [check for check in self.failed_checks if check.severity == "ERROR"]


def dagster_home(data_root: str) -> Path:
    """The instance folder for this data root (DAGSTER_HOME, or one kept beside a local catalog), made ready: a
    dagster.yaml without telemetry, and a workspace.yaml naming the code location as every deployment does."""
    home = default_dagster_home(data_root).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    workspace = home / "workspace.yaml"
    if not workspace.exists():
        workspace.write_text(f"load_from:\n  - python_module:\n      module_name: {MODULE}\n"
                             f"      attribute: {ATTRIBUTE}\n      location_name: {CODE_LOCATION}\n")
    return home


class InstanceUnavailable(RuntimeError):
    """Dagster's instance could not be opened or could not record a run (e.g. its sqlite files' disk is full):
    the message says where, since no step is running to name."""


def open_instance(data_root: str) -> dg.DagsterInstance:
    """The persistent instance for this data root (see :func:`dagster_home`), or :class:`InstanceUnavailable`."""
    home = dagster_home(data_root)
    try:
        return dg.DagsterInstance.from_config(str(home))
    except Exception as error:  # sqlite cannot create its files, a dagster.yaml that does not parse, ...
        raise InstanceUnavailable(f"Dagster's instance in {home}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    """An exception's message without what SQLAlchemy appends (the SQL and a link) on later lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _execute_for(what: str, job_def: dg.JobDefinition, instance: dg.DagsterInstance, **kwargs):
    """:func:`execute_job`, with an error that escapes the run (the instance failing to record it: steps' own
    errors are events, not exceptions) named after what was being run, as step failures are."""
    try:
        return execute_job(job_def, instance, **kwargs)
    except Exception as error:
        raise InstanceUnavailable(f"{what}: Dagster's instance could not record the run: {_first_line(error)}") \
            from error


CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"  # what a step raises when a blocking check of it failed


def _failure_message(result, what: str) -> str:
    """``what: step: cause`` for each failed step, the cause being the user code's own error (see :func:`cause`);
    a step stopped by a blocking check says which check (``blocking check failed: asset: check``)."""
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None and error.cls_name == CHECK_FAILED_ERROR:
                failed = [line.strip() for line in error.message.splitlines()[1:] if line.strip()]
                failures.append(f"blocking check failed: {', '.join(failed) or event.step_key}")
                continue
            failures.append(f"{event.step_key}: {cause(error) if error else 'failed'}")
        elif event.event_type_value == "PIPELINE_FAILURE" and not failures:
            error = event.event_specific_data.error if event.event_specific_data else None
            if error:
                failures.append(cause(error))
    return f"{what}: " + ("; ".join(failures) or f"run {result.run_id} did not succeed")


def _only_checks_failed(result) -> bool:
    """Whether every failed step of ``result`` failed only because a blocking check of it failed."""
    errors = [event.step_failure_data.error for event in result.all_events if event.is_step_failure]
    return bool(errors) and all(e is not None and e.cls_name == CHECK_FAILED_ERROR for e in errors)


def cause(error) -> str:
    """One line saying why a step failed. Dagster wraps what user code raised ("Error occurred while executing
    op ...", a resource's initialisation, ...): the first error in the cause chain that is not Dagster's own is the
    user's, and the innermost error below it (e.g. the OSError it was raised from) is appended when it adds
    something ("… : [Errno 28] No space left on device")."""
    chain = []
    while error is not None:  # Dagster wraps with `raise ... from`: follow causes
        chain.append(error)
        error = error.cause
    own = next((e for e in chain if not e.cls_name.startswith("Dagster")), None)
    if own is None:
        return _last_line(chain[0])
    innermost = own
    while (innermost.cause or innermost.context) is not None:  # what the user's error was raised from, or in
        innermost = innermost.cause or innermost.context
    text = _message_line(own)
    if innermost is not own:
        inner = _message_line(innermost)
        if inner and inner not in text:
            text = f"{text}: {inner}"
    return text


def _message_line(error) -> str:
    """The first line of the error's message without its class name (``OSError: [Errno 28] …`` -> ``[Errno 28] …``)."""
    line = next((line.strip() for line in error.message.splitlines() if line.strip()), error.cls_name)
    name, _, rest = line.partition(": ")
    return rest.strip() if rest and name.rsplit(".", 1)[-1] == error.cls_name else line


def _last_line(error) -> str:
    """The innermost cause's message: a resource that refused its settings is wrapped twice by Dagster."""
    while error.cause is not None and "resource" in error.message.lower():
        error = error.cause
    line = (error.message.strip().splitlines() or ["failed"])[-1]
    name, _, rest = line.partition(": ")
    return rest if rest and name.rsplit(".", 1)[-1] == error.cls_name and error.cls_name.endswith("ConfigError") else line


def _selected_keys(defs: dg.Definitions, select: Sequence[str] | None) -> set[dg.AssetKey] | None:
    if not select:
        return None
    graph = defs.resolve_asset_graph()
    unknown = [name for name in select if dg.AssetKey(name) not in graph.get_all_asset_keys()]
    if unknown:
        known = ", ".join(sorted(key.to_user_string() for key in graph.get_all_asset_keys()))
        raise ValueError(f"unknown asset(s) {', '.join(unknown)}; known assets: {known}")
    return set(dg.AssetSelection.assets(*select).upstream().resolve(graph))


def code_location_origins(job_name: str):
    """The origins the ``cv_dataops`` code location gives runs of ``job_name`` (as a workspace loading
    :data:`~cv_dataops.definitions.MODULE` under that name would): the UI lists a job's runs by this repository
    label, and re-executes them through it."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.definitions.repository_definition.valid_definitions import (
        SINGLETON_REPOSITORY_NAME,
    )
    from dagster._core.origin import JobPythonOrigin
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origin_from_module_name

    location = location_origin_from_module_name(MODULE, ATTRIBUTE, os.getcwd(), location_name=CODE_LOCATION)
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)
    repository = ReconstructableRepository.for_module(MODULE, ATTRIBUTE, os.getcwd()).get_python_origin()
    return remote, JobPythonOrigin(job_name, repository)


def execute_job(job_def: dg.JobDefinition, instance: dg.DagsterInstance, *, asset_selection: Sequence[dg.AssetKey],
                partition_key: str | None = None, tags: Mapping[str, str] | None = None,
                run_config: Mapping | None = None):
    """Run ``job_def`` in this process, as ``execute_in_process`` does, but as a run of the code location (its
    remote and code origins set), so the UI shows it under the job. Returns the execution result."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import create_execution_plan, execute_run
    from dagster._core.execution.execute_in_process import merge_run_tags

    run_config = dict(run_config or QUIET_RUN_CONFIG)
    selection = list(asset_selection)
    ephemeral = job_def.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=selection)
    job = InMemoryJob(ephemeral)
    run_tags = merge_run_tags(job_def=job_def, partition_key=partition_key, tags=tags, asset_selection=selection,
                              instance=instance, run_config=run_config)
    plan = create_execution_plan(job, run_config=run_config, instance_ref=instance.get_ref())
    remote_origin, code_origin = code_location_origins(job_def.name)
    run = instance.create_run_for_job(job_def=ephemeral, execution_plan=plan, run_config=run_config,
                                      tags={**ephemeral.run_tags, **run_tags}, asset_selection=frozenset(selection),
                                      remote_job_origin=remote_origin, job_code_origin=code_origin)
    return execute_run(job, run, instance)


def run_pipeline(instance: dg.DagsterInstance, *, landing: str, data_root: str, labels: str = DEFAULT_LABELS,
                 select: Sequence[str] | None = None, settings: Settings | None = None,
                 on_batch: Callable[[str, int, int], None] | None = None,
                 wait_seconds: float = 0.0) -> RunSummary:
    """Batch what landed since the last run, finish every unfinished batch, then refresh what spans all batches.

    The runs are those of the code location's own jobs, with ``settings`` (default: the defaults) and ``landing``,
    ``data_root`` and ``labels`` replacing their locations; objects are taken in however recently they landed.
    Every batch is brought through every per-batch stage it has not finished (missing, failed, stale: see
    :mod:`cv_dataops.status`), and the spanning assets are refreshed when any batch changed since they were, so a
    killed or failed run is completed by the next one. With everything done, nothing runs and nothing changes.
    The data root's lease is held throughout (another batcher makes this wait ``wait_seconds``, then refuse).
    """
    settings = (settings or Settings.build()).replace(landing=landing, data_root=data_root, labels=labels,
                                                      min_age_seconds=0)
    defs = load_definitions(settings)
    lease = Lease(defs.resources["catalog"].storage(), "cv-dataops run", wait_seconds=wait_seconds)
    with lease:
        return _run(defs, instance, select, on_batch)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, select: Sequence[str] | None,
         on_batch: Callable[[str, int, int], None] | None) -> RunSummary:
    resources = defs.resources
    summary = RunSummary()
    tags = {**CLI_TAGS, DATA_ROOT_TAG: resources["catalog"].storage().uri}
    # the daemon must not retry a CLI run (a retry would carry its tags without its lease): the next
    # `cv-dataops run` finishes what one left unfinished
    run_tags = {**tags, "dagster/max_retries": "0"}
    ledger = resources["catalog"].ledger()
    summary.new_batches = [m.batch_id for m in resources["landing"].plan(ledger)]  # min age 0: run_pipeline
    summary.orphaned_runs = fail_orphaned_runs(instance, tags)  # we hold the lease: their processes are gone
    batch_ids = ledger.batch_ids()
    known = set(instance.get_dynamic_partitions(batch_partitions.name))
    missing = [b for b in batch_ids if b not in known]
    if missing:
        instance.add_dynamic_partitions(batch_partitions.name, missing)

    graph = defs.resolve_asset_graph()
    wanted = _selected_keys(defs, select)
    per_batch = set(per_batch_assets.resolve(graph))
    batch_keys = per_batch if wanted is None else per_batch & wanted
    spanning_keys = sorted((set(graph.get_all_asset_keys()) if wanted is None else wanted) - per_batch)

    before = pipeline_status(instance, graph, batch_ids, spanning_keys)
    todo = [(batch, stages_to_run(batch, graph, batch_keys)) for batch in before.batches]
    todo = [(batch, stages) for batch, stages in todo if stages]
    failures, blocked = [], False  # blocked: a batch was not ingested, so nothing after it is up to date
    checks_only = True  # every failure so far is a blocking check that failed
    if any(QUALITY_KEY in stages for _, stages in todo):  # its GX check follows ingestion: prepare GX meanwhile
        from cv_dataops.quality.expectations import prepare_in_background

        prepare_in_background()
    if todo:
        job = defs.resolve_job_def("ingest_batch")
        for position, (batch, stages) in enumerate(todo, start=1):
            if on_batch:
                on_batch(batch.batch_id, position, len(todo))
            result = _execute_for(f"batch {batch.batch_id}", job, instance, partition_key=batch.batch_id,
                                  asset_selection=stages, tags=run_tags)
            summary.run_ids.append(result.run_id)
            if result.success:
                summary.ingested_batches.append(batch.batch_id)
                continue
            failures.append(_failure_message(result, f"batch {batch.batch_id}"))
            checks_only = checks_only and _only_checks_failed(result)
            roots = [key for key in stages if not graph.get(key).parent_keys & per_batch]
            if any(batch.batch_id not in instance.get_materialized_partitions(key) for key in roots):
                blocked = True
                break  # later batches must not be ingested before this one (image ids are first-seen-wins)

    # with every batch's latest change known, so "outdated" spanning assets (a batch changed since) are refreshed
    deferred = deferred_counts(ledger)  # after the batches ran: what they could not read for now
    summary.status = pipeline_status(instance, graph, batch_ids, spanning_keys, deferred=deferred)
    if spanning_keys and (summary.ingested_batches or not blocked and (summary.status.spanning_needs_refresh()
                                                                       or waiting_label_files(resources))):
        job = defs.resolve_implicit_global_asset_job_def()
        result = _execute_for("downstream assets", job, instance, asset_selection=spanning_keys, tags=run_tags)
        summary.run_ids.append(result.run_id)
        if result.success:
            summary.downstream_assets = [k.to_user_string() for k in spanning_keys]
        else:
            failures.append(_failure_message(result, "downstream assets"))
            checks_only = checks_only and _only_checks_failed(result)
        summary.status = pipeline_status(instance, graph, batch_ids, spanning_keys, deferred=deferred)
    summary.failed_checks, summary.checks_evaluated = failed_checks(instance, summary.run_ids)
    if failures:
        raise PipelineFailed("; ".join(failures), summary, checks_only=checks_only)
    return summary


def waiting_label_files(resources: Mapping) -> int:
    """How many review decision and import files under the data root hold labels not yet appended: a run with no
    new batch still applies them (the daemon's review_sensor does the same on its own)."""
    from cv_dataops.labels.review import pending_files
    from cv_dataops.labels.store import LabelStore

    labelling = resources.get("labelling")
    if labelling is None or labelling.settings_error:
        return 0  # a wrong labels setting fails the labels assets themselves, with its line
    storage = resources["catalog"].storage()
    store = LabelStore(storage)
    return sum(len(pending_files(store, storage.child(folder)))
               for folder in (labelling.reviews_folder, labelling.imports_folder))


def deferred_counts(ledger) -> dict[str, int]:
    """batch id -> how many of its objects are deferred and not yet taken over by a later batch."""
    return {batch_id: len(keys) for batch_id, keys in ledger.awaiting_retry().items()}


def status_of(instance: dg.DagsterInstance, *, landing: str, data_root: str,
              settings: Settings | None = None) -> PipelineStatus:
    """Every batch's state per stage and the spanning assets' freshness, as `cv-dataops run` would see them
    (code versions from ``settings``); reads the instance only."""
    settings = (settings or Settings.build()).replace(landing=landing, data_root=data_root)
    defs = load_definitions(settings)
    storage = defs.resources["catalog"].storage()
    lease = Lease(storage, "cv-dataops status")
    dead = []
    try:
        storage.ensure_exists()
        free = lease.try_acquire() is None
    except (StorageError, OSError):  # no data root yet, or read-only: runs are shown as recorded
        free = False
    if free:  # no batcher alive: this data root's unfinished CLI runs were killed
        try:
            dead = [run.run_id for run in orphaned_runs(instance, {**CLI_TAGS, DATA_ROOT_TAG: storage.uri})]
        finally:
            lease.release()
    try:
        deferred = deferred_counts(defs.resources["catalog"].ledger())
    except (StorageError, OSError):  # no data root yet
        deferred = {}
    return pipeline_status(instance, defs.resolve_asset_graph(), dead_runs=dead, deferred=deferred)


def dagster_ui_hint(landing: str, data_root: str) -> str:
    home = default_dagster_home(data_root).resolve()
    env = f"DAGSTER_HOME={home} CV_DATAOPS_LANDING={_shell(landing)} CV_DATAOPS_DATA_ROOT={_shell(data_root)}"
    return (f"{env} {shlex.quote(sys.executable)} -m dagster dev -w {_shell(str(home / 'workspace.yaml'))}   "
            "(then open http://127.0.0.1:3000)")


def _shell(uri: str) -> str:
    text = uri if "://" in uri else str(Path(uri).resolve())
    return text if all(c.isalnum() or c in "/._-:" for c in text) else "'" + text.replace("'", "'\\''") + "'"
