"""Writing catalog tables to files people open: CSV (safe for spreadsheets), Parquet, JSON."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralize_formula(value: object) -> object:
    """Prefix text a spreadsheet would run as a formula with a quote (CSV formula injection)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_table_file(table: pa.Table, path: str | Path) -> None:
    """Write by suffix: .csv, .parquet or .json (records, one JSON array)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".json"):
        raise ValueError(f"cannot write {path.name}: use a .csv, .parquet or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        pq.write_table(table, path)
        return
    frame = table.to_pandas()
    if suffix == ".json":
        frame.to_json(path, orient="records", date_format="iso", indent=1, force_ascii=False)
        return
    text_columns = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
    for column in text_columns:
        frame[column] = frame[column].map(neutralize_formula)
    frame.to_csv(path, index=False)
