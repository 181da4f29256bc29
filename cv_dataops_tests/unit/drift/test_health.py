"""data_health: one row per batch in landing order, rates with nothing to count left null, and a trend plot."""

from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from cv_dataops.drift.health import health_rows, trend_png
from cv_dataops.drift.tables import DATA_HEALTH


def _frames():
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "batch_id": ["00000001-x", "00000001-x",
                                                                          "00000002-y", "00000002-y"]})
    quarantine = pd.DataFrame({"batch_id": ["00000002-y", "00000003-z"]})  # batch 3: everything refused
    quality = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "batch_id": images["batch_id"],
                            "is_dark": [False, False, True, True], "is_blurry": [False, True, False, False],
                            "is_unusable": [False, False, True, False]})
    drift = pd.DataFrame({"batch_id": ["00000002-y"] * 3, "test": ["ks", "ks", "domain_classifier"],
                          "feature": ["brightness", "sharpness", "embedding"], "effect_size": [0.8, 0.2, 0.9]})
    summary = pd.DataFrame({"batch_id": ["00000001-x", "00000002-y"], "severity": ["none", "large"],
                            "estimated_accuracy": [None, 0.61]})
    issues = pd.DataFrame({"image_id": ["a", "b", "c"], "is_issue": [True, False, False]})
    audited = pd.DataFrame({"image_id": ["a", "b", "c"]})
    return images, quarantine, quality, drift, summary, issues, audited


def test_one_row_per_batch_in_landing_order_with_the_rates():
    rows = health_rows(*_frames()).set_index("batch_id")
    assert list(rows.index) == ["00000001-x", "00000002-y", "00000003-z"] and list(rows["position"]) == [1, 2, 3]
    first, second, third = (rows.iloc[i] for i in range(3))
    assert first["quarantine_rate"] == 0 and second["quarantine_rate"] == 1 / 3 and third["quarantine_rate"] == 1
    assert first["flagged_rate"] == 0.5 and second["dark_rate"] == 1 and second["unusable_rate"] == 0.5
    assert second["drift_severity"] == "large" and second["drift_classifier_auc"] == 0.9
    assert second["largest_property"] == "brightness" and second["largest_property_shift"] == 0.8
    assert first["label_error_rate"] == 0.5 and second["label_error_rate"] == 0
    assert second["estimated_accuracy"] == 0.61
    # nothing to count is null, not zero
    assert pd.isna(third["unusable_rate"]) and pd.isna(third["label_error_rate"]) and third["measured"] == 0
    assert pd.isna(first["estimated_accuracy"]) and pd.isna(third["drift_severity"])
    records = rows.reset_index().astype(object).where(rows.reset_index().notna(), None).to_dict("records")
    assert DATA_HEALTH.from_rows(records).num_rows == 3  # conforms to the table


def test_the_trend_plot_is_a_png_even_for_one_or_no_batch():
    rows = health_rows(*_frames())
    for frame in (rows, rows.head(1), rows.head(0)):
        image = Image.open(io.BytesIO(trend_png(frame)))
        assert image.format == "PNG" and image.width == 640
