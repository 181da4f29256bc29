"""The data model is defined once in code, and the catalog and docs follow it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.ingest.tables import IMAGES, QUARANTINE
from cv_dataops.tables import TABLES, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-model.md"


def test_data_model_doc_is_generated_from_the_code():
    assert render_markdown() in DOC.read_text(), (
        "docs/data-model.md is out of date: paste the output of "
        "`python -c 'from cv_dataops.tables import render_markdown; print(render_markdown())'`")


def test_public_columns_are_there():
    assert {"image_id", "uri", "batch_id", "width", "height", "format", "mode", "bytes", "captured_at",
            "camera_make", "camera_model", "exif_orientation"} <= set(IMAGES.column_names)
    assert {"uri", "batch_id", "reason", "detail"} <= set(QUARANTINE.column_names)


def test_catalog_round_trip_and_validation(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path))
    row = {"uri": "/x.jpg", "batch_id": "b1", "relative_path": "x.jpg", "reason": "truncated", "detail": "cut",
           "bytes": 3, "quarantined_at": None}
    with pytest.raises(ValueError, match="has nulls"):
        catalog.write(QUARANTINE, QUARANTINE.from_rows([row]), "b1")
    row["quarantined_at"] = pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()
    catalog.write(QUARANTINE, QUARANTINE.from_rows([row]), "b1")
    catalog.write(QUARANTINE, QUARANTINE.from_rows([{**row, "batch_id": "b2"}]), "b2")
    assert catalog.partitions(QUARANTINE) == ["b1", "b2"]
    assert catalog.read("quarantine").num_rows == 2
    assert catalog.read("quarantine", ["b2"]).column("batch_id").to_pylist() == ["b2"]
    assert catalog.read("images").num_rows == 0 and catalog.read("images").schema.equals(IMAGES.arrow_schema)
    with pytest.raises(ValueError, match="unknown|no column"):
        QUARANTINE.from_rows([{"nonsense": 1}])
    with pytest.raises(KeyError, match="known tables"):
        catalog.read("nope")


def test_every_table_is_documented_with_every_column():
    text = DOC.read_text()
    for table in TABLES.values():
        assert f"### `{table.name}`" in text
        for column in table.columns:
            assert f"`{column.name}`" in text


def test_a_file_written_before_a_column_was_added_reads_it_as_null(tmp_path):
    """Columns are added, never removed: drift_summary gained estimated_accuracy after reports were written."""
    import io

    import pyarrow.parquet as pq

    from cv_dataops.drift.tables import DRIFT_SUMMARY

    catalog = Catalog(LocalStorage(tmp_path))
    old = DRIFT_SUMMARY.from_rows([{"batch_id": "b1", "reference_id": None, "drifted": False, "severity": "none",
                                    "top_cause": None, "causes": None, "report_uri": None}])
    old = old.drop_columns(["estimated_accuracy", "reference_accuracy"])
    buffer = io.BytesIO()
    pq.write_table(old, buffer)
    catalog.storage.write_bytes(catalog.key(DRIFT_SUMMARY, "b1"), buffer.getvalue())
    (row,) = catalog.read(DRIFT_SUMMARY).to_pylist()
    assert row["severity"] == "none" and row["estimated_accuracy"] is None and row["reference_accuracy"] is None
    (part,) = catalog.read(DRIFT_SUMMARY, columns=["batch_id", "estimated_accuracy"]).to_pylist()
    assert part == {"batch_id": "b1", "estimated_accuracy": None}  # a column read alone, too
    without_batch = old.drop_columns(["batch_id"])  # a column that may not be null is still required
    buffer = io.BytesIO()
    pq.write_table(without_batch, buffer)
    catalog.storage.write_bytes(catalog.key(DRIFT_SUMMARY, "b2"), buffer.getvalue())
    with pytest.raises(ValueError, match="lacks column 'batch_id'"):
        catalog.read(DRIFT_SUMMARY)
