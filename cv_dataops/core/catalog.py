"""Named catalog tables as Parquet under a data root.

A table partitioned by batch is one file per batch (``catalog/<table>/<batch_id>.parquet``), so re-running a batch
replaces exactly its own rows; other tables are one file (``catalog/<table>/all.parquet``). Reading a table
concatenates its files. DuckDB and pyarrow can read the same files directly (``catalog/<table>/*.parquet``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from cv_dataops.core.schema import TableDefinition
from cv_dataops.core.storage import Storage, check_key

CATALOG_PREFIX = "catalog"
UNPARTITIONED = "all"


class Catalog:
    def __init__(self, storage: Storage):
        self.storage = storage

    def __repr__(self) -> str:
        return f"Catalog({self.storage.uri!r})"

    @staticmethod
    def _definition(table: TableDefinition | str) -> TableDefinition:
        if isinstance(table, TableDefinition):
            return table
        from cv_dataops.tables import (
            table_definition,  # by name: the list of every domain's tables
        )

        return table_definition(table)

    def key(self, table: TableDefinition | str, partition: str | None = None) -> str:
        definition = self._definition(table)
        if definition.partitioned_by_batch and partition is None:
            raise ValueError(f"table {definition.name!r} is written one batch at a time: give the batch")
        name = check_key(partition) if definition.partitioned_by_batch else UNPARTITIONED
        return f"{CATALOG_PREFIX}/{definition.name}/{name}.parquet"

    def uri(self, table: TableDefinition | str, partition: str | None = None) -> str:
        return self.storage.uri_of(self.key(table, partition))

    def write(self, table: TableDefinition | str, data: pa.Table, partition: str | None = None) -> str:
        """Validate ``data`` against the table's schema and publish it atomically; returns its URI."""
        definition = self._definition(table)
        conformed = definition.conform(data)
        buffer = io.BytesIO()
        pq.write_table(conformed, buffer, compression="zstd")
        key = self.key(definition, partition)
        self.storage.write_bytes(key, buffer.getvalue())
        return self.storage.uri_of(key)

    def partitions(self, table: TableDefinition | str) -> list[str]:
        return sorted(self.partition_versions(table))

    def partition_versions(self, table: TableDefinition | str) -> dict[str, str]:
        """Each stored file of ``table`` and its version (S3 ETag, or size and mtime): one listing, no reads. What
        incremental stages compare to tell which batches changed since they last looked."""
        definition = self._definition(table)
        prefix = f"{CATALOG_PREFIX}/{definition.name}/"
        return {info.key[len(prefix):-len(".parquet")]: info.version for info in self.storage.list(prefix)
                if info.key.endswith(".parquet") and "/" not in info.key[len(prefix):]}

    def read_file(self, table: TableDefinition | str, partition: str | None = None,
                  columns: Sequence[str] | None = None) -> pa.Table:
        """One stored file as it is on disk (no casting), for checks that verify what was written; of ``columns``,
        those the file has (one written before a column was added lacks it: :meth:`read` fills it in)."""
        data = self.storage.read_bytes(self.key(table, partition))
        if not columns:
            return pq.read_table(io.BytesIO(data))
        present = set(pq.read_schema(io.BytesIO(data)).names)  # a file older than a column lacks it
        return pq.read_table(io.BytesIO(data), columns=[c for c in columns if c in present])

    def read(self, table: TableDefinition | str, partitions: Iterable[str] | None = None,
             columns: Sequence[str] | None = None) -> pa.Table:
        """The current version of a table (all batches unless ``partitions`` is given), in the code's schema."""
        definition = self._definition(table)
        if definition.partitioned_by_batch:
            names = self.partitions(definition) if partitions is None else list(partitions)
        else:
            names = [UNPARTITIONED] if self.storage.exists(self.key(definition)) else []
        schema = definition.arrow_schema
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        parts = []
        for name in names:
            try:
                part = self.read_file(definition, None if name == UNPARTITIONED else name, columns)
            except FileNotFoundError:
                continue  # a batch with no file yet has no rows
            parts.append(_conform(part, schema, definition.name))
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def delete(self, table: TableDefinition | str, partition: str | None = None) -> None:
        self.storage.delete(self.key(table, partition))


def _conform(part: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    """A stored file in the code's schema. Columns are added, never removed (docs/data-model.md): a file written
    before a nullable column existed reads it as nulls; a missing column that may not be null is an error that
    names it."""
    present = set(part.column_names)
    for field in schema:
        if field.name not in present:
            if not field.nullable:
                raise ValueError(f"table {table}: a stored file lacks column {field.name!r}, which may not be null")
            part = part.append_column(field, pa.nulls(part.num_rows, field.type))
    return part.select(schema.names).cast(schema)
