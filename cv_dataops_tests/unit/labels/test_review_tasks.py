"""Review rounds as Label Studio tasks: links Label Studio can open, the reason and image id in the data, the
prediction pre-filled with its score, and the decision coming back through the Label Studio reader."""

import json

import pandas as pd
import pytest

from cv_dataops.exports.label_studio import (
    LOCAL_FILES_PATH,
    label_studio_image_url,
    review_tasks,
)
from cv_dataops.labels.sources import read_label_file
from cv_dataops.labels.taxonomy import Taxonomy


def test_local_files_are_linked_relative_to_the_document_root(tmp_path):
    image = tmp_path / "landing" / "a b" / "x#1.jpg"
    assert label_studio_image_url(str(image), local_files_root=str(tmp_path)) == \
        LOCAL_FILES_PATH + "landing/a%20b/x%231.jpg"
    assert label_studio_image_url(str(image)) == LOCAL_FILES_PATH + str(image).lstrip("/").replace(" ", "%20") \
        .replace("#", "%23")
    with pytest.raises(ValueError, match="outside Label Studio's local files root"):
        label_studio_image_url(str(image), local_files_root=str(tmp_path / "other"))


def test_s3_uris_are_kept_or_presigned():
    assert label_studio_image_url("s3://bucket/k/x.jpg") == "s3://bucket/k/x.jpg"
    assert label_studio_image_url("s3://bucket/k/x.jpg", presign=lambda uri: "https://signed/" + uri[5:]) == \
        "https://signed/bucket/k/x.jpg"
    assert label_studio_image_url("https://host/x.jpg") == "https://host/x.jpg"


def test_tasks_carry_reason_score_and_image_id_and_answers_come_back():
    rows = pd.DataFrame({"position": [1, 2], "image_id": ["id-1", "id-2"], "uri": ["/d/1.jpg", "/d/2.jpg"],
                         "reason": ["probable_label_error", "active_learning"], "score": [0.12, None],
                         "score_meaning": ["label quality", None], "current_label": ["cat", None],
                         "prefill_label": ["dog", None], "detail": ["rank 1", "coverage"]})
    tasks = review_tasks(rows, model_version="v0003")
    assert tasks[0]["data"] == {"image": "/d/1.jpg", "image_id": "id-1", "uri": "/d/1.jpg",
                                "reason": "probable_label_error", "position": 1, "score": 0.12,
                                "score_meaning": "label quality", "current_label": "cat", "detail": "rank 1"}
    (prediction,) = tasks[0]["predictions"]
    assert prediction["score"] == 0.12 and prediction["model_version"] == "v0003"
    assert prediction["result"][0]["value"]["choices"] == ["dog"]
    assert "predictions" not in tasks[1] and "score" not in tasks[1]["data"]
    for task, answer in zip(tasks, ["dog", "cat"], strict=True):  # a reviewer answers in Label Studio
        task.update(id=task["data"]["position"], annotations=[{"id": 10 + task["data"]["position"],
                    "completed_by": 1, "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                                                   "value": {"choices": [answer]}}]}])
    events, problems = read_label_file(json.dumps(tasks).encode(), "export.json", taxonomy=Taxonomy(),
                                       images={"id-1": "id-1", "id-2": "id-2"}, source="review")
    assert problems == [] and sorted((e.image_id, e.label) for e in events) == [("id-1", "dog"), ("id-2", "cat")]
