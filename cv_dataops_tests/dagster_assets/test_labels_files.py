"""Labels files never lose labels silently: unusable files are refused in one line, bad rows are reported with
their line numbers, and every good row is applied (through ingest_batch and the raw_images asset)."""

from __future__ import annotations

import dagster as dg
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.ingest.assets import (
    LABEL_PROBLEM_COUNT,
    label_problem_counts,
    raw_images,
)
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.batch import ingest_batch
from cv_dataops.ingest.labels import LabelsFileError, LabelsFileMissing, LabelSource
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import build_resources
from cv_dataops_tests.conftest import encode, photo, write_files

IMAGES = {f"img/{name}.jpg": encode(photo(seed), "JPEG") for seed, name in enumerate("abcdefg")}


def _landing(tmp_path, labels_csv: bytes | None) -> LocalStorage:
    files = dict(IMAGES)
    if labels_csv is not None:
        files["labels.csv"] = labels_csv
    write_files(tmp_path / "landing", files)
    return LocalStorage(tmp_path / "landing")


def _ingest(tmp_path, labels_csv: bytes | None):
    landing = _landing(tmp_path, labels_csv)
    (manifest,) = BatchLedger(LocalStorage(tmp_path / "data")).plan(landing)
    result = ingest_batch(manifest, landing, labels=LabelSource("csv", landing))
    labels = {row["relative_path"]: row["label"] for row in result.images.to_pylist()}
    return labels, [(problem.line, problem.problem) for problem in result.label_problems]


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path):
    labels, problems = _ingest(tmp_path, "\ufeffpath,label\nimg/a.jpg,chat\nimg/b.jpg,été\n".encode())
    assert labels["img/a.jpg"] == "chat" and labels["img/b.jpg"] == "été" and problems == []


def test_header_names_ignore_case_and_spaces_and_crlf_lines(tmp_path):
    labels, problems = _ingest(tmp_path, b"Path , LABEL\r\n./img/a.jpg,cat\r\nimg/b.jpg,dog\r\n")
    assert (labels["img/a.jpg"], labels["img/b.jpg"], problems) == ("cat", "dog", [])


def test_a_latin1_file_is_refused_in_one_line_naming_the_file_offset_and_line(tmp_path):
    landing = _landing(tmp_path, "path,label\nimg/a.jpg,cat\nimg/b.jpg,été\n".encode("latin-1"))
    with pytest.raises(LabelsFileError) as refused:
        LabelSource("csv", landing)
    message = str(refused.value)
    assert "\n" not in message and "labels.csv is not UTF-8" in message
    assert "byte 0xe9 at offset 35 (line 3)" in message and str(tmp_path) in message


def test_a_utf16_file_is_refused(tmp_path):
    landing = _landing(tmp_path, "path,label\nimg/a.jpg,cat\n".encode("utf-16"))
    with pytest.raises(LabelsFileError, match="UTF-16"):
        LabelSource("csv", landing)


@pytest.mark.parametrize("header, missing", [(b"path,class\n", "'label'"), (b"file,label\n", "'path' or 'filename'")])
def test_a_missing_column_is_refused_listing_the_columns_found(tmp_path, header, missing):
    landing = _landing(tmp_path, header + b"img/a.jpg,cat\n")
    with pytest.raises(LabelsFileError) as refused:
        LabelSource("csv", landing)
    found = header.decode().strip().split(",")
    assert missing in str(refused.value) and str(found) in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_file_is_refused_and_says_what_to_do(tmp_path):
    landing = _landing(tmp_path, None)
    with pytest.raises(LabelsFileMissing, match=r"there is no labels.csv at .*landing/labels.csv; add it, or choose"):
        LabelSource("csv", landing)


