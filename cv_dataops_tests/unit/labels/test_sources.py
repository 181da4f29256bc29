"""Label files a team already has, read from real files: good rows kept, bad rows reported with file and line."""

from __future__ import annotations

import codecs
import json
from datetime import datetime, timezone

import pandas as pd
import pytest

from cv_dataops.labels.sources import (
    CatalogImages,
    landing_events,
    read_coco_labels,
    read_csv_labels,
    read_label_file,
    read_label_studio_export,
)
from cv_dataops.labels.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_config({"classes": ["cat", "dog", "car"], "aliases": {"automobile": "car"}})
IMAGES = pd.DataFrame({
    "image_id": ["a" * 64, "b" * 64, "c" * 64, "d" * 64],
    "relative_path": ["pets/cat1.jpg", "pets/dog1.jpg", "street/car1.jpg", "other/cat1.jpg"],
    "uri": ["/land/pets/cat1.jpg", "/land/pets/dog1.jpg", "/land/street/car1.jpg", "/land/other/cat1.jpg"],
    "batch_id": ["b1", "b1", "b2", "b2"],
    "label": ["cat", "dog", "automobile", None],
    "ingested_at": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-02"], utc=True),
})
LOOKUP = CatalogImages(IMAGES)
A, B, C, D = IMAGES["image_id"]


def read(path, reader=read_csv_labels, **options):
    return reader(path.read_bytes(), path.name, taxonomy=TAXONOMY, images=LOOKUP, **options)


def test_catalog_images_finds_ids_paths_uris_and_unique_file_names():
    assert LOOKUP(A) == A
    assert LOOKUP("pets/dog1.jpg") == B and LOOKUP("./pets\\dog1.jpg") == B
    assert LOOKUP("/land/street/car1.jpg") == C
    assert LOOKUP("car1.jpg") == C
    assert LOOKUP("cat1.jpg") is None  # two images have this name: ambiguous, so unknown
    assert LOOKUP("nope.jpg") is None


def test_csv_with_bom_paths_annotators_confidence_and_bad_rows(tmp_path):
    path = tmp_path / "team.csv"
    path.write_bytes(codecs.BOM_UTF8 + (
        "Path , Label,annotator,confidence\n"       # 1: header, matched ignoring case and spaces
        "pets/cat1.jpg,cat,ann,0.9\n"               # 2
        "pets/dog1.jpg,Automobile,bob,\n"           # 3: alias resolved
        "street/car1.jpg,truck,ann,\n"              # 4: unknown class
        "missing.jpg,cat,ann,\n"                    # 5: unknown image
        "pets/dog1.jpg,dog,ann,high\n"              # 6: malformed confidence
        "pets/dog1.jpg,dog,ann,1.5\n"               # 7: out of range
        "\"pets/dog1.jpg,dog\n"                     # 8: unbalanced quote
        "pets/dog1.jpg,dog,ann,0.5,extra\n"         # 9: too many fields
        ",dog,ann,\n"                               # 10: no image
        "street/car1.jpg,,ann,\n"                   # 11: no label
        "\n"                                        # 12: blank, ignored
        "pets/cat1.jpg,cat,ann,0.9\n"               # 13: same as line 2: nothing new
        "pets/dog1.jpg,dog,cy,\n"                   # 14
        "pets/dog1.jpg,cat,cy,\n"                   # 15: cy contradicts line 14: neither used
    ).encode())
    events, problems = read(path)
    assert [(e.image_id, e.label, e.annotator, e.confidence, e.origin) for e in events] == [
        (A, "cat", "ann", 0.9, "team.csv:2"), (B, "car", "bob", None, "team.csv:3")]
    assert {e.source for e in events} == {"import"} and {e.origin_file for e in events} == {"team.csv"}
    assert len({e.source_digest for e in events}) == 1
    lines = {problem.line: problem.reason for problem in problems}
    assert sorted(lines) == [4, 5, 6, 7, 8, 9, 10, 11, 15]
    assert "unknown class 'truck'" in lines[4] and "unknown image 'missing.jpg'" in lines[5]
    assert "malformed confidence 'high'" in lines[6] and "malformed confidence '1.5'" in lines[7]
    assert "unbalanced quote" in lines[8] and "5 fields but the header has 4" in lines[9]
    assert "no image_id" in lines[10] and lines[11] == "no label"
    assert "different labels" in lines[15] and "line 14" in lines[15]
    assert all(problem.file == "team.csv" and "\n" not in str(problem) for problem in problems)
    assert str(problems[0]) == "team.csv:4: " + lines[4]


