"""The labels store on a local data root: append-only versions, reads as of a version, idempotent per source."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.labels.sources import LabelEvent, read_csv_labels
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.tables import LABELS
from cv_dataops.labels.taxonomy import Taxonomy

A, B = "a" * 64, "b" * 64
LOOKUP = {A: A, B: B}
NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def csv_events(tmp_path, name, text, source="review"):
    path = tmp_path / name
    path.write_text(text)
    events, problems = read_csv_labels(path.read_bytes(), name, taxonomy=Taxonomy(), images=LOOKUP, source=source)
    assert problems == []
    return events


def test_append_read_as_of_and_idempotent_per_source(tmp_path):
    root = tmp_path / "data"
    store = LabelStore(LocalStorage(root))
    assert store.latest_version() == 0 and store.read().empty and list(store.read().columns) == LABELS.column_names
    first = csv_events(tmp_path, "r1.csv", f"image_id,label,annotator\n{A},cat,ann\n{B},dog,ann\n")
    assert store.append(first, now=NOW) == 1
    stored = store.read()
    assert stored["label"].tolist() == ["cat", "dog"] and set(stored["labels_version"]) == {1}
    assert stored["event_id"].tolist() == [event.event_id for event in first]
    assert stored["at"].tolist() == [NOW, NOW] and stored["recorded_at"].tolist() == [NOW, NOW]
    assert stored["origin"].tolist() == ["r1.csv:2", "r1.csv:3"]
    version_file = root / "catalog" / "labels" / "00000001.parquet"
    before = version_file.read_bytes()

    # The same file again, even under another name, changes nothing.
    (tmp_path / "copy.csv").write_bytes((tmp_path / "r1.csv").read_bytes())
    again = csv_events(tmp_path, "copy.csv", (tmp_path / "r1.csv").read_text())
    assert store.append(again) == 1 and store.append(first) == 1 and store.append([]) == 1
    assert store.versions() == [1]

    second = csv_events(tmp_path, "r2.csv", f"image_id,label,annotator\n{A},dog,bob\n")
    assert store.append(second + first) == 2  # only the new file's event is added
    assert store.read()["labels_version"].tolist() == [1, 1, 2]
    assert store.read(as_of=1)["label"].tolist() == ["cat", "dog"]
    assert store.read(as_of=0).empty
    assert version_file.read_bytes() == before  # an earlier version is never rewritten
    with pytest.raises(ValueError, match="no version 3: the latest is 2"):
        store.read(as_of=3)

    # Where every catalog table is: what `cv-dataops table labels` and SQL search read.
    assert Catalog(LocalStorage(root)).read("labels").num_rows == 3
    assert LabelStore(LocalStorage(root)).latest_version() == 2  # a new process sees the same store


def test_a_version_published_by_another_appender_is_not_overwritten(tmp_path):
    storage = LocalStorage(tmp_path)
    store, other = LabelStore(storage), LabelStore(LocalStorage(tmp_path))
    mine = csv_events(tmp_path, "mine.csv", f"image_id,label\n{A},cat\n")
    theirs = csv_events(tmp_path, "theirs.csv", f"image_id,label\n{B},dog\n")
    create = storage.create_bytes

    def race(key, data):  # another process publishes the same version just before us
        storage.create_bytes = create
        other.append(theirs)
        return create(key, data)

    storage.create_bytes = race
    assert store.append(mine) == 2
    assert store.read()[["labels_version", "label"]].values.tolist() == [[1, "dog"], [2, "cat"]]


@pytest.mark.parametrize(("change", "message"), [
    ({"source": "folder"}, "source must be one of"),
    ({"label": ""}, "without an image id or label"),
    ({"confidence": 1.5}, "outside"),
    ({"source": "auto"}, "needs its model_version"),
])
def test_invalid_events_are_refused_before_anything_is_written(tmp_path, change, message):
    store = LabelStore(LocalStorage(tmp_path))
    good = LabelEvent(image_id=A, label="cat", source="import", origin="x.csv:2", origin_file="x.csv",
                      source_digest="d")
    bad = LabelEvent(**{**good.as_dict(), "source_digest": "e", **change})
    with pytest.raises(ValueError, match=message):
        store.append([good, bad])
    assert store.latest_version() == 0


def test_auto_events_keep_their_model_and_confidence(tmp_path):
    store = LabelStore(LocalStorage(tmp_path))
    auto = LabelEvent(image_id=B, label="dog", source="auto", origin="label_model m1", origin_file="auto_labels",
                      source_digest="m1-run", confidence=0.97, model_version="m1")
    store.append([auto])
    row = store.read().iloc[0]
    assert (row["source"], row["model_version"], row["confidence"]) == ("auto", "m1", 0.97)


def test_append_file_reports_what_it_did(tmp_path):
    store = LabelStore(LocalStorage(tmp_path / "data"))
    data = f"image_id,label,annotator\n{A},cat,ann\n{'c' * 64},cat,ann\n".encode()
    first = store.append_file(data, "reviews/r1.csv", taxonomy=Taxonomy(), images=LOOKUP, source="review")
    assert (first.version, first.appended, first.already_stored) == (1, 1, False)
    assert [str(problem) for problem in first.problems] == [f"reviews/r1.csv:3: unknown image {'c' * 64!r}"]
    again = store.append_file(data, "reviews/r1-again.csv", taxonomy=Taxonomy(), images=LOOKUP, source="review")
    assert (again.version, again.appended, again.already_stored, again.problems) == (1, 0, True, [])
    broken = store.append_file(b"\xff\xfe", "reviews/bad.csv", taxonomy=Taxonomy(), images=LOOKUP, source="review")
    assert (broken.version, broken.appended) == (1, 0) and "UTF-16" in broken.problems[0].reason
    assert store.read()["source"].tolist() == ["review"]
    assert first.as_dict()["problems"] == [str(first.problems[0])]
