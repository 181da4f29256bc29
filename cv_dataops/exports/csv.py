"""CSV export of a dataset version, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd

from cv_dataops.curation.rows import json_scalar, present
from cv_dataops.exports.files import neutralize_formula

CSV_COLUMNS = ("image_id", "uri", "label", "scenario", "split", "snapshot_id", "selection_reason")



def _scalar_columns(rows: pd.DataFrame) -> list[str]:
    first = [c for c in CSV_COLUMNS if c in rows.columns]
    rest = []
    for column in rows.columns:
        if column in first:
            continue
        sample = next((v for v in rows[column].tolist() if v is not None), None)
        if not isinstance(sample, (list, tuple, dict, set, np.ndarray, bytes, bytearray)):
            rest.append(column)
    return first + [str(c) for c in rest]


def export_csv(rows: pd.DataFrame) -> bytes:
    """The rows as UTF-8 CSV (RFC 4180: ``\\r\\n`` line ends, fields holding line breaks quoted).

    Columns: the curated ones first (``image_id, uri, label, scenario, split, snapshot_id, selection_reason`` where
    present), then any other scalar column (vectors and other arrays are left out). Missing values are empty
    cells. Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` so a spreadsheet shows
    it instead of running it (formula injection); numbers are written as numbers.
    """
    columns = _scalar_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180; quotes fields holding \r or \n
    writer.writerow([neutralize_formula(c) for c in columns])
    for values in zip(*(rows[c].tolist() for c in columns), strict=True) if columns else []:
        writer.writerow(["" if not present(v) else neutralize_formula(json_scalar(v) if not isinstance(v, str)
                                                                       else v) for v in values])
    return buffer.getvalue().encode("utf-8")

