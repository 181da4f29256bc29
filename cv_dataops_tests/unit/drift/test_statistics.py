import numpy as np
import pandas as pd

from cv_dataops.drift.statistics import (
    chi_squared_test,
    ks_test,
    property_frame,
    property_tests,
    tail_atypicality,
)
from cv_dataops_tests.unit.drift.synthetic import properties


def test_ks_finds_a_drop_and_reports_d_and_medians():
    rng = np.random.default_rng(0)
    result = ks_test(pd.Series(rng.normal(1, 0.2, 400)), pd.Series(rng.normal(0.4, 0.2, 80)), feature="sharpness")
    assert result.p_value < 1e-10 and result.effect_size > 0.8 and result.effect_measure == "ks_d"
    assert result.details["batch_median"] < result.details["reference_median"]


def test_missing_values_are_dropped_and_counted_and_too_few_do_not_run():
    values = pd.Series([0.1, np.nan, 0.3, None, 0.2, 0.5, 0.4, np.inf])
    result = ks_test(values, values, feature="brightness")
    assert result.missing_reference == 3 and result.n_reference == 5 and result.p_value == 1.0
    empty = ks_test(values, pd.Series([np.nan] * 10), feature="brightness")
    assert not empty.ran and "not run" in empty.note and empty.missing_batch == 10


def test_chi_squared_sees_a_new_camera_with_total_variation_as_effect():
    reference = pd.Series(["Canon"] * 300 + ["unknown"] * 100)
    batch = pd.Series(["Canon"] * 20 + ["Pixel 7"] * 60 + [None] * 20)
    result = chi_squared_test(reference, batch, feature="camera")
    assert result.p_value < 1e-10
    # shares: Canon .75 -> .2, unknown .25 -> 0, Pixel .6 new, (missing) .2 new -> TV = (.55 + .25 + .6 + .2) / 2
    assert abs(result.effect_size - 0.8) < 1e-9
    assert result.missing_batch == 20


def test_rare_categories_are_pooled_so_a_null_batch_is_not_flagged():
    rng = np.random.default_rng(3)
    names = [f"camera{i}" for i in range(30)]
    flagged = sum(chi_squared_test(pd.Series(rng.choice(names, 500)), pd.Series(rng.choice(names, 30)),
                                   feature="camera").p_value < 0.05 for _ in range(40))
    assert flagged <= 6


def test_property_frame_derives_aspect_and_camera_from_the_images_rows():
    quality = pd.DataFrame({"image_id": ["a", "b"], "width": [640, 100], "height": [480, 0], "brightness": [.5, .4]})
    images = pd.DataFrame({"image_id": ["a", "b"], "format": ["JPEG", "PNG"], "camera_make": ["Canon", None],
                           "camera_model": ["EOS 80D", None]})
    frame = property_frame(quality, images)
    assert frame["camera"].tolist() == ["Canon EOS 80D", "unknown"]
    assert abs(frame["aspect"][0] - 4 / 3) < 1e-9 and np.isnan(frame["aspect"][1])  # zero height: missing, no crash


def test_a_property_missing_from_one_side_is_reported_not_run():
    rng = np.random.default_rng(1)
    reference, batch = properties(100, rng), properties(50, rng).drop(columns=["jpeg_quality"])
    by_feature = {t.feature: t for t in property_tests(reference, batch)}
    assert not by_feature["jpeg_quality"].ran and "batch" in by_feature["jpeg_quality"].note
    assert by_feature["sharpness"].ran


def test_tail_atypicality_is_high_only_for_extreme_images():
    rng = np.random.default_rng(2)
    reference = properties(500, rng)
    batch = properties(20, rng)
    batch.loc[0, "sharpness"] = 1.0  # far below every reference value
    score = tail_atypicality(reference, batch)
    assert score[0] > 0.9 and np.median(score[1:]) < 0.5
