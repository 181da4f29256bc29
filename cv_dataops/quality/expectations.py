"""great_expectations suites kept as JSON files in the repository, run on catalog tables, with Data Docs.

GX 1.x is called directly (dagster-ge does not install beside great_expectations 1.x): an ephemeral context, a
pandas data source, a whole-dataframe batch definition and a checkpoint whose action renders Data Docs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cv_dataops.core.storage import Storage

SUITES_DIR = Path(__file__).resolve().parent / "suites"
DATA_DOCS_PREFIX = "reports/data_docs"


@dataclass
class ValidationSummary:
    success: bool
    evaluated: int
    successful: int
    failures: list[dict] = field(default_factory=list)
    docs_index: str | None = None


def load_suite_spec(name: str) -> dict:
    """The suite's JSON file: {"name": ..., "expectations": [{"type": ..., "kwargs": {...}}, ...]}."""
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


def validate_frame(frame: pd.DataFrame, suite_name: str, batch_label: str, docs: Storage | None = None) -> ValidationSummary:
    """Validate ``frame`` against the named suite; render Data Docs into ``docs`` (under reports/data_docs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    spec = load_suite_spec(suite_name)
    with tempfile.TemporaryDirectory(prefix="cv-dataops-gx-") as site:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        context.add_data_docs_site(site_name="catalog", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": site},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        batch_definition = (context.data_sources.add_pandas("catalog").add_dataframe_asset(spec["name"])
                            .add_batch_definition_whole_dataframe(batch_label))
        suite = gx.ExpectationSuite(name=spec["name"])
        for expectation in spec["expectations"]:
            suite.add_expectation_configuration(ExpectationConfiguration(type=expectation["type"],
                                                                         kwargs=expectation["kwargs"]))
        suite = context.suites.add(suite)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{spec['name']}-{batch_label}", data=batch_definition, suite=suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs is not None else []
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=f"{spec['name']}-checkpoint",
                                                           validation_definitions=[validation], actions=actions,
                                                           result_format="SUMMARY"))
        result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
        failures = [{"expectation": r.expectation_config.type, "column": r.expectation_config.kwargs.get("column"),
                     "unexpected_count": (r.result or {}).get("unexpected_count"),
                     "exception": (r.exception_info or {}).get("exception_message")}
                    for r in result.results if not r.success]
        index = None
        if docs is not None:
            for path in Path(site).rglob("*"):
                if path.is_file():
                    docs.write_bytes(f"{DATA_DOCS_PREFIX}/{path.relative_to(site).as_posix()}", path.read_bytes())
            index = docs.uri_of(f"{DATA_DOCS_PREFIX}/index.html")
        statistics = result.statistics
        return ValidationSummary(bool(result.success), int(statistics["evaluated_expectations"]),
                                 int(statistics["successful_expectations"]), failures, index)