def test_csv_by_image_id_as_a_review(tmp_path):
    path = tmp_path / "round1.csv"
    path.write_text(f"image_id,label,annotator\n{A},dog,rev\n{'f' * 64},dog,rev\n")
    events, problems = read(path, source="review")
    assert [(e.image_id, e.label, e.source) for e in events] == [(A, "dog", "review")]
    assert [(p.line, p.reason) for p in problems] == [(3, f"unknown image {'f' * 64!r}")]


def test_latin1_csv_is_refused_in_one_line_and_nothing_is_used(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("path,label\npets/caf\u00e9.jpg,cat\npets/cat1.jpg,cat\n".encode("latin-1"))
    events, problems = read(path)
    assert events == [] and len(problems) == 1
    assert "not UTF-8" in problems[0].reason and "line 2" in problems[0].reason and "\n" not in problems[0].reason


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("name,tag\nx,y\n", "needs a 'label' column")])
def test_csv_without_the_columns_is_one_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    events, problems = read(path)
    assert events == [] and len(problems) == 1 and message in problems[0].reason


def coco_document():
    return {
        "images": [
            {"id": 1, "file_name": "pets/cat1.jpg"},
            {"id": 2, "file_name": "car1.jpg", "category_id": 3},      # the image's own category
            {"id": 3, "file_name": "unknown.jpg"},
            {"id": 4, "file_name": "pets/dog1.jpg"},
            {"width": 3},                                              # malformed
            {"id": D, "file_name": "somewhere/else.jpg"},             # found by id: our image id
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1},               # image-level
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12},  # a box: carried
            {"id": 12, "image_id": 3, "category_id": 1},               # the unknown image: reported once
            {"id": 13, "image_id": 4, "category_id": 9},               # unknown category id
            {"id": 14, "image_id": 4, "category_id": 4},               # a class the taxonomy does not know
            {"id": 15, "image_id": 99, "category_id": 1},              # no such image in the file
            {"id": 16, "image_id": D, "category_id": 2},
            {"id": 17, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "automobile"},
                       {"id": 4, "name": "truck"}],
    }


