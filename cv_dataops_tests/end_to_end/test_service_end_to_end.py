"""The service for real: Dagster's instance on a Postgres server (Debian's package), the real `dagster-daemon`
process, landing zone and catalog in S3 (moto's server on 127.0.0.1). Images land; the daemon's sensor and run
queue ingest them with nobody calling anything."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import dagster as dg
import pytest

from cv_dataops_tests.conftest import (
    REPOSITORY,
    TINY_EMBEDDER_SPEC,
    _free_port,
    encode,
    photo,
)

pytestmark = pytest.mark.slow  # a Postgres cluster and the real dagster-daemon


def _postgres_binaries() -> Path | None:
    for candidate in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
        if candidate:
            return Path(os.path.realpath(candidate)).parent
    return None


@pytest.fixture(scope="module")
def postgres_port():
    """A throwaway Postgres cluster on 127.0.0.1 (as the `postgres` user when we are root: it refuses root)."""
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs Debian's postgresql)")
    as_postgres: dict = {}
    directory = Path(tempfile.mkdtemp(prefix="cv-dataops-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_postgres = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    port = _free_port()
    data = directory / "data"
    subprocess.run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "dagster"],
                   check=True, capture_output=True, cwd=directory, **as_postgres)
    subprocess.run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"), "-w",
                    "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, cwd=directory, **as_postgres)
    try:
        yield port
    finally:
        subprocess.run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, cwd=directory, **as_postgres)
        shutil.rmtree(directory, ignore_errors=True)


def test_daemon_on_postgres_ingests_what_lands_in_s3(tmp_path, postgres_port, s3_bucket):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"""
storage:
  postgres:
    postgres_db: {{hostname: 127.0.0.1, port: {postgres_port}, username: dagster, password: "", db_name: postgres,
                  scheme: postgresql+psycopg2}}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
telemetry: {{enabled: false}}
""")
    client = boto3.client("s3")
    client.put_object(Bucket=s3_bucket, Key="landing/cat/a.jpg", Body=encode(photo(1), "JPEG"))
    client.put_object(Bucket=s3_bucket, Key="landing/cat/b.png", Body=encode(photo(2), "PNG"))
    client.put_object(Bucket=s3_bucket, Key="landing/dog/broken.jpg", Body=encode(photo(3), "JPEG")[:300])
    environment = {**os.environ, "DAGSTER_HOME": str(home), "CV_DATAOPS_LANDING": f"s3://{s3_bucket}/landing",
                   "CV_DATAOPS_DATA_ROOT": f"s3://{s3_bucket}/root", "CV_DATAOPS_MIN_AGE_SECONDS": "0",
                   # the service is under test, not the embedder: the default's fit alone costs a minute or more
                   "CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC)}
    daemon = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
                              cwd=REPOSITORY, env=environment, start_new_session=True,  # setsid: stop the group
                              stdout=open(tmp_path / "daemon.log", "w"), stderr=subprocess.STDOUT)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            # generous: on a busy 2-core machine the daemon's first ticks take minutes
            deadline = time.time() + 900
            duplicates = dg.AssetKey("image_duplicates")
            while True:
                runs = instance.get_runs()
                if (runs and all(run.is_finished for run in runs)
                        and instance.get_latest_materialization_event(duplicates) is not None):
                    break
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                if time.time() > deadline:
                    seen = [(run.job_name, run.status.value, run.tags.get("dagster/partition")) for run in runs]
                    built = [key.to_user_string() for key in instance.get_asset_keys()
                             if instance.get_latest_materialization_event(key) is not None]
                    pytest.fail(f"after 900 s: runs {seen}; materialized {built}; daemon log tail:\n"
                                + (tmp_path / "daemon.log").read_text()[-3000:])
                time.sleep(2)
            runs = {run.job_name: run for run in instance.get_runs()}
            log = (tmp_path / "daemon.log").read_text()[-3000:]
            # the landing sensor's run for the batch, then Declarative Automation's run for what spans all batches
            assert {"ingest_batch", "__ASSET_JOB"} <= set(runs), log
            assert all(run.is_success for run in runs.values()), log
            assert runs["__ASSET_JOB"].tags.get("dagster/from_automation_condition") == "true"
            assert instance.get_dynamic_partitions("batches") == [runs["ingest_batch"].tags["dagster/partition"]]
            checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey("raw_images"), "raw_images_accounted_for")])
            assert list(checks.values())[0].status.value == "SUCCEEDED"
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)  # dagster-daemon ignores SIGTERM when backgrounded
        daemon.wait()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="root/catalog/")["Contents"]}
    assert {"images", "quarantine", "objects", "quality", "embeddings", "duplicates",
            "duplicate_pairs", "drift_summary", "drift_atypicality"} <= {k.split("/")[2] for k in keys}
