"""The schema machinery of the common data model: a table is a name, a description and typed columns.

Each domain defines its own tables with it (``<domain>/tables.py``); ``cv_dataops.tables`` lists them all. The one
definition validates every write, becomes the ``dagster/column_schema`` metadata and generates ``docs/data-model.md``.
Column names are a public contract: add columns freely, never rename or remove one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = True


@dataclass(frozen=True)
class TableDefinition:
    """A named catalog table: its columns and whether it is stored one file per batch."""

    name: str
    description: str
    columns: tuple[Column, ...]
    partitioned_by_batch: bool
    written_by: str

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def empty(self) -> pa.Table:
        return self.arrow_schema.empty_table()

    def from_rows(self, rows: Iterable[Mapping[str, object]]) -> pa.Table:
        """Build a table from dicts; missing nullable columns become nulls, unknown keys are an error."""
        rows = list(rows)
        known = set(self.column_names)
        for row in rows:
            unknown = set(row) - known
            if unknown:
                raise ValueError(f"table {self.name!r} has no column(s) {sorted(unknown)}")
        loose = pa.schema([pa.field(c.name, c.type) for c in self.columns])  # nulls are reported by conform
        return self.conform(pa.Table.from_pylist([{c: row.get(c) for c in self.column_names} for row in rows],
                                                 schema=loose))

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast ``table`` to this schema, in column order; raise if a column is missing or a null is not allowed."""
        missing = [c for c in self.column_names if c not in table.column_names]
        if missing:
            raise ValueError(f"table {self.name!r} is missing column(s) {missing}")
        table = table.select(self.column_names)
        for column in self.columns:
            if not column.nullable and table.column(column.name).null_count:
                raise ValueError(f"table {self.name!r}: column {column.name!r} has nulls")
        return table.cast(self.arrow_schema)

    def schema_problems(self, schema: pa.Schema) -> list[str]:
        """Differences between a stored table's schema and this definition (empty when they agree)."""
        problems = []
        for column in self.columns:
            if column.name not in schema.names:
                problems.append(f"missing column {column.name}")
            elif not schema.field(column.name).type.equals(column.type):
                problems.append(f"{column.name}: {schema.field(column.name).type} instead of {column.type}")
        problems += [f"unexpected column {name}" for name in schema.names if name not in self.column_names]
        return problems
