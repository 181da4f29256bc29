import io
import re

import numpy as np
from PIL import Image

from cv_dataops.core.storage import LocalStorage
from cv_dataops.drift.detect import DriftSample, DriftSettings, detect_drift
from cv_dataops.drift.report import histogram_svg, render_report, write_report
from cv_dataops_tests.unit.drift.synthetic import properties, vectors


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _result(batch_id="b<1>&"):
    rng = np.random.default_rng(0)
    reference = DriftSample(properties(200, rng), vectors(200, rng))
    batch = DriftSample(properties(40, rng, blur=0.3, start=1000), vectors(40, rng))
    return detect_drift(batch_id, batch, reference, "snap-1", DriftSettings(permutations=320))


def test_the_page_is_self_contained_and_names_the_causes(tmp_path):
    result = _result()
    first = result.atypicality.sort_values("rank")["image_id"].iloc[0]
    page = render_report(result, {first: _png()})
    assert "sharpness dropped" in page and "DRIFT (large: ERROR)" in page
    assert "b&lt;1&gt;&amp;" in page and "b<1>" not in page  # the batch id is escaped
    assert "<svg" in page and "data:image/png;base64," in page
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from anywhere
    assert "default-src 'none'" in page
    uri = write_report(LocalStorage(tmp_path), result)
    assert uri.endswith(".html") and (tmp_path / "reports" / "drift").is_dir()


def test_no_reference_page_says_so():
    rng = np.random.default_rng(1)
    result = detect_drift("b1", DriftSample(properties(10, rng)), None, None, no_reference_reason="no snapshot yet")
    page = render_report(result)
    assert "No reference: no snapshot yet" in page and "no drift" in page


def test_histogram_survives_constant_and_missing_values():
    assert "<polyline" in histogram_svg(np.ones(10), np.ones(5))
    assert "<svg" in histogram_svg(np.array([np.nan]), np.array([1.0]))
