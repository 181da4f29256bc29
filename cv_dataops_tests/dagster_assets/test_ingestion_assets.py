"""raw_images through Dagster: materialization, its checks (pass, WARN, blocking ERROR) and the metadata."""

from __future__ import annotations

import dagster as dg
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.ingest import checks
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import build_resources
from cv_dataops_tests.conftest import bad_input_corpus, encode, photo, write_files

ALL_CHECKS = [checks.raw_images_schema, checks.raw_images_unique_image_id, checks.raw_images_accounted_for,
              checks.raw_images_quarantine_rate]


def _plan(tmp_path, instance):
    batches = BatchLedger(LocalStorage(tmp_path / "data")).plan(LocalStorage(tmp_path / "landing"))
    instance.add_dynamic_partitions(batch_partitions.name, [b.batch_id for b in batches])
    return [b.batch_id for b in batches]


def _materialize(tmp_path, instance, batch_id, extra=(), **landing_options):
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"),
                                **landing_options)
    return dg.materialize([raw_images, *ALL_CHECKS, *extra], partition_key=batch_id, instance=instance,
                          resources=resources, raise_on_error=False)


def _check_results(result):
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def test_materialize_bad_corpus_writes_tables_and_passes_checks(tmp_path):
    bad_input_corpus(tmp_path / "landing", tmp_path / "outside")
    instance = dg.DagsterInstance.ephemeral()
    (batch_id,) = _plan(tmp_path, instance)
    result = _materialize(tmp_path, instance, batch_id, quarantine_rate_warn=0.9)
    assert result.success
    evaluations = _check_results(result)
    assert set(evaluations) == {"raw_images_schema", "raw_images_unique_image_id", "raw_images_accounted_for",
                                "raw_images_quarantine_rate"}
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items()}
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    assert catalog.read("images").num_rows == 7
    assert catalog.read("quarantine").num_rows == 10
    assert catalog.read("objects").num_rows == 18
    (materialization,) = result.asset_materializations_for_node("raw_images")
    assert materialization.metadata["quarantined"].value == 10
    assert materialization.metadata["quarantine_reasons"].value["truncated"] == 2


def test_quarantine_rate_over_the_threshold_warns_but_does_not_block(tmp_path):
    write_files(tmp_path / "landing", {"ok.jpg": encode(photo(1), "JPEG"), "a.jpg": b"junk", "b.jpg": b"junk2"})
    instance = dg.DagsterInstance.ephemeral()
    (batch_id,) = _plan(tmp_path, instance)
    result = _materialize(tmp_path, instance, batch_id, quarantine_rate_warn=0.5)
    assert result.success
    rate = _check_results(result)["raw_images_quarantine_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.metadata["quarantine_rate"].value == pytest.approx(2 / 3)


def test_a_failed_blocking_check_stops_downstream_assets(tmp_path):
    """Materializing an older batch after a newer one that holds the same bytes breaks uniqueness: the blocking
    check fails with ERROR and the downstream asset does not run."""
    data = encode(photo(3), "PNG")
    write_files(tmp_path / "landing", {"first.png": data})
    instance = dg.DagsterInstance.ephemeral()
    (older,) = _plan(tmp_path, instance)
    write_files(tmp_path / "landing", {"again/first.png": data})
    (newer,) = _plan(tmp_path, instance)
    ran = []

    @dg.asset(deps=[raw_images], partitions_def=batch_partitions)
    def downstream_of_raw_images() -> None:
        ran.append(True)

    assert _materialize(tmp_path, instance, newer, extra=[downstream_of_raw_images]).success
    assert ran == [True]
    result = _materialize(tmp_path, instance, older, extra=[downstream_of_raw_images])
    assert not result.success
    unique = _check_results(result)["raw_images_unique_image_id"]
    assert not unique.passed and unique.severity == dg.AssetCheckSeverity.ERROR
    assert ran == [True]  # not run again: the blocking check stopped it


def test_asset_carries_the_column_schema():
    spec = next(iter(raw_images.specs))
    schema = spec.metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns][:3] == ["image_id", "uri", "batch_id"]
    assert "cv_dataops/quarantine_schema" in spec.metadata


def test_definitions_load():
    from cv_dataops.definitions import load_definitions

    defs = load_definitions()
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_sensor_def("landing_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("ingest_batch")
