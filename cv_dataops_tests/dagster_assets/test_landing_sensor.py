"""The landing sensor, called directly and through the daemon's own code path in-process."""

from __future__ import annotations

import itertools
import json
import logging
import time

import dagster as dg
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.ingest.sensors import landing_sensor
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.resources import build_resources
from cv_dataops_tests.conftest import (
    REPOSITORY,
    TINY_EMBEDDER_SPEC,
    encode,
    fresh_fork_server,
    photo,
    write_files,
)


def _evaluate(tmp_path, instance, cursor=None):
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"),
                                min_age_seconds=0)
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return landing_sensor(context)


def test_sensor_called_directly_batches_new_objects_once(tmp_path):
    write_files(tmp_path / "landing", {"cat/a.jpg": encode(photo(1), "JPEG"), "cat/b.jpg": encode(photo(2), "JPEG")})
    instance = dg.DagsterInstance.ephemeral()
    first = _evaluate(tmp_path, instance)
    assert isinstance(first, dg.SensorResult)
    (request,) = first.run_requests
    (add,) = first.dynamic_partitions_requests
    assert add.partition_keys == [request.partition_key] and request.run_key == f"batch:{request.partition_key}"
    assert json.loads(first.cursor)["last_batch"] == request.partition_key

    # The tick is repeated from the old cursor (a crash before the cursor was stored): the same run key comes
    # back, so Dagster creates no second run, and no second batch is made from the same objects.
    again = _evaluate(tmp_path, instance)
    assert [r.run_key for r in again.run_requests] == [request.run_key]

    instance.add_dynamic_partitions(batch_partitions.name, add.partition_keys)
    quiet = _evaluate(tmp_path, instance, first.cursor)
    assert isinstance(quiet, dg.SkipReason)

    write_files(tmp_path / "landing", {"dog/c.jpg": encode(photo(3), "JPEG")})
    second = _evaluate(tmp_path, instance, first.cursor)
    (new_request,) = second.run_requests
    assert new_request.partition_key > request.partition_key


def test_the_sensor_skips_planning_while_a_batcher_holds_the_data_root(tmp_path):
    from cv_dataops.core.lease import Lease

    write_files(tmp_path / "landing", {"cat/a.jpg": encode(photo(1), "JPEG")})
    instance = dg.DagsterInstance.ephemeral()
    with Lease(LocalStorage(tmp_path / "data"), "cv-dataops run"):
        skipped = _evaluate(tmp_path, instance)
        assert isinstance(skipped, dg.SkipReason) and "being batched by cv-dataops run" in skipped.skip_message
        assert not (tmp_path / "data" / "batches").exists() or not list((tmp_path / "data" / "batches").iterdir())
    (request,) = _evaluate(tmp_path, instance).run_requests  # released: the next tick plans
    assert request.run_key == f"batch:{request.partition_key}"


@pytest.fixture
def daemon_workspace(tmp_path, monkeypatch):
    """A Dagster instance whose runs execute synchronously, and the daemon's view of our code location."""
    from dagster._core.test_utils import (
        create_test_daemon_workspace_context,
        instance_for_test,
    )
    from dagster._core.workspace.load_target import ModuleTarget

    monkeypatch.setenv("CV_DATAOPS_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("CV_DATAOPS_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("CV_DATAOPS_MIN_AGE_SECONDS", "0")
    monkeypatch.setenv("CV_DATAOPS_EMBEDDER", json.dumps(TINY_EMBEDDER_SPEC))  # the default's fit: a minute a run
    (tmp_path / "landing").mkdir()
    (tmp_path / "home").mkdir()
    with fresh_fork_server(), instance_for_test(
            synchronous_run_launcher=True, synchronous_run_coordinator=True, temp_dir=str(tmp_path / "home"),
            overrides={"run_retries": {"enabled": True}}) as instance:  # as deploy/dagster.yaml
        target = ModuleTarget("cv_dataops.definitions", "defs", str(REPOSITORY), "cv_dataops")
        with create_test_daemon_workspace_context(target, instance) as context:
            yield instance, context


_clock = itertools.count()


def _tick(context) -> None:
    """One sensor-daemon iteration, a minute after the previous one (past the sensor's minimum interval)."""
    from dagster._core.test_utils import freeze_time
    from dagster._daemon.sensor import execute_sensor_iteration

    with freeze_time(time.time() + 60 * next(_clock)):
        list(execute_sensor_iteration(context, logging.getLogger("test-sensor-daemon"), threadpool_executor=None,
                                      submit_threadpool_executor=None))


@pytest.mark.slow  # a code server and the daemon's sensor and run launcher
def test_daemon_tick_adds_partitions_launches_runs_and_fills_tables(tmp_path, daemon_workspace):
    from dagster._core.scheduler.instigation import InstigatorType, SensorInstigatorData

    instance, context = daemon_workspace
    write_files(tmp_path / "landing", {"cat/a.jpg": encode(photo(1), "JPEG"), "cat/bad.jpg": b"nope"})
    _tick(context)  # the sensor is RUNNING by default: no one has to switch it on

    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success
    (batch_id,) = instance.get_dynamic_partitions(batch_partitions.name)
    assert runs[0].tags["dagster/partition"] == batch_id and runs[0].tags["dagster/run_key"] == f"batch:{batch_id}"
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    assert catalog.read("images").num_rows == 1 and catalog.read("quarantine").column("reason").to_pylist() == [
        "not_an_image"]
    assert instance.get_latest_materialization_event(dg.AssetKey("raw_images")) is not None

    (state,) = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                if s.instigator_name == "landing_sensor"]
    cursor_after_first = state.instigator_data.cursor
    ticks = len(instance.get_ticks(state.instigator_origin_id, state.selector_id))
    _tick(context)
    assert len(instance.get_ticks(state.instigator_origin_id, state.selector_id)) == ticks + 1  # it did tick
    assert len(instance.get_runs()) == 1  # nothing new landed: no run

    # Rewind the cursor, as if the daemon died before storing it: the repeated tick makes no second run.
    instance.update_instigator_state(state.with_data(SensorInstigatorData(
        last_tick_timestamp=None, cursor=None, last_sensor_start_timestamp=None,
        sensor_type=state.instigator_data.sensor_type)))
    _tick(context)
    assert len(instance.get_runs()) == 1

    write_files(tmp_path / "landing", {"dog/b.png": encode(photo(2), "PNG")})
    _tick(context)
    runs = instance.get_runs()
    assert len(runs) == 2 and all(run.is_success for run in runs)
    assert len(instance.get_dynamic_partitions(batch_partitions.name)) == 2
    assert catalog.read("images").num_rows == 2
    assert json.loads(cursor_after_first)["batches"] == 1
