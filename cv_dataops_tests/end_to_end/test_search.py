"""SQL over the catalog with DuckDB, on a folder and on S3, and from the command line."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage, open_storage
from cv_dataops.discovery.search import run_sql
from cv_dataops.ingest.tables import QUARANTINE
from cv_dataops_tests.end_to_end.test_cli import cli

ROWS = [{"uri": f"/l/{i}.jpg", "batch_id": f"b{i % 2}", "relative_path": f"{i}.jpg",
         "reason": "truncated" if i % 3 else "not_an_image", "detail": "x", "bytes": i,
         "quarantined_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()} for i in range(6)]


@pytest.fixture(params=["local", "s3"])
def catalog(request, tmp_path):
    storage = (LocalStorage(tmp_path) if request.param == "local"
               else open_storage(f"s3://{request.getfixturevalue('s3_bucket')}/root"))
    catalog = Catalog(storage)
    for batch in ("b0", "b1"):
        catalog.write(QUARANTINE, QUARANTINE.from_rows(r for r in ROWS if r["batch_id"] == batch), batch)
    return catalog


def test_sql_sees_every_batch_of_a_table(catalog):
    result = run_sql(catalog, "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY reason")
    assert result.to_pylist() == [{"reason": "not_an_image", "n": 2}, {"reason": "truncated", "n": 4}]
    assert run_sql(catalog, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 0}]  # empty, still queryable


def test_sql_errors_are_clear(catalog):
    with pytest.raises(ValueError, match="SQL error: .*nope"):
        run_sql(catalog, "SELECT nope FROM quarantine")


def test_search_command(tmp_path):
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    catalog.write(QUARANTINE, QUARANTINE.from_rows(ROWS), "b0")
    result = cli("search", "--sql", "SELECT relative_path FROM quarantine WHERE bytes > 3 ORDER BY 1",
                 "--data-root", str(tmp_path / "data"))
    assert result.returncode == 0 and result.stdout.split() == ["relative_path", "4.jpg", "5.jpg"]
    bad = cli("search", "--sql", "SELEC 1", "--data-root", str(tmp_path / "data"))
    assert bad.returncode == 1 and bad.stderr.startswith("cv-dataops: error: SQL error") and "Traceback" not in bad.stderr
