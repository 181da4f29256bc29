"""The audited label per image, from real label files appended to a local labels store."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.labels.audit import audit
from cv_dataops.labels.sources import (
    LabelEvent,
    landing_events,
    read_csv_labels,
    read_label_studio_export,
)
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.tables import AUDIT_STATUSES, AUDITED_LABELS
from cv_dataops.labels.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_config({"classes": ["cat", "dog", "fox"], "aliases": {"kitty": "cat"}})
IDS = [letter * 64 for letter in "abcdefgh"]
A, B, C, D, E, F, G, H = IDS
LOOKUP = {image_id: image_id for image_id in IDS}
IMAGES = pd.DataFrame({"image_id": [A, B, C, G], "relative_path": ["cat/a.jpg", "cat/b.jpg", "dog/c.jpg", "cow/g.jpg"],
                       "batch_id": ["b1"] * 4, "label": ["cat", "cat", "dog", "cow"],
                       "ingested_at": pd.to_datetime(["2026-01-01"] * 4, utc=True)})


def choice(annotation_id, label, annotator, at, cancelled=False):
    return {"id": annotation_id, "completed_by": annotator, "was_cancelled": cancelled, "updated_at": at,
            "result": [] if cancelled else [{"type": "choices", "value": {"choices": [label]}}]}


def load(store, tmp_path, name, content, source):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    reader = read_csv_labels if name.endswith(".csv") else read_label_studio_export
    events, problems = reader(path.read_bytes(), name, taxonomy=TAXONOMY, images=LOOKUP, source=source)
    assert problems == []
    return store.append(events)


@pytest.fixture
def store(tmp_path):
    store = LabelStore(LocalStorage(tmp_path / "data"))
    events, problems = landing_events(IMAGES, Taxonomy())  # open at landing: 'cow' came from a folder
    assert problems == []
    store.append(events)
    load(store, tmp_path, "team.csv", f"image_id,label\n{C},kitty\n{D},fox\n", "import")  # C: landing says dog
    load(store, tmp_path, "reviews.json", [
        {"id": 1, "data": {"image_id": A}, "annotations": [choice(11, "cat", "ann", "2026-02-01T10:00:00Z")]},
        {"id": 2, "data": {"image_id": B}, "annotations": [choice(21, "dog", "ann", "2026-02-01T10:00:00Z"),
                                                           choice(22, "dog", "bob", "2026-02-01T10:05:00Z")]},
        # E: a cancelled annotation (no decision) and two that disagree; the later one is picked
        {"id": 3, "data": {"image_id": E}, "annotations": [choice(31, None, "cy", "2026-02-01T09:00:00Z", True),
                                                           choice(32, "fox", "ann", "2026-02-01T10:00:00Z"),
                                                           choice(33, "dog", "bob", "2026-02-01T11:00:00Z")]},
        # F: two against one
        {"id": 4, "data": {"image_id": F}, "annotations": [choice(41, "cat", "ann", "2026-02-01T12:00:00Z"),
                                                           choice(42, "fox", "bob", "2026-02-01T10:00:00Z"),
                                                           choice(43, "fox", "cy", "2026-02-01T10:00:00Z")]},
    ], "review")
    store.append([LabelEvent(image_id=H, label="dog", source="auto", origin="label_model m1",
                             origin_file="auto_labels", source_digest="auto-m1", confidence=0.91,
                             model_version="m1", at=datetime(2026, 2, 2, tzinfo=timezone.utc)),
                  LabelEvent(image_id=A, label="dog", source="auto", origin="label_model m1",
                             origin_file="auto_labels", source_digest="auto-m1", confidence=0.99,
                             model_version="m1", at=datetime(2026, 2, 2, tzinfo=timezone.utc))])
    return store


def by_image(frame):
    return {row.image_id: row for row in frame.itertuples(index=False)}


def test_precedence_statuses_and_reasons(store):
    audited = audit(store.read(), TAXONOMY)
    assert audited["image_id"].tolist() == sorted(audited["image_id"])
    assert set(audited["status"]) <= set(AUDIT_STATUSES)
    rows = by_image(audited)
    summary = {image: (row.label, row.status, row.source) for image, row in rows.items()}
    assert summary == {
        A: ("cat", "reviewed", "landing"),     # the landing label, confirmed by review; the model's dog ignored
        B: ("cat", "disputed", "landing"),     # two reviewers say dog: human beats review, but it is disputed
        C: ("cat", "disputed", "import"),      # landing says dog, the later imported file says cat
        D: ("fox", "human", "import"),
        E: ("dog", "disputed", "review"),      # one each: the latest (bob, 11:00) is picked; cy cancelled
        F: ("fox", "disputed", "review"),      # two against one: the majority
        G: ("cow", "human", "landing"),        # a folder label the taxonomy does not know: kept, flagged
        H: ("dog", "auto_accepted", "auto"),
    }
    assert rows[A].reason == "human label (landing) confirmed by review (ann)"
    assert rows[B].reason == ("review says dog (ann, bob) against the human label cat (landing); the human label "
                              "is kept (human beats review)")
    assert (rows[B].human_label, rows[B].review_label, rows[B].votes) == ("cat", "dog", "human: cat 1; review: dog 2")
    assert rows[C].reason == "human sources disagree: cat (team.csv), dog (landing); cat by latest"
    assert rows[E].reason == "reviewers disagree: dog (bob), fox (ann); dog by latest"
    assert rows[F].reason == "reviewers disagree: fox (bob, cy), cat (ann); fox by majority"
    assert rows[F].annotators == "bob, cy"
    assert rows[H].reason == "label model m1, confidence 0.910; no human or review label"
    assert (rows[H].confidence, rows[H].model_version) == (0.91, "m1")
    assert [image for image, row in rows.items() if not row.in_taxonomy] == [G]
    assert set(audited["labels_version"]) == {store.latest_version()}
    catalog = Catalog(store.catalog.storage)  # the frame is written as it is, in the table's schema
    catalog.write(AUDITED_LABELS, pa.Table.from_pandas(audited, preserve_index=False))
    assert catalog.read("audited_labels").to_pandas()["reason"].tolist() == audited["reason"].tolist()


def test_review_can_be_told_to_override_the_human_label(store):
    rows = by_image(audit(store.read(), TAXONOMY, review_overrides_human=True))
    assert (rows[B].label, rows[B].status, rows[B].source) == ("dog", "reviewed", "review")
    assert rows[B].reason == "review (ann, bob); overrides the human label cat (landing)"
    assert (rows[A].label, rows[A].status) == ("cat", "reviewed")
    assert (rows[C].label, rows[C].status) == ("cat", "disputed")  # no review: the humans still disagree


def test_a_reviewer_who_changes_their_mind_counts_once_and_redropping_changes_nothing(store, tmp_path):
    before = audit(store.read(), TAXONOMY)
    version = store.latest_version()
    assert load(store, tmp_path, "reviews-copy.json", (tmp_path / "reviews.json").read_text(), "review") == version
    pd.testing.assert_frame_equal(audit(store.read(), TAXONOMY), before)
    # bob answers E again, later, now agreeing with ann: one vote each, so the reviewers agree
    load(store, tmp_path, "round2.json", [{"id": 3, "data": {"image_id": E},
                                           "annotations": [choice(90, "fox", "bob", "2026-02-05T10:00:00Z")]}],
         "review")
    rows = by_image(audit(store.read(), TAXONOMY))
    assert (rows[E].label, rows[E].status, rows[E].reason) == ("fox", "reviewed", "review (ann, bob)")
    assert by_image(audit(store.read(as_of=version), TAXONOMY))[E].status == "disputed"  # as of before round 2


def test_ties_on_time_go_to_the_first_annotator_name(tmp_path):
    store = LabelStore(LocalStorage(tmp_path))
    load(store, tmp_path, "tie.json", [{"id": 1, "data": {"image_id": A}, "annotations": [
        choice(2, "dog", "zed", "2026-02-01T10:00:00Z"), choice(1, "cat", "amy", "2026-02-01T10:00:00Z")]}], "review")
    row = audit(store.read(), TAXONOMY).iloc[0]
    assert (row.label, row.status, row.reason) == ("cat", "disputed",
                                                   "reviewers disagree: cat (amy), dog (zed); cat by annotator name")


def test_the_audit_does_not_depend_on_event_order(store):
    events = store.read()
    shuffled = events.sample(frac=1.0, random_state=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(audit(shuffled, TAXONOMY), audit(events, TAXONOMY))


def test_auto_labels_below_the_acceptance_are_not_accepted(store):
    rows = by_image(audit(store.read(), TAXONOMY, min_auto_confidence=0.95))
    assert H not in rows and rows[A].status == "reviewed"


def test_empty_and_malformed_input(store):
    empty = audit(store.read(as_of=0), TAXONOMY)
    assert empty.empty and list(empty.columns) == AUDITED_LABELS.column_names
    with pytest.raises(ValueError, match="missing"):
        audit(pd.DataFrame({"image_id": [A]}), TAXONOMY)
