"""The GX suite of the quality table (derived from its schema) and the validation pages written per batch, on a
local folder and on the real S3 API."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from cv_dataops.quality import expectations
from cv_dataops.quality.expectations import (
    load_suite_spec,
    suite_expectations,
    validate_frame,
)
from cv_dataops.quality.issues import issue_names
from cv_dataops.quality.tables import QUALITY
from cv_dataops.quality.validation_report import (
    INDEX_CACHE,
    INDEX_PAGE,
    REPORTS_PREFIX,
    report_key,
    validate_and_report,
    write_report,
)


def valid_quality_rows(count: int) -> list[dict]:
    """``count`` rows of the quality table that satisfy every rule of its suite."""
    rows = []
    for i in range(count):
        row = {c: 0.5 for c in QUALITY.column_names if c.endswith("_score")}
        row.update({c: False for c in QUALITY.column_names if c.startswith("is_")})
        row.update(image_id=f"{i:064x}", batch_id="b", width=10, height=10, brightness=0.5,
                   dark_clipped_fraction=0.0, light_clipped_fraction=0.0, rms_contrast=0.2, colourfulness=3.0,
                   noise_sigma=1.0, sharpness=5.0, entropy=6.0, jpeg_quality=None if i % 2 else 90,
                   analysis_width=10, analysis_height=10, phash=1, dhash=2, pixel_hash=f"{i + 7:064x}",
                   quality_version="1")
        rows.append(row)
    return rows


def _frame(count: int = 5) -> pd.DataFrame:
    return QUALITY.from_rows(valid_quality_rows(count)).to_pandas()


def _by_type(found: list[dict], kind: str) -> list[dict]:
    return [e["kwargs"] for e in found if e["type"] == kind]


def test_the_suite_comes_from_the_schema_and_the_issue_registry():
    found = suite_expectations("quality")
    (column_set,) = _by_type(found, "expect_table_columns_to_match_set")
    assert column_set == {"column_set": QUALITY.column_names, "exact_match": True}
    not_null = {k["column"] for k in _by_type(found, "expect_column_values_to_not_be_null")}
    assert not_null == {c.name for c in QUALITY.columns if not c.nullable}
    assert "jpeg_quality" not in not_null  # nullable in the schema: PNGs have no JPEG quality
    ranges = {k["column"]: (k.get("min_value"), k.get("max_value"))
              for k in _by_type(found, "expect_column_values_to_be_between")}
    assert all(ranges[f"{issue}_score"] == (0.0, 1.0) for issue in issue_names())
    assert ranges["entropy"] == (0, 8) and ranges["colourfulness"] == (0, None)
    # the file lists no column the schema already gives
    spec = load_suite_spec("quality")
    assert "column_set" not in json.dumps(spec) and all(
        e["type"] != "expect_column_values_to_not_be_null" for e in spec["expectations"])


def test_a_suite_naming_a_column_the_table_lacks_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "typo.json").write_text(json.dumps({"name": "typo", "table": "quality",
                                                    "ranges": {"brightnes": [0, 1]}}))
    monkeypatch.setattr(expectations, "SUITES_DIR", tmp_path)
    with pytest.raises(ValueError, match="brightnes"):
        suite_expectations("typo")


def test_bad_rows_fail_and_say_what_was_observed():
    good = _frame()
    summary = validate_frame(good, "quality", "good")
    assert summary.success and summary.successful == summary.evaluated == len(suite_expectations("quality"))
    assert summary.rows == 5 and summary.batch_id == "good"
    assert validate_frame(QUALITY.empty().to_pandas(), "quality", "empty").success  # every file was quarantined

    bad = good.assign(dark_score=[0.5, 1.7, 0.5, 0.5, 0.5], entropy=9.0)
    bad.loc[2, "image_id"] = None
    summary = validate_frame(bad, "quality", "bad")
    assert not summary.success
    failed = {(f["expectation"], f["column"]): f for f in summary.failures}
    assert set(failed) == {("expect_column_values_to_be_between", "dark_score"),
                           ("expect_column_values_to_be_between", "entropy"),
                           ("expect_column_values_to_not_be_null", "image_id")}  # a null has no wrong length
    dark = failed[("expect_column_values_to_be_between", "dark_score")]
    assert dark["unexpected_count"] == 1 and "1 of 5 unexpected" in dark["observed"] and "to 1.7" in dark["observed"]
    (outcome,) = [o for o in summary.outcomes if o.column == "dark_score" and not o.success]
    assert outcome.unexpected_sample == [pytest.approx(1.7)]

    missing_column = validate_frame(good.drop(columns=["entropy"]), "quality", "narrow")
    (columns,) = [o for o in missing_column.outcomes if o.type == "expect_table_columns_to_match_set"]
    assert not columns.success and "missing: entropy" in columns.observed


def test_one_gx_context_serves_every_batch_of_the_process():
    validate_frame(_frame(), "quality", "one")
    context = expectations._validator().context
    validate_frame(_frame(3), "quality", "two")
    assert expectations._validator().context is context
    assert not list(context.list_data_docs_sites())  # no Data Docs site is built


def test_the_context_prepared_in_the_background_is_the_one_validations_use(monkeypatch):
    monkeypatch.setattr(expectations, "_VALIDATOR", None)
    expectations.prepare_in_background().join(timeout=120)
    prepared = expectations._VALIDATOR
    assert prepared is not None
    assert validate_frame(_frame(), "quality", "one").success and expectations._validator() is prepared

    def broken():
        raise RuntimeError("no GX here")

    monkeypatch.setattr(expectations, "_VALIDATOR", None)
    monkeypatch.setattr(expectations, "_Validator", broken)
    expectations.prepare_in_background().join(timeout=120)  # a failure waits for the validation that needs it
    with pytest.raises(RuntimeError, match="no GX here"):
        validate_frame(_frame(), "quality", "two")


def test_each_batch_gets_a_self_contained_page_and_the_index_lists_them(storage):
    first = validate_and_report(_frame(), "quality", "00000001-20261202T060000Z-aaaaaaaa", storage)
    second = validate_and_report(_frame().assign(dark_score=1.5), "quality", "00000002-20261202T061000Z-bbbbbbbb",
                                 storage)
    assert first.success and not second.success
    assert second.report_uri == storage.uri_of(report_key("quality", second.batch_id))
    assert second.index_uri == storage.uri_of(INDEX_PAGE)

    page = storage.read_text(report_key("quality", second.batch_id))
    assert f"Validation of batch <span class=\"mono batch\">{second.batch_id}</span>" in page
    assert f"{second.successful} passed, {second.evaluated - second.successful} failed of {second.evaluated}" in page
    assert page.count('<tr class="expectation ') == second.evaluated
    assert page.count('<tr class="expectation failed"') == 1 and "observed 1.5 to 1.5" in page
    for outside in ("http://", "https://", "//cdn", "<script", "<link", "src=", "@import", "url("):
        assert outside not in page
    assert "Content-Security-Policy" in page

    index = storage.read_text(INDEX_PAGE)
    assert index.index(second.batch_id) < index.index(first.batch_id)  # newest first
    assert f'href="quality/{first.batch_id}.html"' in index and "FAILED" in index
    written = sorted(info.key for info in storage.list("reports/"))
    assert written == sorted([INDEX_CACHE, INDEX_PAGE] + [report_key("quality", s.batch_id, ext) for s in
                                                          (first, second) for ext in ("html", "json")])


def test_the_index_heals_from_the_pages_sidecars(storage):
    summary = validate_frame(_frame(), "quality", "any")
    for number in range(1, 3):
        write_report(storage, replace(summary, batch_id=f"0000000{number}-x"))
    storage.delete(INDEX_CACHE)  # lost, or overwritten by a concurrent batch that had not seen these
    write_report(storage, replace(summary, batch_id="00000003-x"))
    cached = json.loads(storage.read_text(INDEX_CACHE))
    assert [e["batch_id"] for e in cached] == ["00000003-x", "00000002-x", "00000001-x"]

    storage.delete(report_key("quality", "00000001-x", "json"))  # a batch's report removed
    storage.delete(report_key("quality", "00000001-x"))
    write_report(storage, replace(summary, batch_id="00000004-x"))
    assert "00000001-x" not in storage.read_text(INDEX_PAGE)
    assert "00000002-x" in storage.read_text(INDEX_PAGE)


def test_a_hostile_batch_id_is_escaped_in_keys_and_pages(tmp_path):
    from cv_dataops.core.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    batch_id = "../<script>alert(1)</script>&x"
    summary = validate_and_report(_frame(), "quality", batch_id, storage)
    key = report_key("quality", batch_id)
    assert key.startswith(f"{REPORTS_PREFIX}/quality/") and key.count("/") == 3 and ".." not in key.split("/")
    page = storage.read_text(key)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert summary.report_uri == str(tmp_path / key)
    # the index links to the file by its escaped name (its '%' escaped again, as a URL path needs)
    from urllib.parse import quote, unquote

    index = storage.read_text(INDEX_PAGE)
    href = index.split('class="mono" href="')[1].split('"')[0]
    assert href == quote(key[len(REPORTS_PREFIX) + 1:]).replace("&", "&amp;")
    assert (tmp_path / REPORTS_PREFIX / unquote(href)).is_file()
