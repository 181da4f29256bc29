"""Every stage reconciles by itself: a killed or failed run is finished by the next one (or the reconcile sensor),
errors say their cause in one line, and a killed run leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from cv_dataops.config import Settings
from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC, encode, photo, write_files

PER_BATCH_TABLES = ("quality", "embeddings")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _environment(home: Path) -> dict:
    return {**os.environ, "DAGSTER_HOME": str(home), "CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC),
            "CV_DATAOPS_WORKERS": "2"}


def _prepare_instance(home: Path) -> None:
    """Create the instance's storage before the CLI runs, so that polling it never races its creation."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        dg.DagsterInstance.from_config(str(home)).dispose()


def _cli(home: Path, *args: str, **popen) -> subprocess.Popen:
    _prepare_instance(home)
    return subprocess.Popen([sys.executable, "-m", "cv_dataops.cli", *args], env=_environment(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def _run_to_end(home: Path, landing: Path, root: Path) -> subprocess.CompletedProcess:
    proc = _cli(home, "run", "--landing", str(landing), "--data-root", str(root))
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _step_started(home: Path, step_key: str, job_name: str):
    """The id of a run of ``job_name`` in which ``step_key`` has started (None: not yet)."""
    if not (home / "dagster.yaml").exists():
        return None
    from dagster._core.events import DagsterEventType

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs(filters=dg.RunsFilter(job_name=job_name,
                                                           statuses=[dg.DagsterRunStatus.STARTED])):
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START):
                if entry.step_key == step_key:
                    return run.run_id
    return None


def _kill_main_process_only(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI process alone (as the OOM killer would): its children must go by themselves."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_group_empties(pgid: int) -> None:
    try:
        _wait_for(lambda: not _group_members(pgid), 15, "the killed run's processes to exit")
    finally:
        leftover = _group_members(pgid)
        if leftover:
            os.killpg(pgid, signal.SIGKILL)
        assert not leftover, f"processes left behind by the killed run: {leftover}"


def _assert_every_image_in_every_table(root: Path, batches: int) -> None:
    images = pq.read_table(root / "catalog" / "images").to_pandas()
    assert images.image_id.is_unique and images.batch_id.nunique() == batches
    ids = set(images.image_id)
    for name in PER_BATCH_TABLES + ("scenarios",):
        table = pq.read_table(root / "catalog" / name).to_pandas()
        assert table.image_id.is_unique, f"{name} has doubled rows"
        assert set(table.image_id) == ids, f"{name} misses {len(ids - set(table.image_id))} image(s)"
    objects = pq.read_table(root / "catalog" / "objects").to_pandas()
    assert not objects.duplicated(["uri", "version"]).any()


def _status_all_done(home: Path, landing: Path, root: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "cv_dataops.cli", "status", "--landing", str(landing),
                             "--data-root", str(root)], env=_environment(home), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "UNFINISHED" not in result.stdout and "outdated" not in result.stdout, result.stdout
    assert "never" not in result.stdout and "failed" not in result.stdout, result.stdout
    return result.stdout


@pytest.mark.slow  # two or three real `cv-dataops run` processes
@pytest.mark.parametrize("stage", ["image_quality", "image_embeddings", "downstream"])
def test_kill_9_mid_stage_then_the_next_run_finishes_everything(tmp_path, stage):
    landing, root, home = tmp_path / "landing", tmp_path / "data", tmp_path / "home"
    write_files(landing, {f"a/{i}.jpg": encode(photo(i), "JPEG") for i in range(40)})
    batches = 1
    if stage == "downstream":
        first = _run_to_end(home, landing, root)
        assert first.returncode == 0, first.stderr
        write_files(landing, {f"b/{i}.jpg": encode(photo(100 + i), "JPEG") for i in range(20)})
        batches = 2
        step, job = "image_duplicates", "__ASSET_JOB"
    else:
        step, job = stage, "ingest_batch"

    proc = _cli(home, "run", "--landing", str(landing), "--data-root", str(root))
    try:
        run_id = _wait_for(lambda: _step_started(home, step, job), 300, f"step {step} to start", proc)
        if stage == "image_quality":  # the measuring pool is up
            _wait_for(lambda: len(_group_members(proc.pid)) > 1, 60, "a quality worker process", proc)
        _kill_main_process_only(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_group_empties(proc.pid)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = instance.get_run_by_id(run_id)
        assert killed.status == dg.DagsterRunStatus.STARTED  # it really died mid-run: nobody closed it
        if stage != "downstream":  # and mid-stage: the stage was not materialized
            (batch_id,) = instance.get_dynamic_partitions("batches")
            assert batch_id not in instance.get_materialized_partitions(dg.AssetKey(stage))

    shown = subprocess.run([sys.executable, "-m", "cv_dataops.cli", "status", "--landing", str(landing),
                            "--data-root", str(root)], env=_environment(home), capture_output=True, text=True,
                           timeout=300)
    assert f"run {run_id[:8]} killed" in shown.stdout and "UNFINISHED" in shown.stdout or stage == "downstream"
    assert f"run {run_id[:8]} killed" in shown.stdout, shown.stdout + shown.stderr

    again = _run_to_end(home, landing, root)
    assert again.returncode == 0, again.stderr
    refreshed = next(line for line in again.stdout.splitlines() if "downstream assets refreshed:" in line)
    assert "marked failed" in again.stdout and "curated_dataset" in refreshed.split(":", 1)[1], again.stdout
    _assert_every_image_in_every_table(root, batches)
    _status_all_done(home, landing, root)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE

    third = _run_to_end(home, landing, root)  # and then there is nothing left to do
    assert third.returncode == 0 and "nothing new landed" in third.stdout, third.stdout + third.stderr


@pytest.mark.slow  # runs the per-batch job several times
def test_a_failed_stage_is_finished_by_the_next_run_and_the_error_is_one_line(tmp_path, monkeypatch):
    """Stages that fail (here: a wrong quality setting, which fails the whole in-process run) leave their batch
    failed; the next run, with the cause fixed, runs only what is unfinished, then refreshes what spans all batches."""
    from cv_dataops.runner import PipelineFailed, open_instance, run_pipeline

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    landing, root = tmp_path / "landing", tmp_path / "data"
    write_files(landing, {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(4)})
    fixed = Settings.build(embedder=dict(TINY_EMBEDDER_SPEC))
    broken = Settings.from_environment({"CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}).replace(
        embedder=dict(TINY_EMBEDDER_SPEC))
    instance = open_instance(str(root))
    run_pipeline(instance, landing=str(landing), data_root=str(root), settings=fixed, select=["raw_images"])
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(instance, landing=str(landing), data_root=str(root), settings=broken)
    message = str(failed.value)
    assert message.startswith("batch ") and "drak" in message and "\n" not in message
    status = failed.value.summary.status
    (batch,) = status.batches
    assert batch.stages["raw_images"].state == "done"
    assert batch.stages["image_embeddings"].state == batch.stages["image_quality"].state == "failed"

    summary = run_pipeline(instance, landing=str(landing), data_root=str(root), settings=fixed)
    assert summary.ingested_batches == [batch.batch_id] and summary.downstream_assets
    last_batch_run = [r for r in instance.get_runs() if r.job_name == "ingest_batch"][0]
    assert {k.to_user_string() for k in last_batch_run.asset_selection} == {"image_quality", "image_embeddings",
                                                                              "drift_report"}
    # the daemon never retries a CLI run (a retry would carry the CLI's tag without its lease)
    assert all(r.tags.get("dagster/max_retries") == "0" for r in instance.get_runs())
    assert all(s.state == "done" for b in summary.status.batches for s in b.stages.values())
    assert all(s.state == "fresh" for s in summary.status.spanning.values())
    _assert_every_image_in_every_table(root, 1)
    assert not run_pipeline(instance, landing=str(landing), data_root=str(root), settings=fixed).run_ids


@pytest.mark.slow  # runs the pipeline three times
def test_spanning_assets_outdated_by_a_selected_run_are_refreshed_by_the_next_plain_run(tmp_path, monkeypatch):
    """A run limited to per-batch assets brings in a batch but leaves what spans all batches outdated; the next
    plain run ingests nothing new and must still refresh them."""
    from cv_dataops.runner import open_instance, run_pipeline

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    landing, root = tmp_path / "landing", tmp_path / "data"
    write_files(landing, {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(4)})
    settings = Settings.build(embedder=dict(TINY_EMBEDDER_SPEC))
    instance = open_instance(str(root))
    run_pipeline(instance, landing=str(landing), data_root=str(root), settings=settings)
    write_files(landing, {f"more/{i}.jpg": encode(photo(i), "JPEG") for i in range(10, 13)})
    selected = run_pipeline(instance, landing=str(landing), data_root=str(root), settings=settings,
                            select=["raw_images", "image_quality", "image_embeddings"])
    assert len(selected.ingested_batches) == 1 and not selected.downstream_assets

    plain = run_pipeline(instance, landing=str(landing), data_root=str(root), settings=settings)
    # nothing new landed: the batch's one stage left out of the selection (its drift report), then what spans all
    assert plain.new_batches == [] and plain.ingested_batches == selected.ingested_batches and plain.downstream_assets
    assert instance.get_run_by_id(plain.run_ids[0]).asset_selection == {dg.AssetKey("drift_report")}
    assert all(s.state == "fresh" for s in plain.status.spanning.values())
    _assert_every_image_in_every_table(root, 2)


def test_a_step_error_is_its_cause_in_one_line(tmp_path):
    """What user code raised (and what it was raised from), not Dagster's "Error occurred while executing op"."""
    from cv_dataops.runner import _failure_message

    @dg.asset
    def image_embeddings():
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("cannot write the embeddings table") from error

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([image_embeddings], instance=instance, raise_on_error=False)
    assert _failure_message(result, "batch 0003") == (
        "batch 0003: image_embeddings: cannot write the embeddings table: [Errno 28] No space left on device")


def test_the_reconcile_sensor_re_requests_failed_batches_with_fresh_keys_backoff_and_a_cap(tmp_path, monkeypatch):
    from cv_dataops.definitions import load_definitions
    from cv_dataops.defs.shared import reconcile
    from cv_dataops.runner import execute_job, open_instance

    write_files(tmp_path / "landing", {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(2)})
    broken = Settings.from_environment({"CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}).replace(
        landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"), min_age_seconds=0,
        embedder=dict(TINY_EMBEDDER_SPEC))
    defs = load_definitions(broken)
    instance = open_instance(str(tmp_path / "data"))
    (manifest,) = defs.resources["catalog"].ledger().plan(defs.resources["landing"].storage(), min_age_seconds=0)
    batch_id = manifest.batch_id
    instance.add_dynamic_partitions("batches", [batch_id])
    job = defs.resolve_job_def("ingest_batch")
    ingested = execute_job(job, instance, partition_key=batch_id,
                           asset_selection=[dg.AssetKey("raw_images"), dg.AssetKey("image_embeddings")])
    assert ingested.success

    sensor = defs.resolve_sensor_def("reconcile_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    def tick():
        resources = {key: defs.resources[key] for key in sensor.required_resource_keys}
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context:
            return sensor(context)

    assert not tick().run_requests  # never failed: nothing to re-request
    for attempt in range(reconcile.MAX_ATTEMPTS):
        assert not execute_job(job, instance, partition_key=batch_id,
                               asset_selection=[dg.AssetKey("image_quality")]).success
        if attempt == 0:  # just failed: backing off
            result = tick()
            assert not result.run_requests and "backing off" in result.skip_reason.skip_message
        monkeypatch.setattr(reconcile, "BACKOFF_SECONDS", 0.0)
        result = tick()
        if attempt + 1 < reconcile.MAX_ATTEMPTS:
            (request,) = result.run_requests
            assert request.run_key == f"batch:{batch_id}:attempt:{attempt + 1}"  # fresh each time
            # the failed stage and what it kept from running (the drift report reads the quality rows)
            assert request.partition_key == batch_id and set(request.asset_selection) == {
                dg.AssetKey("image_quality"), dg.AssetKey("drift_report")}
        monkeypatch.setattr(reconcile, "BACKOFF_SECONDS", 60.0)
    result = tick()  # capped: it stays failed, and says so
    assert not result.run_requests and "gave up" in result.skip_reason.skip_message
    assert batch_id in result.skip_reason.skip_message


@pytest.mark.slow  # runs the spanning assets several times
def test_the_reconcile_sensor_re_requests_failed_or_outdated_spanning_assets_once_per_situation(tmp_path,
                                                                                                 monkeypatch):
    """A spanning asset whose last attempt failed is requested again (with what spans and depends on it), once per
    failure however many ticks see it, with backoff and a cap; one a batch changed since is requested once per
    change. One request per tick, and none while a batch is still to be finished."""
    from cv_dataops.definitions import load_definitions
    from cv_dataops.defs.shared import reconcile
    from cv_dataops.runner import execute_job, open_instance

    landing, root = tmp_path / "landing", tmp_path / "data"
    write_files(landing, {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(4)})
    common = {"landing": str(landing), "data_root": str(root), "min_age_seconds": 0,
              "embedder": dict(TINY_EMBEDDER_SPEC)}
    broken = Settings.from_environment({"CV_DATAOPS_CURATION": '{"budgt": 1}'}).replace(**common)
    fixed = Settings.build(**common)
    defs = load_definitions(broken)
    instance = open_instance(str(root))
    (manifest,) = defs.resources["landing"].plan(defs.resources["catalog"].ledger())
    instance.add_dynamic_partitions("batches", [manifest.batch_id])
    graph = defs.resolve_asset_graph()
    per_batch = [dg.AssetKey(name) for name in ("raw_images", "image_quality", "image_embeddings", "drift_report")]
    execute_job(defs.resolve_job_def("ingest_batch"), instance, partition_key=manifest.batch_id,
                asset_selection=per_batch)  # its checks may judge the synthetic photos: only the stages matter
    spanning = sorted(set(graph.get_all_asset_keys()) - set(per_batch), key=lambda k: k.to_user_string())
    descending = [key for key in spanning if graph.get(key).parent_keys]
    refresh = defs.resolve_job_def("refresh_spanning")
    # the curation resource refuses its settings, so the whole in-process run fails: every spanning asset failed
    assert not execute_job(refresh, instance, asset_selection=spanning).success

    sensor = defs.resolve_sensor_def("reconcile_sensor")
    cursor = [None]

    def tick(definitions=defs):
        resources = {key: definitions.resources[key] for key in sensor.required_resource_keys}
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=definitions,
                                     cursor=cursor[0]) as context:
            result = sensor(context)
        cursor[0] = result.cursor or cursor[0]
        return result

    keys = set()
    for attempt in range(reconcile.MAX_ATTEMPTS):
        (request,) = tick().run_requests
        assert request.job_name == "refresh_spanning" and request.tags["cv_dataops/reconcile"] == "spanning"
        # every spanning asset that descends from a batch; review_decisions (no upstream: it reads reviews/) is
        # requested when its own step was one of those that failed, which depends on the order steps ran in
        assert [key for key in request.asset_selection if graph.get(key).parent_keys] == descending
        assert request.run_key not in keys  # fresh for each failure
        keys.add(request.run_key)
        again = tick()  # the same failure seen again: no second request
        assert not again.run_requests and "already requested" in again.skip_reason.skip_message
        assert not execute_job(refresh, instance, asset_selection=request.asset_selection, tags=request.tags).success
        monkeypatch.setattr(reconcile, "BACKOFF_SECONDS", 60.0)
        waiting = tick()
        assert not waiting.run_requests
        assert ("backing off" if attempt + 1 < reconcile.MAX_ATTEMPTS else "gave up") in \
            waiting.skip_reason.skip_message
        monkeypatch.setattr(reconcile, "BACKOFF_SECONDS", 0.0)
    assert "gave up after" in tick().skip_reason.skip_message  # capped: it stays failed, and says so

    # fixed: a plain run refreshes everything; a batch changing afterwards outdates every spanning asset once
    fixed_defs = load_definitions(fixed)
    assert execute_job(fixed_defs.resolve_job_def("refresh_spanning"), instance, asset_selection=spanning).success
    assert not tick(fixed_defs).run_requests
    execute_job(fixed_defs.resolve_job_def("ingest_batch"), instance, partition_key=manifest.batch_id,
                asset_selection=[dg.AssetKey("image_embeddings")])
    waiting = tick(fixed_defs)  # outdated: the automation sensor has the first go
    assert not waiting.run_requests and "left to the automation sensor" in waiting.skip_reason.skip_message
    monkeypatch.setattr(reconcile, "OUTDATED_GRACE_SECONDS", 0.0)  # it did not pick them up
    (request,) = tick(fixed_defs).run_requests
    assert request.run_key.endswith(":-") and request.run_key not in keys  # outdated, not failed
    assert request.asset_selection == descending  # each has a per-batch ancestor, so each is older than the change
    assert not tick(fixed_defs).run_requests  # once per change


def test_quality_workers_die_with_their_parent_even_by_sigkill(tmp_path):
    """measure_stream's pool workers exit when the process that owns the pool is SIGKILLed."""
    script = (
        "import sys, time\n"
        "from cv_dataops.quality.measure import measure_stream\n"
        "def items():\n"
        "    yield 'a', sys.argv[1]\n"
        "    print('started', flush=True)\n"
        "    time.sleep(600)\n"
        "    yield 'b', sys.argv[1]\n"
        "if __name__ == '__main__':\n"
        "    for _ in measure_stream(items(), workers=2, chunk_size=1, start_method=sys.argv[2]):\n"
        "        pass\n")
    image = write_files(tmp_path, {"x.jpg": encode(photo(1), "JPEG")}) / "x.jpg"
    for method, processes in (("fork", 3), ("forkserver", 4), ("spawn", 3)):  # fork starts every worker
        proc = subprocess.Popen([sys.executable, "-c", script, str(image), method], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == "started"
            _wait_for(lambda: len(_group_members(proc.pid)) >= processes, 60, f"the {method} workers")
            time.sleep(0.5)  # past the workers' initializer
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        _assert_group_empties(proc.pid)
