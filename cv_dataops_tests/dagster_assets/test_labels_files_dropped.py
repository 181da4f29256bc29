"""Label files dropped under the data root, through the labels assets: imports/ and reviews/ files with bad rows
apply their good rows and list the bad ones with file and line; an empty catalog runs the whole loop without
failing (nothing to train, audit or review yet)."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pyarrow.parquet as pq

from cv_dataops.config import Settings
from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.definitions import load_definitions
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.runner import execute_job, open_instance

LOOP = ["labels", "review_decisions", "audited_labels", "label_model", "auto_labels", "label_issues",
        "review_queue"]


def _image(image_id: str, path: str, label: str | None) -> dict:
    return {"image_id": image_id, "uri": f"/landing/{path}", "batch_id": "b1", "relative_path": path, "width": 8,
            "height": 8, "format": "PNG", "mode": "RGB", "bytes": 10, "frames": 1, "has_alpha": False,
            "label": label, "ingested_at": datetime(2026, 12, 1, tzinfo=timezone.utc)}


def _run(tmp_path, selection, taxonomy=None):
    settings = Settings.build(data_root=tmp_path / "data", landing=tmp_path / "landing",
                              labels_taxonomy=taxonomy)
    defs = load_definitions(settings)
    instance = open_instance(str(tmp_path / "data"))
    result = execute_job(defs.resolve_implicit_global_asset_job_def(), instance,
                         asset_selection=[dg.AssetKey(name) for name in selection])
    assert result.success
    return instance


def _metadata(instance, key):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def test_bad_rows_are_listed_by_line_and_good_rows_applied(tmp_path):
    data = tmp_path / "data"
    Catalog(LocalStorage(data)).write(IMAGES, IMAGES.from_rows([
        _image("a" * 64, "cat/1.png", "cat"), _image("b" * 64, "dog/2.png", "dog"), _image("c" * 64, "3.png", None)]),
        partition="b1")
    (data / "imports").mkdir(parents=True)
    (data / "imports" / "team.csv").write_text("path,label\n3.png,cat\nmissing.png,dog\n2.png,emu\n")
    (data / "reviews").mkdir()
    (data / "reviews" / "r1.csv").write_text(f"image_id,label,annotator\n{'b' * 64},cat,ann\n{'z' * 64},cat,ann\n")
    instance = _run(tmp_path, ["labels", "review_decisions", "audited_labels"], taxonomy=["cat", "dog"])
    labels = _metadata(instance, "labels")
    assert (labels["landing_events_appended"], labels["import_events_appended"], labels["problem_count"]) == (2, 1, 2)
    assert [problem.split(": ")[0].rsplit("/", 1)[-1] for problem in labels["problems"]] == ["team.csv:3",
                                                                                            "team.csv:4"]
    reviews = _metadata(instance, "review_decisions")
    assert (reviews["review_events_appended"], reviews["problem_count"]) == (1, 1)
    assert reviews["problems"][0].split(": ")[0].endswith("r1.csv:3")
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas().set_index("image_id")
    assert audited.loc["c" * 64, ["label", "status"]].tolist() == ["cat", "human"]
    assert audited.loc["b" * 64, "status"] == "disputed"  # the review says cat against the human dog
    assert (data / "reviews" / "r1.csv").exists() and (data / "imports" / "team.csv").exists()
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("audited_labels"), "audited_labels_in_taxonomy")])
    assert list(check.values())[0].status.value == "SUCCEEDED"


def test_the_loop_runs_on_an_empty_catalog(tmp_path):
    instance = _run(tmp_path, LOOP)
    assert _metadata(instance, "label_model")["trained"] is False
    assert _metadata(instance, "review_queue")["dagster/row_count"] == 0
