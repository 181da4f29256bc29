"""The command line as a user runs it: in a subprocess, with real exit codes and messages."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import boto3
import pyarrow.parquet as pq
import pytest

from cv_dataops_tests.conftest import (
    TINY_EMBEDDER_SPEC,
    bad_input_corpus,
    encode,
    photo,
    write_files,
)

# The corpora here are a handful of images per class: too few to put one of each class in every split, so the ERROR
# check curated_min_per_class_and_split would fail (exit 3) in tests that are about ingestion, not curation.
SMALL_CORPUS = {"CV_DATAOPS_CURATION": json.dumps({"min_per_class_and_split": 0})}


def cli(*args, cwd=None, env=None, timeout=300):
    """The CLI in a subprocess, with the tiny embedder unless ``env`` names another: these tests are about the
    command line, and the default embedder's fit (200,000 patches whatever the image count) costs 20-60 s a run;
    the demo tests run the default. A variable given as None is left unset."""
    environment = {**os.environ, "CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC), **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "cv_dataops.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=timeout)


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_run_ingests_then_does_nothing_when_nothing_landed(tmp_path, dagster_home):
    expected = bad_input_corpus(tmp_path / "landing", tmp_path / "outside")
    root = tmp_path / "data"
    first = cli("run", "--landing", str(tmp_path / "landing"), "--data-root", str(root), env=SMALL_CORPUS)
    assert first.returncode == 0, first.stderr
    assert "batches run: 1" in first.stdout and "image_duplicates" in first.stdout and "dagster dev" in first.stdout
    images = pq.read_table(root / "catalog" / "images").num_rows
    assert images == sum(1 for outcome in expected.values() if outcome == "image")

    catalog_before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    second = cli("run", "--landing", str(tmp_path / "landing"), "--data-root", str(root), env=SMALL_CORPUS)
    assert second.returncode == 0 and "nothing new landed" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in (root / "catalog").rglob("*") if p.is_file()} == {
        p: t for p, t in catalog_before.items() if "catalog" in p.parts}

    # The runs are in the persistent instance, so the UI shows them afterwards.
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert all(run.is_success for run in runs)
        assert sorted(run.job_name for run in runs) == ["__ASSET_JOB", "ingest_batch"]  # a batch, then what spans all
        assert_listed_under_the_code_locations_jobs(instance, runs)

    write_files(tmp_path / "landing", {"later/new.jpg": encode(photo(42), "JPEG")})
    third = cli("run", "--landing", str(tmp_path / "landing"), "--data-root", str(root), env=SMALL_CORPUS)
    assert third.returncode == 0 and "new batches: 1" in third.stdout
    assert pq.read_table(root / "catalog" / "images").num_rows == images + 1

    # a snapshot's ImageFolder tree, rebuilt from its manifest where training wants it
    curated = pq.read_table(root / "catalog" / "curated").to_pandas()
    (snapshot,) = set(curated["snapshot_id"])
    exported = cli("export", snapshot, "-o", str(tmp_path / "train_here"), "--data-root", str(root))
    assert exported.returncode == 0 and f"wrote {len(curated)} images of {snapshot}" in exported.stdout, exported
    copied = sorted(p.relative_to(tmp_path / "train_here") for p in (tmp_path / "train_here").rglob("*") if p.is_file())
    in_snapshot = sorted(p.relative_to(root / "snapshots" / snapshot / "imagefolder")
                         for p in (root / "snapshots" / snapshot / "imagefolder").rglob("*") if p.is_file())
    assert copied == in_snapshot and len(copied) == len(curated)


def assert_listed_under_the_code_locations_jobs(instance, runs):
    """The UI lists a job's runs with RunsFilter(job_name, tags={.dagster/repository: <repository@location>})
    (dagster_graphql's GraphenePipeline.resolve_runs), the label of the location the workspace file loads."""
    import dagster as dg
    from dagster._core.remote_origin import RemoteRepositoryOrigin
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    from cv_dataops_tests.conftest import REPOSITORY

    (location,) = location_origins_from_yaml_paths([str(REPOSITORY / "workspace.yaml")])
    label = RemoteRepositoryOrigin(location, "__repository__").get_label()
    assert label == "__repository__@cv_dataops"
    for run in runs:
        assert run.remote_job_origin.repository_origin.get_label() == label
        assert run.remote_job_origin.location_name == "cv_dataops" and run.job_code_origin is not None
        listed = instance.get_runs(filters=dg.RunsFilter(job_name=run.job_name, tags={REPOSITORY_LABEL_TAG: label}))
        assert run.run_id in {r.run_id for r in listed}
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="ingest_batch"))) >= 1


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_table_prints_and_exports_safely(tmp_path, dagster_home):
    write_files(tmp_path / "landing", {
        "a.jpg": encode(photo(1), "JPEG"), "=HYPERLINK(evil).jpg": b"not an image",
        "labels.csv": b"path,label\na.jpg,-2+3\n"})
    root = str(tmp_path / "data")
    assert cli("run", "--landing", str(tmp_path / "landing"), "--data-root", root, "--labels", "csv",
               env=SMALL_CORPUS).returncode == 0
    printed = cli("table", "quarantine", "--data-root", root)
    assert printed.returncode == 0 and "not_an_image" in printed.stdout
    for name in ("images", "quarantine", "objects"):
        for suffix in ("csv", "parquet", "json"):
            out = tmp_path / f"{name}.{suffix}"
            assert cli("table", name, "--data-root", root, "-o", str(out)).returncode == 0 and out.stat().st_size
    with open(tmp_path / "quarantine.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["relative_path"] == "'=HYPERLINK(evil).jpg"  # a spreadsheet will not run it
    with open(tmp_path / "images.csv") as handle:
        assert next(csv.DictReader(handle))["label"] == "'-2+3"
    assert {r["outcome"] for r in json.loads((tmp_path / "objects.json").read_text())} == {"image", "quarantined",
                                                                                           "sidecar"}


@pytest.mark.parametrize("args, message", [
    (["run", "--landing", "/definitely/not/here"], "folder does not exist: /definitely/not/here"),
    (["table", "nope"], "no catalog table 'nope'"),
    (["run", "--landing", ".", "--select", "no_such_asset"], "unknown asset(s) no_such_asset"),
    (["table", "images", "-o", "out.xlsx"], "use a .csv, .parquet or .json"),
    (["demo", "--count", "0"], "--count must be at least 1"),
    (["export", "snap-nope", "-o", "out"], "no snapshot 'snap-nope' under"),
])
def test_bad_arguments_give_one_clear_line(tmp_path, dagster_home, args, message):
    (tmp_path / "data").mkdir()
    result = cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_bucket_is_one_clear_line(tmp_path, dagster_home):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
    result = cli("run", "--landing", "s3://some-bucket/in", "--data-root", str(tmp_path / "data"), env=env)
    assert result.returncode != 0 and "cannot reach S3" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_a_failing_step_is_named_and_exits_non_zero(tmp_path, dagster_home):
    """Out-of-order runs break image-id uniqueness; the blocking check fails and the CLI names it."""
    data = encode(photo(5), "PNG")
    write_files(tmp_path / "landing", {"x.png": data})
    root = tmp_path / "data"
    # Make a newer batch holding the same bytes land in the catalog first, then run the older one.
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.ingest.landing import BatchLedger

    ledger = BatchLedger(LocalStorage(root))
    (older,) = ledger.plan(LocalStorage(tmp_path / "landing"))
    write_files(tmp_path / "landing", {"y/x.png": data})
    (newer,) = ledger.plan(LocalStorage(tmp_path / "landing"))
    from cv_dataops.config import Settings
    from cv_dataops.definitions import load_definitions
    from cv_dataops.runner import open_instance

    instance = open_instance(str(root))
    instance.add_dynamic_partitions("batches", [older.batch_id, newer.batch_id])
    defs = load_definitions(Settings.build(landing=tmp_path / "landing", data_root=root))
    assert defs.resolve_job_def("ingest_batch").execute_in_process(instance=instance,
                                                                   partition_key=newer.batch_id).success
    result = cli("run", "--landing", str(tmp_path / "landing"), "--data-root", str(root))
    assert result.returncode == 1
    assert f"batch {older.batch_id}" in result.stderr and "raw_images_unique_image_id" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # the traceback is in the run's logs
    assert f"batch {older.batch_id}: UNFINISHED" in result.stdout  # and where every batch stands


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_a_second_run_on_the_same_data_root_refuses_naming_the_first(tmp_path, dagster_home):
    import time

    write_files(tmp_path / "landing", {f"c/{i}.jpg": encode(photo(i), "JPEG") for i in range(12)})
    root = tmp_path / "data"
    arguments = [sys.executable, "-m", "cv_dataops.cli", "run", "--landing", str(tmp_path / "landing"),
                 "--data-root", str(root)]
    first = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC)})
    try:
        deadline = time.monotonic() + 120
        while not (root / "_leases" / "batcher.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = cli("run", "--landing", str(tmp_path / "landing"), "--data-root", str(root))
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"is being batched by cv-dataops run (pid {first.pid} on " in second.stderr
    objects = pq.read_table(root / "catalog" / "objects").to_pandas()
    assert len(objects) == 12 and objects.uri.is_unique  # one batcher: nothing doubled

    status = cli("status", "--landing", str(tmp_path / "landing"), "--data-root", str(root))
    assert status.returncode == 0 and "batches: 1 done" in status.stdout
    assert "raw_images: done" in status.stdout and "image_embeddings: done" in status.stdout
    assert "curated_dataset: fresh" in status.stdout
    stale = cli("status", "--landing", str(tmp_path / "landing"), "--data-root", str(root),
                env={"CV_DATAOPS_EMBEDDER": None})  # the default: another embedder
    assert "image_embeddings: stale (code version changed)" in stale.stdout and "UNFINISHED" in stale.stdout


@pytest.mark.slow  # the whole pipeline in a subprocess
def test_s3_end_to_end_against_a_real_s3_api(tmp_path, dagster_home, s3_bucket):
    """Landing zone and catalog both in a bucket served by moto's S3 server on 127.0.0.1."""
    client = boto3.client("s3")
    expected = bad_input_corpus(tmp_path / "landing", tmp_path / "outside")
    for path in sorted((tmp_path / "landing").rglob("*")):
        if path.is_file() and not path.is_symlink():
            client.put_object(Bucket=s3_bucket, Key=f"landing/{path.relative_to(tmp_path / 'landing')}",
                              Body=path.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="landing/../escaped.jpg", Body=encode(photo(1), "JPEG"))
    landing, root = f"s3://{s3_bucket}/landing", f"s3://{s3_bucket}/catalog-root"

    result = cli("run", "--landing", landing, "--data-root", root, env=SMALL_CORPUS)
    assert result.returncode == 0, result.stderr
    assert cli("run", "--landing", landing, "--data-root", root, env=SMALL_CORPUS).stdout.startswith(
        "nothing new landed")

    out = tmp_path / "quarantine.parquet"
    assert cli("table", "quarantine", "--data-root", root, "-o", str(out)).returncode == 0
    reasons = dict(zip(pq.read_table(out).column("relative_path").to_pylist(),
                       pq.read_table(out).column("reason").to_pylist()))
    assert reasons["../escaped.jpg"] == "unsafe_path"
    for key, outcome in expected.items():
        if outcome not in ("image", "duplicate", "unsafe_path"):
            assert reasons[key] == outcome
    uris = pq.read_table(out).column("uri").to_pylist()
    assert all(uri.startswith(f"s3://{s3_bucket}/landing/") for uri in uris)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="catalog-root/")["Contents"]]
    assert any(k.startswith("catalog-root/catalog/images/") for k in keys)
    assert any(k.startswith("catalog-root/batches/") for k in keys)
    assert not any("/_tmp/" in k for k in keys)  # atomic writes left no temporary objects
