"""Dropped label files: found by extension, keyed by name and content, appended once, problems with file and line."""

from cv_dataops.core.storage import LocalStorage
from cv_dataops.labels.review import (
    append_dropped,
    dropped_files,
    dropped_names,
    file_key,
    imports_summary,
    pending_files,
)
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.taxonomy import Taxonomy

IMAGES = {"img-a": "img-a", "img-b": "img-b"}


def test_label_files_are_found_and_hidden_or_other_files_skipped(tmp_path):
    folder = tmp_path / "reviews"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.csv", "sub/b.JSON", ".hidden.csv", "notes.txt"):
        (folder / name).write_text("x")
    assert dropped_names(LocalStorage(folder)) == ["a.csv", "sub/b.JSON"]
    (dropped, data), _ = list(dropped_files(LocalStorage(folder)))
    assert dropped.key == file_key("a.csv", dropped.digest) and data == b"x" and dropped.size == 1


def test_a_file_is_appended_once_with_its_bad_rows_reported_by_line(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "round1.csv").write_text("image_id,label,annotator\nimg-a,cat,ann\nimg-x,cat,ann\nimg-b,emu,ann\n")
    store = LabelStore(LocalStorage(tmp_path / "data"))
    taxonomy = Taxonomy.from_config(["cat", "dog"])
    assert [f.name for f in pending_files(store, LocalStorage(folder))] == ["round1.csv"]
    first = append_dropped(store, LocalStorage(folder), source="review", taxonomy=taxonomy, images=IMAGES)
    summary = imports_summary(first)
    assert (summary["events_appended"], summary["problem_count"]) == (1, 2)
    assert [p.split(": ")[0].rsplit("/", 1)[-1] for p in summary["problems"]] == ["round1.csv:3", "round1.csv:4"]
    (folder / "copy.csv").write_bytes((folder / "round1.csv").read_bytes())  # the same decisions again
    again = append_dropped(store, LocalStorage(folder), source="review", taxonomy=taxonomy, images=IMAGES)
    assert imports_summary(again)["events_appended"] == 0 and store.latest_version() == 1
    assert pending_files(store, LocalStorage(folder)) == []
    assert (folder / "round1.csv").exists()  # files are kept
