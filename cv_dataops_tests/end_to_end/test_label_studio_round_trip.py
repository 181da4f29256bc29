"""Review tasks round-trip through a real Label Studio server (PyPI's `label-studio`, started here on 127.0.0.1),
driven through its REST API as reviewers would: our labelling config and tasks in, images served from local
files, annotations posted (one task skipped, two reviewers disagreeing on another), the project exported as JSON,
and the export read back into label events and audited labels; then the loop itself: the review round that
`cv-dataops run` wrote goes in, the export comes back through reviews/ and the review sensor, and audited_labels
and a retrained label model follow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cv_dataops.config import Settings
from cv_dataops.core.storage import LocalStorage, open_storage
from cv_dataops.definitions import load_definitions
from cv_dataops.defs.labels.sensors import review_sensor
from cv_dataops.demo import data as demo_data
from cv_dataops.exports.label_studio import export_label_studio, label_studio_config
from cv_dataops.labels.audit import audit
from cv_dataops.labels.registry import ModelRegistry
from cv_dataops.labels.sources import read_label_studio_export
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.taxonomy import Taxonomy
from cv_dataops.runner import open_instance, run_pipeline
from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC, encode, photo
from cv_dataops_tests.label_studio_server import (
    Reviewer,
    installed_label_studio,
    local_files_url,
    running_label_studio,
)

# Starts a server: the first start migrates a fresh SQLite database, minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CLASSES = ("bird", "cat", "dog")


def _choice(label: str) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """One server for the module, serving local files under its ``document_root`` to two reviewers."""
    executable, why_not = installed_label_studio()
    if executable is None:
        pytest.skip(why_not)
    workdir = tmp_path_factory.mktemp("label-studio")
    document_root = workdir / "served"
    document_root.mkdir()
    reviewers = [Reviewer.new("first-reviewer"), Reviewer.new("second-reviewer")]
    with running_label_studio(executable, workdir, document_root, reviewers) as server:
        yield server


def test_review_tasks_round_trip_through_label_studio(label_studio, tmp_path):
    server, (first, second) = label_studio, label_studio.reviewers
    document_root = server.document_root
    images = document_root / "round-trip"
    images.mkdir(parents=True)
    rows = []
    for seed in range(6):
        data = encode(photo(seed), "PNG")
        path = images / f"image-{seed}.png"
        path.write_bytes(data)
        # The label pre-filled as the prediction to review.
        rows.append({"image_id": hashlib.sha256(data).hexdigest(), "uri": str(path), "split": "train",
                     "label": CLASSES[seed % len(CLASSES)]})
    frame = pd.DataFrame(rows)
    tasks = export_label_studio(frame, image_url=lambda uri: local_files_url(document_root, uri))
    by_image = {task["data"]["image_id"]: task for task in tasks}
    skipped_image, disputed_image, *answered_images = sorted(by_image)
    # Every answer differs from the prediction shown, so an event can only come from the reviewer's annotation.
    answers = {image_id: CLASSES[(CLASSES.index(by_image[image_id]["predictions"][0]["result"][0]["value"]
                                                 ["choices"][0]) + 1) % len(CLASSES)]
               for image_id in answered_images}

    project = server.json("POST", "/api/projects", body={"title": "cv-dataops review",
                                                          "label_config": label_studio_config(CLASSES)})
    # Label Studio serves a local file only to members of a project with a local-files storage holding it.
    server.json("POST", "/api/storages/localfiles", body={"project": project["id"], "path": str(images),
                                                           "title": "review images", "use_blob_urls": False})
    imported = server.json("POST", f"/api/projects/{project['id']}/import", body=tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (len(tasks), len(tasks))

    listed = server.json("GET", f"/api/tasks?project={project['id']}&page_size=100")
    task_ids = {task["data"]["image_id"]: task["id"] for task in listed["tasks"]}
    assert sorted(task_ids) == sorted(by_image)
    one = server.json("GET", f"/api/tasks/{task_ids[disputed_image]}")
    assert [prediction["result"] for prediction in one["predictions"]] == \
        [by_image[disputed_image]["predictions"][0]["result"]]

    # The image a reviewer's browser would open, from the URL in the task.
    status, headers, body = server.request("GET", one["data"]["image"])
    assert status == 200
    assert headers.get("Content-Type") == "image/png"
    assert body == Path(by_image[disputed_image]["data"]["uri"]).read_bytes()

    def annotate(image_id: str, reviewer: Reviewer, **annotation) -> dict:
        return server.json("POST", f"/api/tasks/{task_ids[image_id]}/annotations/", reviewer=reviewer,
                           body=annotation)

    annotate(skipped_image, first, result=[], was_cancelled=True)  # "Skip" in the labelling UI
    annotate(disputed_image, first, result=_choice("cat"), lead_time=2.5)
    annotate(disputed_image, second, result=_choice("dog"), lead_time=3.0)
    for image_id in answered_images:
        annotate(image_id, first, result=_choice(answers[image_id]), lead_time=1.0)

    status, headers, export = server.request(
        "GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
    assert status == 200, export[:500]

    exported = json.loads(export)
    assert sorted(task["data"]["image_id"] for task in exported) == sorted(by_image)
    taxonomy = Taxonomy(CLASSES)
    catalog = {image_id: image_id for image_id in by_image}
    name = "reviews/project-export.json"
    events, problems = read_label_studio_export(export, name, taxonomy=taxonomy, images=catalog)
    assert problems == []
    by_event_image: dict[str, list] = {}
    for event in events:
        by_event_image.setdefault(event.image_id, []).append(event)

    assert skipped_image not in by_event_image  # a skipped task is no decision, and no problem either
    for image_id in answered_images:
        assert [(event.label, event.source) for event in by_event_image[image_id]] == \
            [(answers[image_id], "review")]
    disputed_events = by_event_image[disputed_image]
    assert sorted(event.label for event in disputed_events) == ["cat", "dog"]
    assert len({event.annotator for event in disputed_events}) == 2  # one vote per reviewer

    # Audited as the review sensor would: the export appended to a labels store, then the audit as of it.
    store = LabelStore(open_storage(tmp_path / "data-root"))
    appended = store.append_file(export, name, taxonomy=taxonomy, images=catalog, source="review")
    assert (appended.appended, appended.problems) == (len(events), [])
    audited = audit(store.read(), taxonomy).set_index("image_id")
    assert skipped_image not in audited.index
    for image_id in answered_images:
        assert (audited.at[image_id, "label"], audited.at[image_id, "status"]) == (answers[image_id], "reviewed")
    # One vote each: a tie, which goes to the label given most recently (the export's updated_at), so to the
    # second reviewer's "dog", posted after the first reviewer's "cat".
    disputed_task = next(task for task in exported if task["data"]["image_id"] == disputed_image)
    latest = max(disputed_task["annotations"], key=lambda annotation: annotation["updated_at"])
    assert latest["result"] == _choice("dog")
    assert (audited.at[disputed_image, "label"], audited.at[disputed_image, "status"]) == ("dog", "disputed")
    assert "latest" in audited.at[disputed_image, "reason"]

    # Deterministic: the same decisions in another order (tasks and annotations reversed) audit the same.
    reversed_export = json.dumps([dict(task, annotations=task["annotations"][::-1])
                                  for task in exported[::-1]]).encode()
    other = LabelStore(open_storage(tmp_path / "other-root"))
    other.append_file(reversed_export, name, taxonomy=taxonomy, images=catalog, source="review")
    reaudited = audit(other.read(), taxonomy).set_index("image_id")
    assert reaudited[["label", "status"]].equals(audited[["label", "status"]])


def test_review_queue_round_trip_and_the_review_sensor(label_studio, tmp_path, monkeypatch):
    """The loop for real: `cv-dataops run` writes a review round; its own tasks file and labelling config go into
    Label Studio, a reviewer answers (skipping one task), the export is dropped into reviews/, the review sensor
    picks it up, and audited_labels and a retrained label model follow."""
    server, (reviewer, _) = label_studio, label_studio.reviewers
    landing = server.document_root / "loop-landing"
    truth = demo_data.generate_demo(landing, count=48, seed=7, include_bad=False)
    moved = {}
    for position, row in enumerate(truth.sort_values("relative_path").itertuples(index=False)):
        if position % 3 == 0:  # a third land unlabelled, at the landing root: the round's active-learning picks
            moved[row.relative_path] = f"unlabelled_{position}.jpg"
    for old, new in moved.items():
        (landing / old).rename(landing / new)
    truth["relative_path"] = truth["relative_path"].map(lambda path: moved.get(path, path))
    data = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster-home"))
    settings = Settings.build(landing=landing, data_root=data, embedder=TINY_EMBEDDER_SPEC,
                              review={"budget": 10, "min_holdout": 4, "holdout_fraction": 0.25,
                                      "local_files_root": str(server.document_root)})
    instance = open_instance(str(data))
    run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
    images = pq.read_table(data / "catalog" / "images").to_pandas()
    truth_of = images.merge(truth[["relative_path", "label"]].rename(columns={"label": "truth"}),
                            on="relative_path").set_index("image_id")["truth"]

    queue = _metadata(instance, "review_queue")
    tasks_file, config_file = Path(queue["tasks"]), Path(queue["label_config"])
    assert tasks_file.parent.parent == data / "review"
    tasks = json.loads(tasks_file.read_bytes())
    assert len(tasks) >= 3

    project = server.json("POST", "/api/projects", body={"title": "cv-dataops review round",
                                                          "label_config": config_file.read_text()})
    server.json("POST", "/api/storages/localfiles", body={"project": project["id"], "path": str(landing),
                                                           "title": "landing", "use_blob_urls": False})
    imported = server.json("POST", f"/api/projects/{project['id']}/import", body=tasks)
    assert imported["task_count"] == len(tasks)
    listed = server.json("GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    status, _, body = server.request("GET", listed[0]["data"]["image"])
    assert status == 200 and body == Path(listed[0]["data"]["uri"]).read_bytes()

    skipped, *answered = sorted(listed, key=lambda task: task["data"]["image_id"])
    server.json("POST", f"/api/tasks/{skipped['id']}/annotations/", reviewer=reviewer,
                body={"result": [], "was_cancelled": True})
    for task in answered:
        server.json("POST", f"/api/tasks/{task['id']}/annotations/", reviewer=reviewer,
                    body={"result": _choice(truth_of[task["data"]["image_id"]]), "lead_time": 1.0})
    status, _, export = server.request("GET", f"/api/projects/{project['id']}/export?exportType=JSON"
                                              f"&download_all_tasks=true")
    assert status == 200, export[:500]
    audited_before = pq.read_table(data / "catalog" / "audited_labels").to_pandas().set_index("image_id")
    models_before = ModelRegistry(LocalStorage(data / "models" / "label_model")).list()
    (data / "reviews").mkdir(exist_ok=True)
    (data / "reviews" / "label-studio-round-1.json").write_bytes(export)

    defs = load_definitions(settings)
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # what it has seen so far
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        result = review_sensor(context)
    (request,) = result.run_requests
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=request.asset_selection).success
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas().set_index("image_id")
    for task in answered:
        image_id = task["data"]["image_id"]
        assert (audited.at[image_id, "label"], audited.at[image_id, "status"]) == (truth_of[image_id], "reviewed")
    skipped_id = skipped["data"]["image_id"]  # skipping decides nothing: the image keeps what it had
    if skipped_id in audited_before.index:
        assert audited.loc[skipped_id, ["label", "status"]].tolist() == \
            audited_before.loc[skipped_id, ["label", "status"]].tolist()
    else:
        assert skipped_id not in audited.index

    # Automation asks for a new label model; trained, it is a new version on the labels the review appended.
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)
    assert automation.get_num_requested(dg.AssetKey("label_model")) == 1
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("label_model")]).success
    models = ModelRegistry(LocalStorage(data / "models" / "label_model")).list()
    assert len(models) == len(models_before) + 1
    assert models[-1].metadata["labels_version"] == int(audited["labels_version"].max())


def _metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}