def test_bad_rows_are_reported_with_their_lines_and_the_good_rows_applied(tmp_path):
    labels_csv = (b'path,label\n'
                  b'img/a.jpg,cat\n'            # 2: good
                  b'img/b.jpg,"dog\n'           # 3: unbalanced quote: only this line is lost
                  b'img/c.jpg,bird\n'           # 4: good (would be swallowed by the quote above in a plain reader)
                  b'img/d.jpg,cat\n'            # 5: conflict with line 8
                  b'img/e.jpg,cat,extra\n'      # 6: too many fields
                  b'\n'                         # 7: blank: ignored
                  b'img/d.jpg,dog\n'            # 8: conflict: neither label applied
                  b'img/f.jpg,fish\n'           # 9: good
                  b'img/f.jpg,fish\n'           # 10: the same label again: fine
                  b'img/zzz.jpg,cat\n'          # 11: not in the landing zone
                  b',cat\n'                     # 12: no path
                  b'img/g.jpg,\n')              # 13: empty label: unlabelled, no problem
    labels, problems = _ingest(tmp_path, labels_csv)
    assert labels == {"img/a.jpg": "cat", "img/b.jpg": None, "img/c.jpg": "bird", "img/d.jpg": None,
                      "img/e.jpg": None, "img/f.jpg": "fish", "img/g.jpg": None}
    assert [line for line, _ in problems] == [3, 6, 8, 11, 12]
    by_line = dict(problems)
    assert "malformed row" in by_line[3] and "unbalanced quote" in by_line[3]
    assert "3 fields but the header has 2" in by_line[6]
    assert by_line[8] == ("path 'img/d.jpg' is listed with different labels: 'cat' (line 5), 'dog' (line 8); "
                          "neither is applied")
    assert by_line[11] == "unknown path: 'img/zzz.jpg' is not in the landing zone"
    assert "no path or filename" in by_line[12]


def test_filename_labels_conflicts_and_unknown_names(tmp_path):
    labels, problems = _ingest(tmp_path, b"filename,label\na.jpg,cat\nb.jpg,x\nb.jpg,y\nnope.jpg,z\n")
    assert labels["img/a.jpg"] == "cat" and labels["img/b.jpg"] is None
    assert [line for line, _ in problems] == [4, 5]
    assert "unknown filename: 'nope.jpg'" in problems[1][1]


def test_a_path_in_another_batch_of_the_landing_zone_is_not_unknown(tmp_path):
    landing = _landing(tmp_path, b"path,label\nimg/a.jpg,cat\nlater/x.jpg,dog\n")
    source = LabelSource("csv", landing)
    assert source.batch_problems({"img/a.jpg"}, landing_keys=["img/a.jpg", "later/x.jpg"]) == []
    (unknown,) = source.batch_problems({"img/a.jpg"}, landing_keys=["img/a.jpg"])
    assert unknown.line == 3 and "later/x.jpg" in unknown.problem


def _materialize(tmp_path, labels_csv: bytes | None):
    _landing(tmp_path, labels_csv)
    instance = dg.DagsterInstance.ephemeral()
    (batch,) = BatchLedger(LocalStorage(tmp_path / "data")).plan(LocalStorage(tmp_path / "landing"))
    instance.add_dynamic_partitions(batch_partitions.name, [batch.batch_id])
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"), labels="csv")
    result = dg.materialize([raw_images], partition_key=batch.batch_id, instance=instance, resources=resources,
                            raise_on_error=False)
    return instance, batch.batch_id, result


def test_raw_images_reports_the_problems_in_its_metadata_and_applies_the_good_rows(tmp_path):
    instance, batch_id, result = _materialize(tmp_path, b'path,label\nimg/a.jpg,cat\nimg/b.jpg,"dog\n'
                                                        b'img/c.jpg,bird\nimg/c.jpg,fish\n')
    assert result.success
    (materialization,) = result.asset_materializations_for_node("raw_images")
    assert materialization.metadata[LABEL_PROBLEM_COUNT].value == 2
    problems = materialization.metadata["label_problems"].value
    assert [(p["line"], p["file"].endswith("landing/labels.csv")) for p in problems] == [(3, True), (5, True)]
    labels = dict(zip(*Catalog(LocalStorage(tmp_path / "data")).read("images", columns=["relative_path", "label"])
                      .to_pydict().values()))
    assert labels["img/a.jpg"] == "cat" and labels["img/b.jpg"] is None and labels["img/c.jpg"] is None
    assert label_problem_counts(instance, [batch_id]) == {batch_id: 2}


def test_raw_images_fails_with_the_one_line_cause_for_an_unusable_file(tmp_path):
    _, _, result = _materialize(tmp_path, b"path,class\nimg/a.jpg,cat\n")
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    error = failure.step_failure_data.error
    while error.cause is not None and error.cls_name != "LabelsFileError":
        error = error.cause
    assert error.cls_name == "LabelsFileError"
    assert "labels.csv needs a 'label' column and a 'path' or 'filename' column; its columns are ['path', " \
           "'class']" in error.message
