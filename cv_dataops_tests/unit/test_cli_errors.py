"""The one line the command line prints for an error a step raised."""

from __future__ import annotations

import sqlite3

from cv_dataops.cli import cause_line


def test_a_multi_line_database_error_becomes_its_first_line_with_the_free_space(tmp_path):
    try:
        raise sqlite3.OperationalError("disk I/O error")
    except sqlite3.OperationalError as cause:
        error = RuntimeError(f"(sqlite3.OperationalError) {cause}\n[SQL: PRAGMA main.table_xinfo(\"runs\")]\n"
                             "(Background on this error at: https://sqlalche.me/e/21/e3q8)")
    line = cause_line(error, str(tmp_path / "data" / "not-made-yet"))
    assert "\n" not in line and line.startswith("(sqlite3.OperationalError) disk I/O error (")
    assert "KB free on the disk holding" in line and line.endswith("is it full?)")


def test_other_errors_keep_their_message_and_s3_roots_get_no_disk_hint():
    assert cause_line(ValueError("bad thing\nmore")) == "bad thing"
    assert cause_line(OSError(28, "No space left on device"), "s3://bucket/root") == \
        "[Errno 28] No space left on device"
    assert cause_line(KeyError()) == "KeyError"
