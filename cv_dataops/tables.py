"""Every catalog table, in one list: what `cv-dataops table`, SQL search and `docs/data-model.md` see.

Each table is defined by the domain that writes it; this module only gathers them.
"""

from __future__ import annotations

from cv_dataops.core.schema import TableDefinition
from cv_dataops.curation.tables import CURATED
from cv_dataops.discovery.tables import SCENARIOS
from cv_dataops.drift.tables import (
    DATA_HEALTH,
    DRIFT,
    DRIFT_ATYPICALITY,
    DRIFT_SUMMARY,
    SEVERITIES,
)
from cv_dataops.duplicates.tables import (
    DUPLICATE_PAIRS,
    DUPLICATES,
    EMBEDDING_DUPLICATE_PAIRS,
)
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.ingest.tables import (
    IMAGES,
    OBJECT_OUTCOMES,
    OBJECTS,
    QUARANTINE,
    QUARANTINE_REASONS,
)
from cv_dataops.labels.tables import (
    AUDIT_STATUSES,
    AUDITED_LABELS,
    AUTO_LABEL_DECISIONS,
    LABEL_ISSUES,
    LABEL_SOURCES,
    LABELS,
)
from cv_dataops.quality.tables import QUALITY

TABLES: dict[str, TableDefinition] = {table.name: table for table in
                                      (IMAGES, QUARANTINE, OBJECTS, QUALITY, DUPLICATES, DUPLICATE_PAIRS,
                                       EMBEDDING_DUPLICATE_PAIRS, EMBEDDINGS, SCENARIOS, CURATED, LABELS,
                                       AUDITED_LABELS, AUTO_LABEL_DECISIONS, LABEL_ISSUES, DRIFT, DRIFT_SUMMARY,
                                       DRIFT_ATYPICALITY, DATA_HEALTH)}

# Tables stored one file per something other than a batch (the catalog treats them alike: one file per name).
LAYOUTS: dict[str, str] = {
    LABELS.name: "one Parquet file per appended version, never rewritten: `catalog/labels/<version>.parquet` "
                 "(the version zero-padded to 8 digits)",
}


def table_definition(name: str) -> TableDefinition:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no catalog table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None


def render_markdown() -> str:
    """The generated part of docs/data-model.md (a test keeps the file in step with the code)."""
    lines = []
    for table in TABLES.values():
        layout = LAYOUTS.get(table.name) or (
            "one Parquet file per batch: `catalog/{0}/<batch_id>.parquet`" if table.partitioned_by_batch
            else "one Parquet file: `catalog/{0}/all.parquet`").format(table.name)
        lines += [f"### `{table.name}`", "", table.description, "",
                  f"Written by `{table.written_by}`; {layout}.", "",
                  "| column | type | nullable | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.description} |" for c in table.columns]
        lines.append("")
    lines += ["### Quarantine reasons", "", "| reason | meaning |", "|---|---|"]
    lines += [f"| `{reason}` | {text} |" for reason, text in QUARANTINE_REASONS.items()]
    lines += ["", "### Object outcomes", "", "| outcome | meaning |", "|---|---|"]
    lines += [f"| `{outcome}` | {text} |" for outcome, text in OBJECT_OUTCOMES.items()]
    lines += ["", "### Label sources", "", "| source | meaning |", "|---|---|"]
    lines += [f"| `{source}` | {text} |" for source, text in LABEL_SOURCES.items()]
    lines += ["", "### Audit statuses", "", "| status | meaning |", "|---|---|"]
    lines += [f"| `{status}` | {text} |" for status, text in AUDIT_STATUSES.items()]
    lines += ["", "### Drift severities", "", "| severity | meaning |", "|---|---|"]
    lines += [f"| `{severity}` | {text} |" for severity, text in SEVERITIES.items()]
    return "\n".join(lines) + "\n"
