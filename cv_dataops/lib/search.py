"""SQL over the catalog: DuckDB with one view per catalog table.

Local catalogs are read by DuckDB straight from the Parquet files (nothing is loaded until a query needs it); for
S3 catalogs the tables are read through the storage layer and handed to DuckDB as Arrow (DuckDB's own S3 support
would need an extension download, which a closed network does not allow).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from cv_dataops.lib.catalog import CATALOG_PREFIX, Catalog
from cv_dataops.lib.tables import TABLES


def catalog_connection(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view named after every catalog table that has data."""
    connection = duckdb.connect()
    for name, definition in TABLES.items():
        folder = catalog.storage.local_path(f"{CATALOG_PREFIX}/{name}")
        if folder is not None:
            if any(folder.glob("*.parquet")):
                pattern = str(folder / "*.parquet").replace("'", "''")
                connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', union_by_name=true)")
                continue
        table = catalog.read(definition)
        connection.register(f"_{name}_arrow", table)
        connection.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
    return connection


def run_sql(catalog: Catalog, query: str) -> pa.Table:
    """Run one read-only query over the catalog's views; errors come back as ValueError with DuckDB's message."""
    connection = catalog_connection(catalog)
    try:
        relation = connection.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as error:
        raise ValueError(f"SQL error: {str(error).splitlines()[0]}") from None
    finally:
        connection.close()