def test_coco_image_level_categories_with_boxes_carried_through(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_document()))
    events, problems = read(path, read_coco_labels)
    by_image = {event.image_id: event for event in events}
    assert {image: event.label for image, event in by_image.items()} == {A: "cat", C: "car", D: "dog"}
    carried = json.loads(by_image[A].extra)
    assert carried["boxes"] == [{"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12}]
    assert carried["categories"] == {"3": "automobile"}
    assert json.loads(by_image[C].extra)["boxes"][0]["bbox"] == [0, 0, 5, 5]
    assert by_image[D].extra is None and by_image[A].origin == "coco.json annotation 10"
    reasons = {problem.item: problem.reason for problem in problems}
    assert reasons == {
        "image 3": "unknown image 'unknown.jpg'",
        "images[4]": "malformed image: it needs a 'file_name' (a string) or an 'id' (a number or string)",
        "annotation 13": "unknown category_id 9",
        "annotation 14": TAXONOMY.describe_unknown("truck"),
        "annotation 15": "annotation of image 99, which is not in 'images'",
    }


def test_coco_conflicts_and_boxes_without_a_label_are_reported(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "pets/cat1.jpg"}, {"id": 2, "file_name": "pets/dog1.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 2},
                        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    events, problems = read(path, read_coco_labels)
    assert events == []
    assert [(p.item, p.reason) for p in problems] == [
        ("image 1", "several image-level categories (cat, dog); none is used"),
        ("image 2", "1 box(es) but no image-level category: no label, so the boxes are not carried")]


def test_broken_json_is_one_problem_with_its_line(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    events, problems = read(path, read_coco_labels)
    assert events == [] and problems[0].line == 2 and "not valid JSON" in problems[0].reason


def label_studio_export():
    return [
        {"id": 1, "data": {"image": "http://ls/1.jpg", "image_id": A},
         "annotations": [
             {"id": 101, "completed_by": {"id": 1, "email": "ann@x.org"}, "was_cancelled": False,
              "updated_at": "2026-02-01T10:00:00.000000Z",
              "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                          "value": {"choices": ["dog"]}}]},
             {"id": 102, "completed_by": 2, "was_cancelled": False, "updated_at": "2026-02-01T11:00:00Z",
              "result": [{"type": "choices", "value": {"choices": ["cat"]}},
                         {"type": "rectanglelabels", "value": {"x": 1, "rectanglelabels": ["cat"]}}]},
             {"id": 103, "completed_by": 3, "was_cancelled": True, "result": []},
         ],
         "predictions": [{"model_version": "cv-dataops", "result": [{"type": "choices",
                                                                      "value": {"choices": ["cat"]}}]}]},
        {"id": 2, "data": {"image": "http://ls/2.jpg", "image_id": B},
         "annotations": [{"id": 201, "completed_by": 1, "was_cancelled": True, "result": []}]},   # skipped only
        {"id": 3, "data": {"image": "http://ls/3.jpg", "image_id": "e" * 64},                    # unknown image
         "annotations": [{"id": 301, "result": [{"type": "choices", "value": {"choices": ["cat"]}}]}]},
        {"id": 4, "data": {"image": "/land/street/car1.jpg"},                                   # found by uri
         "annotations": [{"id": 401, "completed_by": 1, "created_at": "2026-02-02T09:00:00+01:00",
                          "result": [{"type": "choices", "value": {"choices": ["Automobile"]}}]}]},
        {"id": 5, "data": {"image_id": C},
         "annotations": [{"id": 501, "result": [{"type": "choices", "value": {"choices": ["truck"]}}]},
                         {"id": 502, "result": []},
                         {"id": 503, "result": [{"type": "choices", "value": {"choices": ["cat", "dog"]}}]},
                         {"id": 504, "updated_at": "yesterday",
                          "result": [{"type": "choices", "value": {"choices": ["cat"]}}]},
                         {"id": 505, "result": [{"type": "choices", "value": ["cat"]}]},
                         {"id": 506, "result": [{"type": "choices", "value": {"choices": [7]}}]}]},
        {"id": 6, "data": {"image_id": D}},                                                      # not annotated
        "not a task",
    ]


def test_label_studio_export_cancelled_disagreeing_and_bad_annotations(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(label_studio_export()))
    events, problems = read(path, read_label_studio_export)
    assert [(e.image_id, e.label, e.annotator, e.origin) for e in events] == [
        (A, "dog", "ann@x.org", "export.json task 1 annotation 101"),
        (A, "cat", "user 2", "export.json task 1 annotation 102"),   # they disagree: the audit says disputed
        (C, "car", "user 1", "export.json task 4 annotation 401")]
    assert {e.source for e in events} == {"review"}
    assert events[0].at == datetime(2026, 2, 1, 10, tzinfo=timezone.utc)
    assert events[2].at == datetime(2026, 2, 2, 8, tzinfo=timezone.utc)
    assert json.loads(events[1].extra) == {"results": [{"type": "rectanglelabels",
                                                        "value": {"x": 1, "rectanglelabels": ["cat"]}}]}
    reasons = {problem.item: problem.reason for problem in problems}
    assert reasons == {
        "task 3": f"unknown image {'e' * 64!r}",
        "task 5 annotation 501": TAXONOMY.describe_unknown("truck"),
        "task 5 annotation 502": "submitted without a choice (skip it with 'Skip' instead)",
        "task 5 annotation 503": "several choices ['cat', 'dog'] where one label is expected",
        "task 5 annotation 504": "malformed updated_at 'yesterday'",
        "task 5 annotation 505": "malformed choices result: 'value.choices' is not a list",
        "task 5 annotation 506": "malformed choice [7] (labels are strings)",
        "tasks[6]": "malformed task: it needs a 'data' object",
    }
    assert str(problems[0]) == "export.json (task 3): " + reasons["task 3"]


def test_the_label_studio_tasks_we_export_come_back_by_their_image_id(tmp_path):
    from cv_dataops.exports.label_studio import export_label_studio

    rows = pd.DataFrame({"image_id": [A, B], "uri": ["/land/pets/cat1.jpg", "/land/pets/dog1.jpg"],
                         "split": ["train", "train"], "label": ["cat", None]})
    tasks = export_label_studio(rows, image_url=lambda uri: "http://ls/data/local-files/?d=" + uri)
    for number, task in enumerate(tasks, start=1):  # a reviewer answers each task
        task["id"] = number
        task["annotations"] = [{"id": number, "completed_by": 1, "result": [{"type": "choices",
                                                                               "value": {"choices": ["dog"]}}]}]
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps(tasks))
    events, problems = read(path, read_label_studio_export)
    assert problems == [] and [(e.image_id, e.label) for e in events] == [(A, "dog"), (B, "dog")]


def test_read_label_file_picks_the_format(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\npets/cat1.jpg,cat\n")
    (tmp_path / "coco.json").write_text(json.dumps(coco_document()))
    (tmp_path / "ls.json").write_text(json.dumps(label_studio_export()))
    (tmp_path / "notes.txt").write_text("cat")
    (tmp_path / "odd.json").write_text('"cat"')
    assert len(read(tmp_path / "a.csv", read_label_file)[0]) == 1
    assert len(read(tmp_path / "coco.json", read_label_file)[0]) == 3
    assert len(read(tmp_path / "ls.json", read_label_file, source="review")[0]) == 3
    assert "not a label file" in read(tmp_path / "notes.txt", read_label_file)[1][0].reason
    assert "neither COCO" in read(tmp_path / "odd.json", read_label_file)[1][0].reason
    with pytest.raises(ValueError, match="source must be one of"):
        read(tmp_path / "a.csv", read_label_file, source="auto")


def test_landing_labels_become_events_with_one_digest_per_batch():
    events, problems = landing_events(IMAGES, Taxonomy.from_config(["cat", "dog"]))
    assert [(e.image_id, e.label, e.source) for e in events] == [(A, "cat", "landing"), (B, "dog", "landing")]
    assert [(p.item, p.reason) for p in problems] == [
        ("landing street/car1.jpg (batch b2)", "unknown class 'automobile' (classes: cat, dog)")]
    open_events, _ = landing_events(IMAGES, Taxonomy())
    assert len({e.source_digest for e in open_events}) == 2 and open_events[0].at.year == 2026
    again, _ = landing_events(IMAGES, Taxonomy())
    assert [e.event_id for e in again] == [e.event_id for e in open_events]


def test_coco_ids_of_the_wrong_type_and_repeated_images_are_reported(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({
        "images": [{"id": [1], "file_name": "pets/cat1.jpg"}, {"id": 2, "file_name": "pets/cat1.jpg"},
                   {"id": 2, "file_name": "pets/dog1.jpg"}, {"file_name": "car1.jpg", "category": "automobile"}],
        "annotations": [{"id": 1, "image_id": {"x": 1}, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": [1]},
                        {"id": 3, "image_id": 2, "category_id": 1}],
        "categories": [{"id": 1, "name": "cat"}, {"id": True, "name": "dog"}]}))
    events, problems = read(path, read_coco_labels)
    assert sorted((e.image_id, e.label) for e in events) == [(A, "cat"), (C, "car")]
    assert [(p.item, p.reason) for p in problems] == [
        ("categories[1]", "malformed category: it needs an 'id' and a 'name'"),
        ("images[0]", "malformed image: it needs a 'file_name' (a string) or an 'id' (a number or string)"),
        ("image 2", "image id 2 is listed twice; the first is used"),
        ("annotation 1", "malformed annotation: it needs an 'image_id' (a number or string)"),
        ("annotation 2", "unknown category_id [1]")]


def test_random_json_never_crashes_a_reader():
    """Arbitrary shapes in the places the readers look: always (events, problems), never an exception."""
    import random

    rng = random.Random(7)
    atoms = [None, 1, 1.5, "cat", "pets/cat1.jpg", A, [], {}, [1], {"a": 1}, True, "2026-01-01T00:00:00Z"]
    keys = ["id", "image_id", "file_name", "category_id", "bbox", "name", "images", "annotations", "categories",
            "data", "result", "value", "choices", "type", "was_cancelled", "completed_by", "updated_at", "image"]

    def value(depth=0):
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(atoms)
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 5))}

    def coco():
        return {"images": [{"id": value(), "file_name": value(), "category_id": value()} for _ in range(2)],
                "annotations": [{"id": value(), "image_id": value(), "category_id": value(), "bbox": value()}],
                "categories": [{"id": value(), "name": value()}, value()]}

    def label_studio():
        return [{"id": value(), "data": {"image_id": value(), "image": value()},
                 "annotations": [{"id": value(), "was_cancelled": value(), "completed_by": value(),
                                  "updated_at": value(), "result": [{"type": "choices",
                                                                     "value": {"choices": value()}}, value()]}]},
                value()]

    for _ in range(1500):
        document = rng.choice([coco, label_studio, value])()
        events, problems = read_label_file(json.dumps(document).encode(), "fuzz.json", taxonomy=TAXONOMY,
                                           images=LOOKUP, source="review")
        assert all("\n" not in str(problem) for problem in problems)
        assert all(event.image_id in set(IMAGES["image_id"]) for event in events)
