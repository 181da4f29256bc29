"""The labels loop's settings: validated in one line naming the valid keys, and a wrong one fails the labels stage
only (the code location loads; the labels assets fail at run time with that line)."""

from __future__ import annotations

import dagster as dg
import pytest

from cv_dataops.config import Settings
from cv_dataops.definitions import load_definitions


@pytest.mark.parametrize("environment, message", [
    ({"CV_DATAOPS_REVIEW": '{"budgett": 5}'}, "CV_DATAOPS_REVIEW: unknown key 'budgett'; valid keys: budget, "),
    ({"CV_DATAOPS_REVIEW": '{"budget": 0}'}, "CV_DATAOPS_REVIEW: budget: Input should be greater than or equal to 1"),
    ({"CV_DATAOPS_REVIEW": '{"target_precision": 1.5}'}, "CV_DATAOPS_REVIEW: target_precision: Input should be "),
    ({"CV_DATAOPS_REVIEW": "[1]"}, "CV_DATAOPS_REVIEW: expected a JSON object, got list"),
    ({"CV_DATAOPS_LABELS_TAXONOMY": '["cat", "Cat"]'}, "CV_DATAOPS_LABELS_TAXONOMY: duplicate class 'Cat'"),
    ({"CV_DATAOPS_LABELS_TAXONOMY": '{"classes": ["cat"], "alias": {}}'},
     "CV_DATAOPS_LABELS_TAXONOMY: unknown key(s) ['alias']; expected 'classes' and 'aliases'"),
    ({"CV_DATAOPS_LABELS_TAXONOMY": "cat,dog"}, "CV_DATAOPS_LABELS_TAXONOMY: not valid JSON"),
])
def test_a_wrong_labels_setting_is_one_line_of_the_labels_stage(environment, message):
    settings = Settings.from_environment(environment)
    error = settings.stage_error("labels")
    assert error is not None and error.startswith(message) and "\n" not in error
    assert all(settings.stage_error(stage) is None for stage in ("catalog", "landing", "quality", "curation"))


def test_valid_labels_settings_reach_the_resource():
    settings = Settings.from_environment({"CV_DATAOPS_REVIEW": '{"budget": 7, "promotion_tolerance": 0.02}',
                                          "CV_DATAOPS_LABELS_TAXONOMY": '{"classes": ["car", "cat"], '
                                                                        '"aliases": {"automobile": "car"}}'})
    assert settings.errors == {}
    labelling = load_definitions(settings).resources["labelling"]
    assert (labelling.budget, labelling.promotion_settings().tolerance) == (7, 0.02)
    assert labelling.taxonomy_value().resolve("Automobile") == "car"
    again = Settings.from_environment(settings.as_environment())  # what a code server is handed
    assert (again.review, again.labels_taxonomy) == (settings.review, settings.labels_taxonomy)


def test_the_labels_stage_fails_at_run_time_with_its_line(tmp_path):
    from cv_dataops.runner import _failure_message, execute_job, open_instance

    settings = Settings.build(data_root=tmp_path / "data", landing=tmp_path / "landing", review={"budget": -1})
    defs = load_definitions(settings)  # loads
    result = execute_job(defs.resolve_implicit_global_asset_job_def(), open_instance(str(tmp_path / "data")),
                         asset_selection=[dg.AssetKey("review_decisions")])
    assert not result.success
    assert _failure_message(result, "labels") == f"labels: {settings.stage_error('labels')}"
