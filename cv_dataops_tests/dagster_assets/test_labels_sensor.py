"""The review sensor picks each review file up once, keyed by name and content: the same bytes again make no run,
an edited file or a new name does; other files in reviews/ are ignored."""

from __future__ import annotations

import os

import dagster as dg

from cv_dataops.config import Settings
from cv_dataops.definitions import load_definitions
from cv_dataops.defs.labels.sensors import review_sensor


def test_each_review_file_is_picked_up_once_by_name_and_content(tmp_path):
    reviews = tmp_path / "data" / "reviews"
    reviews.mkdir(parents=True)
    defs = load_definitions(Settings.build(data_root=tmp_path / "data", landing=tmp_path / "landing"))
    instance = dg.DagsterInstance.ephemeral()
    resources = {key: defs.resources[key] for key in review_sensor.required_resource_keys}

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                     resources=resources) as context:
            return review_sensor(context)

    empty = tick(None)
    assert not empty.run_requests and "no new review file" in empty.skip_reason.skip_message
    (reviews / "round1.csv").write_text("image_id,label\nx,cat\n")
    (reviews / "notes.txt").write_text("not a decision")
    first = tick(None)
    (request,) = first.run_requests
    assert request.run_key.startswith("review:round1.csv@") and request.asset_selection == [
        dg.AssetKey("review_decisions"), dg.AssetKey("audited_labels")]
    assert not tick(first.cursor).run_requests
    (reviews / "round1.csv").write_text("image_id,label\nx,cat\n")  # the same bytes, written again
    os.utime(reviews / "round1.csv", (1, 1))  # a different listing version for certain
    rewritten = tick(first.cursor)
    assert not rewritten.run_requests
    (reviews / "round1.csv").write_text("image_id,label\nx,dog\n")  # edited
    edited = tick(rewritten.cursor)
    assert len(edited.run_requests) == 1 and edited.run_requests[0].run_key != request.run_key
    (reviews / "round2.csv").write_text("image_id,label\nx,dog\n")  # a new name (its content is stored already)
    assert len(tick(edited.cursor).run_requests) == 1
