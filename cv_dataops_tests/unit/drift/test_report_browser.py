"""The drift report renders offline in headless Chromium: no request leaves the file, the inline SVG plots draw and
the thumbnails (data: URIs the page's Content-Security-Policy allows) decode. Reuses the validation pages' harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv_dataops.core.storage import LocalStorage
from cv_dataops.drift.report import write_report
from cv_dataops_tests.unit.drift.test_report import _png, _result
from cv_dataops_tests.unit.test_validation_report_browser import _clean, browser  # noqa: F401  (a fixture)


@pytest.mark.slow
def test_the_drift_report_renders_offline_with_plots_and_thumbnails(tmp_path, browser):  # noqa: F811
    result = _result("00000003-20261202T070000Z-cccccccc")
    first_ranks = result.atypicality.sort_values("rank")["image_id"].head(3)
    uri = write_report(LocalStorage(tmp_path / "data"), result, {image_id: _png() for image_id in first_ranks})
    page = browser.open(Path(uri).as_uri())
    assert _clean(page), page  # a blocked data: image or style would be a console error
    assert "sharpness dropped" in browser.evaluate("document.querySelector('ol.causes').innerText")
    assert browser.evaluate("document.querySelectorAll('.plots svg polyline').length") >= 2
    widths = browser.evaluate("[...document.querySelectorAll('.thumbs img')].map(i => i.naturalWidth)")
    assert widths == [8, 8, 8]
    assert browser.evaluate("document.querySelectorAll('tr.drifted').length") >= 1
