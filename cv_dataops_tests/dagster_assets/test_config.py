"""Configuration in one place: wrong settings are one line naming the setting and what it accepts, they fail only
their own stage, and the command line configures its runs without touching the environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import dagster as dg
import pytest

from cv_dataops.config import STAGES, VARIABLES, ConfigError, Settings
from cv_dataops_tests.conftest import (
    REPOSITORY,
    TINY_EMBEDDER_SPEC,
    encode,
    photo,
    write_files,
)


def one_error(**environment: str) -> str:
    errors = Settings.from_environment(environment).errors
    assert len(errors) == 1, errors
    (message,) = errors.values()
    assert "\n" not in message
    return message


def test_a_mistyped_threshold_names_the_setting_and_the_valid_keys():
    from cv_dataops.quality.measure import QualityThresholds

    message = one_error(CV_DATAOPS_QUALITY_THRESHOLDS='{"drak": 0.5}')
    valid = sorted(QualityThresholds().as_dict())  # every issue type's threshold, and unusable_issues
    assert message == f"CV_DATAOPS_QUALITY_THRESHOLDS: unknown key 'drak'; valid keys: {', '.join(valid)}"


def test_a_mistyped_curation_key_is_an_error_not_ignored():
    from cv_dataops.resources import CurationResource

    message = one_error(CV_DATAOPS_CURATION='{"budgt": 0.25}')
    assert message.startswith("CV_DATAOPS_CURATION: unknown key 'budgt'; valid keys: ")
    listed = message.split("valid keys: ")[1].split(", ")
    assert set(listed) == set(CurationResource.model_fields) - {"settings_error"} and "budget" in listed


@pytest.mark.parametrize("name, value, expected", [
    ("CV_DATAOPS_QUALITY_THRESHOLDS", '{"dark": 1.5}', "dark must be a score threshold between 0 and 1, got 1.5"),
    ("CV_DATAOPS_QUALITY_THRESHOLDS", '{"dark": "low"}', "dark must be a score threshold between 0 and 1"),
    ("CV_DATAOPS_QUALITY_THRESHOLDS", '{"unusable_issues": ["dakr"]}', "dakr"),
    ("CV_DATAOPS_QUALITY_THRESHOLDS", '{"dark": 0.5', "not valid JSON"),
    ("CV_DATAOPS_QUALITY_THRESHOLDS", '[0.5]', "expected a JSON object, got list"),
    ("CV_DATAOPS_CURATION", '{"budget": "lots"}', "budget"),
    ("CV_DATAOPS_CURATION", '{"method": "random"}', "method must be one of herding, k-center"),
    ("CV_DATAOPS_CURATION", '{"budget": 0}', "budget must be in (0, 1]"),
    ("CV_DATAOPS_EMBEDDER", '{"kind": "clip"}', "unknown kind 'clip'; valid kinds: patch-kmeans, onnx"),
    ("CV_DATAOPS_EMBEDDER", '{"kind": "onnx", "path": "m.onnx"}', "needs input_size, mean, std"),
    ("CV_DATAOPS_EMBEDDER", '{"kind": "patch-kmeans", "dimensions": 64}', "unknown key 'dimensions'; valid keys:"),
    ("CV_DATAOPS_WORKERS", "two", "expected an integer, got 'two'"),
    ("CV_DATAOPS_WORKERS", "0", "expected a whole number of processes >= 1, got 0"),
    ("CV_DATAOPS_LABELS", "folders", "unknown value 'folders'; valid values: imagefolder, csv, none"),
    ("CV_DATAOPS_MIN_AGE_SECONDS", "-1", "expected a number of seconds >= 0"),
    ("CV_DATAOPS_DATA_ROOT", "ftp://host/x", "unsupported location 'ftp://host/x'"),
    ("CV_DATAOPS_LANDING", "s3:///prefix", "no bucket"),
    ("CV_DATAOPS_MAX_BYTES", "1e9", "expected an integer, got '1e9'"),
    ("CV_DATAOPS_MAX_BYTES", "0", "expected a whole number of bytes >= 1, got 0"),
    ("CV_DATAOPS_READ_ATTEMPTS", "0", "expected a whole number of tries >= 1, got 0"),
    ("CV_DATAOPS_READ_BACKOFF_SECONDS", "-0.5", "expected a number of seconds >= 0"),
    ("CV_DATAOPS_RETRY_BATCHES", "five", "expected an integer, got 'five'"),
    ("CV_DATAOPS_RETRY_BATCHES", "0", "expected a whole number of batches >= 1, got 0"),
    ("CV_DATAOPS_RETRY_PAUSE_SECONDS", "inf", "expected a number of seconds >= 0"),
])
def test_bad_values_are_one_line_naming_the_setting(name, value, expected):
    message = one_error(**{name: value})
    assert message.startswith(f"{name}: ") and expected in message, message


def test_a_bad_setting_belongs_to_its_stage_and_leaves_the_others_configured():
    settings = Settings.from_environment({"CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}',
                                          "CV_DATAOPS_CURATION": '{"budget": 0.25}',
                                          "CV_DATAOPS_LANDING": "/in", "CV_DATAOPS_WORKERS": "3"})
    assert set(settings.errors) == {"quality"}
    assert settings.stage_error("landing") is None and settings.stage_error("curation") is None
    assert settings.landing == "/in" and settings.curation == {"budget": 0.25}
    assert settings.workers == 3 and settings.quality_thresholds == {}  # the wrong value is not half-applied
    with pytest.raises(ConfigError, match="drak"):
        settings.check()
    assert set(STAGES) == {variable.stage for variable in VARIABLES.values()}


def test_unknown_variables_are_reported():
    settings = Settings.from_environment({"CV_DATAOPS_CURATON": '{"budget": 3}'})
    assert settings.unknown_variables == ("CV_DATAOPS_CURATON",) and not settings.errors


def test_settings_built_from_arguments_never_read_the_environment(monkeypatch):
    monkeypatch.setenv("CV_DATAOPS_QUALITY_THRESHOLDS", '{"drak": 0.5}')
    monkeypatch.setenv("CV_DATAOPS_DATA_ROOT", "/from/the/environment")
    settings = Settings.build(data_root="/explicit", quality_thresholds={"dark": 0.4})
    assert settings.data_root == "/explicit" and settings.quality_thresholds == {"dark": 0.4} and not settings.errors
    assert Settings.build().data_root == "data"
    with pytest.raises(ConfigError, match="CV_DATAOPS_LABELS: unknown value 'x'"):
        Settings.build(labels="x").check()
    replaced = Settings.from_environment().replace(data_root="/cli")
    assert replaced.data_root == "/cli" and "quality" in replaced.errors  # replacing one keeps the others' errors


def test_settings_round_trip_through_the_environment_of_a_child_process():
    settings = Settings.build(landing="s3://b/in", data_root="/root", workers=2, quality_thresholds={"dark": 0.4},
                              curation={"budget": 10})
    assert Settings.from_environment(settings.as_environment()) == settings


def test_label_modes_are_the_ingest_ones():
    from cv_dataops.config import LABEL_MODES
    from cv_dataops.ingest import batch

    assert LABEL_MODES is batch.LABEL_MODES  # one definition, in cv_dataops.ingest.labels


def test_only_config_reads_cv_dataops_variables():
    reads = re.compile(r"(environ|getenv)[^\n]*CV_DATAOPS_")
    offenders = [str(path.relative_to(REPOSITORY)) for path in (REPOSITORY / "cv_dataops").rglob("*.py")
                 if path.name != "config.py" and reads.search(path.read_text())]
    assert offenders == []


def test_importing_the_code_location_reads_nothing_and_loads_with_wrong_settings():
    """A wrong threshold used to make the import of the code location fail (the landing sensor with it)."""
    script = ("import dagster as dg, cv_dataops.definitions as d\n"
              "assert isinstance(d.defs, dg.LazyDefinitions) if hasattr(dg, 'LazyDefinitions') else True\n"
              "import cv_dataops.defs.quality.assets, cv_dataops.defs.embeddings.assets\n"
              "defs = d.load_definitions()\n"
              "print(sorted(s.name for s in defs.sensors), defs.resources['quality'].settings_error)\n")
    environment = {**os.environ, "CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}',
                   "CV_DATAOPS_CURATION": '{"budgt": 0.25}'}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            cwd=REPOSITORY, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "landing_sensor" in result.stdout and "unknown key 'drak'" in result.stdout


def test_code_versions_come_from_the_settings_object():
    from cv_dataops.definitions import load_definitions, settings_code_versions

    default = load_definitions(Settings.build()).resolve_asset_graph()
    darker = Settings.build(quality_thresholds={"dark": 0.5}, embedder={**TINY_EMBEDDER_SPEC})
    changed = load_definitions(darker).resolve_asset_graph()
    for name in ("image_quality", "image_embeddings"):
        key = dg.AssetKey(name)
        assert changed.get(key).code_version == settings_code_versions(darker)[name] != default.get(key).code_version
    assert changed.get(dg.AssetKey("raw_images")).code_version == default.get(dg.AssetKey("raw_images")).code_version


def test_a_wrong_stage_fails_at_run_time_with_its_line_while_ingestion_and_the_sensor_work(tmp_path):
    from cv_dataops.definitions import load_definitions
    from cv_dataops.runner import _failure_message, execute_job, open_instance

    write_files(tmp_path / "landing", {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(3)})
    settings = Settings.from_environment({"CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}).replace(
        landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"), min_age_seconds=0)
    defs = load_definitions(settings)
    instance = open_instance(str(tmp_path / "data"))

    sensor = defs.resolve_sensor_def("landing_sensor")
    resources = {key: defs.resources[key] for key in sensor.required_resource_keys}
    with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context:
        result = sensor(context)
    (request,) = result.run_requests
    instance.add_dynamic_partitions("batches", [request.partition_key])
    job = defs.resolve_job_def("ingest_batch")
    ingested = execute_job(job, instance, partition_key=request.partition_key,
                           asset_selection=[dg.AssetKey("raw_images")])
    assert ingested.success  # the ingest stage does not need the quality settings
    measured = execute_job(job, instance, partition_key=request.partition_key,
                           asset_selection=[dg.AssetKey("image_quality")])
    assert not measured.success
    assert _failure_message(measured, "batch") == f"batch: {settings.stage_error('quality')}"


def test_run_pipeline_passes_its_locations_without_touching_the_environment(tmp_path, monkeypatch):
    from cv_dataops.runner import open_instance, run_pipeline

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CV_DATAOPS_LANDING", "/somewhere/else")
    write_files(tmp_path / "landing", {"a/1.jpg": encode(photo(1), "JPEG")})
    before = dict(os.environ)
    instance = open_instance(str(tmp_path / "data"))
    summary = run_pipeline(instance, landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"),
                           select=["raw_images"], settings=Settings.build(embedder=TINY_EMBEDDER_SPEC))
    assert len(summary.ingested_batches) == 1 and dict(os.environ) == before
    (run,) = instance.get_runs()
    assert run.remote_job_origin.location_name == "cv_dataops" and run.job_name == "ingest_batch"


def test_a_wrong_setting_on_the_command_line_is_one_line_before_anything_heavy(tmp_path):
    script = ("import sys\nfrom cv_dataops.cli import main\ncode = main(sys.argv[1:])\n"
              "print('dagster' in sys.modules, 'pandas' in sys.modules, code)\n")
    for environment, arguments, expected in [
        ({"CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}, ["run", "--landing", str(tmp_path)],
         "cv-dataops: error: CV_DATAOPS_QUALITY_THRESHOLDS: unknown key 'drak'; valid keys: "),
        ({}, ["run", "--landing", str(tmp_path / "nope")], "cv-dataops: error: folder does not exist"),
        ({"CV_DATAOPS_WORKERS": "many"}, ["table", "images"], "cv-dataops: error: CV_DATAOPS_WORKERS: expected"),
    ]:
        result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True,
                                env={**os.environ, **environment}, cwd=tmp_path, timeout=120)
        assert result.stderr.startswith(expected) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout.split() == ["False", "False", "2" if "CV_DATAOPS" in expected else "1"], result.stdout


@pytest.mark.slow
def test_under_the_multiprocess_executor_only_the_wrong_stage_fails(tmp_path):
    """As the daemon runs ingest_batch (a process per step, each starting only its own resources): with a mistyped
    threshold, raw_images and image_embeddings are materialized and image_quality fails with the one-line error."""
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.ingest.landing import BatchLedger

    write_files(tmp_path / "landing", {f"{i}.jpg": encode(photo(i), "JPEG") for i in range(3)})
    root = str(tmp_path / "data")
    (manifest,) = BatchLedger(LocalStorage(root)).plan(LocalStorage(tmp_path / "landing"))
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "CV_DATAOPS_DATA_ROOT": root,
                   "CV_DATAOPS_LANDING": str(tmp_path / "landing"), "CV_DATAOPS_EMBEDDER": json.dumps(TINY_EMBEDDER_SPEC),
                   "CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}
    os.makedirs(tmp_path / "home")
    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    instance.add_dynamic_partitions("batches", [manifest.batch_id])
    result = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m", "cv_dataops.definitions",
                             "-a", "defs", "-j", "ingest_batch", "--tags",
                             json.dumps({"dagster/partition": manifest.batch_id})],
                            env=environment, capture_output=True, text=True, cwd=REPOSITORY, timeout=600)
    assert result.returncode != 0
    materialized = {name for name in ("raw_images", "image_embeddings", "image_quality")
                    if instance.get_latest_materialization_event(dg.AssetKey(name))}
    assert materialized == {"raw_images", "image_embeddings"}, result.stderr[-3000:]
    expected = Settings.from_environment(environment).stage_error("quality")
    assert f"ConfigError: {expected}" in result.stdout + result.stderr


def test_landing_read_settings_reach_the_domain_code_explicitly(tmp_path):
    """The size limit, read tries and pauses, and the retry limit are settings passed down to what reads and
    plans, not constants: the resource's limits and its planning use them."""
    from datetime import UTC, datetime

    from cv_dataops.ingest.landing import BatchLedger
    from cv_dataops.resources import build_resources

    settings = Settings.from_environment({
        "CV_DATAOPS_LANDING": str(tmp_path / "in"), "CV_DATAOPS_DATA_ROOT": str(tmp_path / "data"),
        "CV_DATAOPS_MAX_BYTES": "1000", "CV_DATAOPS_READ_ATTEMPTS": "2", "CV_DATAOPS_READ_BACKOFF_SECONDS": "0.1",
        "CV_DATAOPS_RETRY_BATCHES": "1", "CV_DATAOPS_RETRY_PAUSE_SECONDS": "7", "CV_DATAOPS_MIN_AGE_SECONDS": "0"}
    ).check()
    assert Settings.from_environment(settings.as_environment()) == settings  # a code server loads the same
    landing = build_resources(settings)["landing"]
    limits = landing.limits()
    assert (limits.max_bytes, limits.read_attempts, limits.read_backoff_seconds) == (1000, 2, 0.1)
    assert (landing.retry_batches, landing.retry_pause_seconds) == (1, 7.0)
    defaults = build_resources(Settings.build())["landing"]
    assert (defaults.max_bytes, defaults.read_attempts, defaults.retry_batches) == (512 * 1024 ** 2, 3, 5)

    write_files(tmp_path / "in", {"a.jpg": b"1"})
    ledger = BatchLedger(build_resources(settings)["catalog"].storage())
    (first,) = landing.plan(ledger)
    ledger.record_deferred(first.batch_id, {"a.jpg": "S3 answered 503 SlowDown"}, now=datetime.now(UTC))
    (given_up,) = landing.plan(ledger)  # retry_batches=1: one deferral is the limit
    assert given_up.objects[0].refusal == "unreadable_after_retries"


def test_drift_settings_are_checked_and_reach_the_drift_resource():
    from cv_dataops.resources import build_resources

    good = Settings.from_environment({"CV_DATAOPS_DRIFT": '{"alpha": 0.01, "permutations": 2000, '
                                                          '"webhook_url": "http://127.0.0.1:9/hook"}'})
    drift = build_resources(good)["drift"]
    assert not good.errors and drift.drift_settings().alpha == 0.01 and drift.webhook_url.endswith("/hook")
    for text, words in (('{"alfa": 0.01}', "unknown key 'alfa'"), ('{"permutations": 10}', "at least 320"),
                        ('{"webhook_url": "ftp://x"}', "http:// or https://"),
                        ('{"reference": "yesterday"}', "current_snapshot, named_snapshot, last_batches"),
                        ('{"reference": "named_snapshot"}', "needs a snapshot_id")):
        wrong = Settings.from_environment({"CV_DATAOPS_DRIFT": text})
        assert set(wrong.errors) == {"drift"} and words in wrong.errors["drift"], wrong.errors
        resource = build_resources(wrong)["drift"]
        assert resource.settings_error == wrong.errors["drift"] and resource.alpha == 0.05  # defaults, and the error
