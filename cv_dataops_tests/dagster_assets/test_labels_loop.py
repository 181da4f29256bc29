"""The labels loop in Dagster, in process: labelled (some wrongly) and unlabelled scenes land, `cv-dataops run`
gives labels, audited_labels, a label model, label issues and a review round; the round is answered with the truth
as a Label Studio export dropped into reviews/, the review sensor picks it up once, and the audit and a new model
version follow; the same file dropped again changes nothing."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cv_dataops.config import Settings
from cv_dataops.core.storage import LocalStorage
from cv_dataops.definitions import load_definitions
from cv_dataops.demo import data as demo_data
from cv_dataops.labels.registry import ModelRegistry
from cv_dataops.labels.store import LabelStore
from cv_dataops.runner import open_instance, run_pipeline
from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC

pytestmark = pytest.mark.slow  # fits the tiny embedder and label models on 90 generated scenes
REVIEW = {"budget": 12, "min_holdout": 5, "holdout_fraction": 0.25}
LOOP_ASSETS = ("review_decisions", "labels", "audited_labels", "label_model", "auto_labels", "label_issues", "review_queue")


def _metadata(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels_loop")
    landing = root / "landing"
    truth = demo_data.generate_demo(landing, count=90, seed=3, include_bad=False)
    truth = truth.assign(truth=truth["label"])
    moved = {}
    for position, row in enumerate(truth.sort_values("relative_path").itertuples(index=False)):
        if position % 5 == 0:  # a fifth land unlabelled, at the landing root
            moved[row.relative_path] = f"unlabelled_{position}.jpg"
        elif position % 17 == 1:  # a few land in the wrong folder
            wrong = "square" if row.truth != "square" else "circle"
            moved[row.relative_path] = f"{wrong}/wrong_{position}.jpg"
    for old, new in moved.items():
        (landing / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(landing / old, landing / new)
    truth["relative_path"] = truth["relative_path"].map(lambda path: moved.get(path, path))
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: undone after the module, not leaked on
        patch.setenv("DAGSTER_HOME", str(root / "home"))
        data = root / "data"
        settings = Settings.build(landing=landing, data_root=data, embedder=TINY_EMBEDDER_SPEC, review=REVIEW)
        instance = open_instance(str(data))
        summary = run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
        images = pq.read_table(data / "catalog" / "images").to_pandas()
        truth_by_id = images.merge(truth[["relative_path", "truth"]], on="relative_path").set_index("image_id").truth
        yield {"root": root, "data": data, "instance": instance, "settings": settings, "summary": summary,
               "truth": truth_by_id, "images": images}


def test_run_materializes_the_loop_and_its_checks(loop):
    instance, data = loop["instance"], loop["data"]
    assert set(LOOP_ASSETS) <= set(loop["summary"].downstream_assets)
    labelled = loop["images"]["label"].notna().sum()
    events = LabelStore(LocalStorage(data)).read()
    assert (events["source"] == "landing").sum() == labelled and labelled < len(loop["images"])
    assert _metadata(instance, "labels")["events_appended"] == labelled
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas()
    assert len(audited) == labelled and set(audited["status"]) == {"human"}
    model = _metadata(instance, "label_model")
    assert model["model_version"] == "v0001" and 0 <= model["cv_accuracy"] <= 1 and model["reason"]
    assert ModelRegistry(LocalStorage(data / "models" / "label_model")).list()[0].version == "v0001"
    issues = pq.read_table(data / "catalog" / "label_issues").to_pandas()
    assert len(issues) == labelled and sorted(issues["rank"]) == list(range(1, labelled + 1))
    queue = _metadata(instance, "review_queue")
    assert 0 < queue["dagster/row_count"] <= REVIEW["budget"] and queue["reason_active_learning"] > 0
    tasks = json.loads(open(queue["tasks"]).read())
    assert len(tasks) == queue["dagster/row_count"]
    assert all({"image", "image_id", "reason"} <= set(task["data"]) for task in tasks)
    assert all(task["data"]["image"].startswith("/data/local-files/?d=") for task in tasks)
    checks = {}
    for asset, name in (("audited_labels", "audited_labels_in_taxonomy"), ("label_model", "label_model_promotion"),
                        ("label_issues", "label_issue_share_per_class")):
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(asset), name)])
        checks[name] = list(record.values())[0].status.value
    assert checks["audited_labels_in_taxonomy"] == "SUCCEEDED"
    assert set(checks.values()) <= {"SUCCEEDED", "FAILED"}


def _answer(tasks: list[dict], truth: pd.Series) -> list[dict]:
    """The round as Label Studio exports it, every task answered with the truth by one reviewer."""
    answered = []
    for number, task in enumerate(tasks, start=1):
        label = truth[task["data"]["image_id"]]
        answered.append({**task, "id": number, "annotations": [{
            "id": 100 + number, "completed_by": {"email": "reviewer@example.com"}, "was_cancelled": False,
            "updated_at": "2026-12-01T10:00:00Z",
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                        "value": {"choices": [label]}}]}]})
    return answered


def test_review_decisions_come_back_once_through_the_sensor(loop):
    from cv_dataops.defs.labels.sensors import review_sensor

    instance, data, settings = loop["instance"], loop["data"], loop["settings"]
    defs = load_definitions(settings)
    queue = _metadata(instance, "review_queue")
    tasks = json.loads(open(queue["tasks"]).read())
    reviews = data / "reviews"
    reviews.mkdir()
    export = json.dumps(_answer(tasks, loop["truth"])).encode()
    (reviews / "round1.json").write_bytes(export)

    def tick(cursor):
        resources = {key: defs.resources[key] for key in review_sensor.required_resource_keys}
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                     resources=resources) as context:
            return review_sensor(context)

    first = tick(None)
    (request,) = first.run_requests
    assert request.asset_selection == [dg.AssetKey("review_decisions"), dg.AssetKey("audited_labels")]
    assert request.run_key.startswith("review:round1.json@")
    job = defs.resolve_implicit_global_asset_job_def()
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the automation sensor's last tick
    before = LabelStore(LocalStorage(data)).latest_version()
    assert job.execute_in_process(instance=instance, asset_selection=request.asset_selection).success
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas().set_index("image_id")
    reviewed = audited[audited["status"] == "reviewed"]
    assert len(reviewed) >= len(tasks) // 2
    assert (reviewed["label"] == loop["truth"][reviewed.index]).all()
    applied = _metadata(instance, "review_decisions")
    assert applied["review_events_appended"] == len(tasks) and applied["labels_version"] > before
    assert _metadata(instance, "audited_labels")["labels_version"] == applied["labels_version"]

    # automation follows the audit: label_model (and what follows it) is requested
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    assert evaluation.get_num_requested(dg.AssetKey("label_model")) == 1
    assert evaluation.get_num_requested(dg.AssetKey("label_issues")) == 1
    assert job.execute_in_process(instance=instance, asset_selection=[
        dg.AssetKey(name) for name in ("label_model", "auto_labels", "label_issues", "review_queue")]).success
    versions = ModelRegistry(LocalStorage(data / "models" / "label_model")).list()
    assert len(versions) == 2 and versions[-1].metadata["labels_version"] == applied["labels_version"]

    # the same file again (rewritten with the same bytes): no new pick-up, nothing appended
    (reviews / "round1.json").write_bytes(export)
    again = tick(first.cursor)
    assert not again.run_requests and again.skip_reason is not None
    # a copy under another name is picked up, but its decisions are stored already
    (reviews / "copy of round1.json").write_bytes(export)
    copy = tick(first.cursor)
    assert len(copy.run_requests) == 1
    version = LabelStore(LocalStorage(data)).latest_version()
    assert job.execute_in_process(instance=instance, asset_selection=copy.run_requests[0].asset_selection).success
    assert LabelStore(LocalStorage(data)).latest_version() == version
    assert _metadata(instance, "review_decisions")["review_events_appended"] == 0


def test_a_review_file_dropped_alone_is_applied_by_the_next_run(loop):
    """`cv-dataops run` with no new batch still takes in decisions waiting in reviews/ (not only the sensor)."""
    data, settings, instance = loop["data"], loop["settings"], loop["instance"]
    images = loop["images"]
    unlabelled = images[images["label"].isna()].image_id.iloc[0]
    reviews = data / "reviews"
    reviews.mkdir(exist_ok=True)
    (reviews / "by-hand.csv").write_text(f"image_id,label,annotator\n{unlabelled},{loop['truth'][unlabelled]},ann\n")
    before = LabelStore(LocalStorage(data)).latest_version()
    summary = run_pipeline(instance, landing=str(loop["root"] / "landing"), data_root=str(data), settings=settings)
    assert not summary.ingested_batches and "review_decisions" in summary.downstream_assets
    events = LabelStore(LocalStorage(data)).read()
    assert LabelStore(LocalStorage(data)).latest_version() > before
    mine = events[(events["image_id"] == unlabelled) & (events["source"] == "review")]
    assert list(mine["label"]) == [loop["truth"][unlabelled]]
    again = run_pipeline(instance, landing=str(loop["root"] / "landing"), data_root=str(data), settings=settings)
    assert not again.downstream_assets  # applied once: nothing waits now

    # the curated set carries the audited labels: the reviewed answers for images that landed without one
    curated = pq.read_table(data / "catalog" / "curated").to_pandas().set_index("image_id")
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas().set_index("image_id")["label"]
    shared = curated.index.intersection(audited.index)
    assert len(shared) and (curated.loc[shared, "label"] == audited[shared]).all()
    landed_unlabelled = set(images[images["label"].isna()].image_id)
    now_labelled = [i for i in shared if i in landed_unlabelled]
    assert now_labelled, "no image that landed unlabelled and was reviewed is in the curated set"
    assert all(curated.loc[i, "label"] == loop["truth"][i] for i in now_labelled)


def test_a_later_batch_is_tested_with_the_promoted_label_model(loop):
    """With a curated snapshot and a promoted model in place, the next batch's drift report runs the model family:
    predicted labels and confidence against the reference images the model never trained on, and an estimate of
    its accuracy on the batch."""
    data, settings, instance = loop["data"], loop["settings"], loop["instance"]
    registry = ModelRegistry(LocalStorage(data / "models" / "label_model"))
    if registry.promoted() is None:  # the tiny embedder's model rarely beats the majority class on 17 items
        registry.promote(registry.list()[-1].version, "promoted by hand, as a team may, to test drift with it")
    promoted = registry.promoted()
    demo_data.generate_demo(loop["root"] / "landing" / "later", count=24, seed=9, include_bad=False)
    summary = run_pipeline(instance, landing=str(loop["root"] / "landing"), data_root=str(data), settings=settings)
    (batch,) = summary.ingested_batches
    event = instance.get_latest_materialization_event(dg.AssetKey("drift_report"))
    assert event.dagster_event.partition == batch
    metadata = {name: value.value for name, value in event.asset_materialization.metadata.items()}
    assert f"label model {promoted.version}:" in metadata["note"], metadata["note"]
    assert metadata["estimated_accuracy"] is not None and 0 <= metadata["estimated_accuracy"] <= 1, metadata
    assert metadata["reference_accuracy"] is not None
    tests = pq.read_table(data / "catalog" / "drift").to_pandas()
    mine = tests[tests["batch_id"] == batch].set_index("feature")
    assert {"predicted_label", "confidence"} <= set(mine.index)
    assert mine.loc["predicted_label", "p_value"] is not None
    # the same run auto-labelled with that model: every decision in its table
    decisions = pq.read_table(data / "catalog" / "auto_label_decisions").to_pandas()
    assert len(decisions) and set(decisions["decision"]) <= {"auto", "review"}
    assert set(decisions["model_version"]) == {promoted.version}
