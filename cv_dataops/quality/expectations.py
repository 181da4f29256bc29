"""great_expectations suites run on catalog tables: the schema gives the columns, the suite file the rules.

A suite file (``suites/<name>.json``) names its catalog table and holds only what the schema cannot say: value
ranges of plain measurements, uniqueness, lengths. Every column of the table (an exact set), non-null wherever the
schema says so, and 0..1 for each registered issue type's score are derived from ``core.schema`` and
``quality.issues`` each time, so a new column or issue type is validated without editing JSON.

GX 1.x is called directly (dagster-ge does not install beside great_expectations 1.x): one ephemeral context per
process, a pandas data source, a whole-dataframe batch definition per suite and ``batch.validate(suite)``. No Data
Docs: :mod:`cv_dataops.quality.validation_report` renders the result as one self-contained page per batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cv_dataops.core.schema import TableDefinition

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SAMPLE_SIZE = 10  # unexpected values shown per expectation


@dataclass
class ExpectationOutcome:
    """One expectation's result, in plain values (what the report and the check's metadata show)."""

    type: str
    column: str | None
    arguments: dict[str, Any]
    success: bool
    observed: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    unexpected_sample: list[Any] = field(default_factory=list)
    exception: str | None = None


@dataclass
class ValidationSummary:
    suite: str
    table: str
    batch_id: str
    success: bool
    evaluated: int
    successful: int
    rows: int
    validated_at: str
    gx_version: str
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    report_uri: str | None = None
    index_uri: str | None = None

    @property
    def failures(self) -> list[dict]:
        """The failed expectations, short (the check's metadata)."""
        return [{"expectation": o.type, "column": o.column, "unexpected_count": o.unexpected_count,
                 "observed": o.observed, "exception": o.exception} for o in self.outcomes if not o.success]

    def to_json(self) -> dict:
        return asdict(self)


def load_suite_spec(name: str) -> dict:
    """The suite's JSON file: {"name", "table", "ranges": {column: [min, max]}, "expectations": [...]}."""
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


def suite_table(spec: dict) -> TableDefinition:
    # the gatherer of every domain's tables, imported late (it imports every domain)
    from cv_dataops.tables import table_definition

    return table_definition(spec["table"])


def suite_expectations(name: str) -> list[dict]:
    """Every expectation of the named suite as {"type", "kwargs"}: first those derived from the table's schema and
    the issue registry, then the file's ranges and rules. A column the file names that the schema lacks is an
    error here, not an expectation that silently never matches."""
    from cv_dataops.quality.issues import issue_names

    spec = load_suite_spec(name)
    table = suite_table(spec)
    columns = table.column_names
    expectations = [{"type": "expect_table_columns_to_match_set",
                     "kwargs": {"column_set": columns, "exact_match": True}}]
    expectations += [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c.name}}
                     for c in table.columns if not c.nullable]
    ranges = {f"{issue}_score": [0.0, 1.0] for issue in issue_names() if f"{issue}_score" in columns}
    ranges.update(spec.get("ranges", {}))
    for column, (low, high) in ranges.items():
        kwargs = {"column": column, "min_value": low, "max_value": high}
        expectations.append({"type": "expect_column_values_to_be_between",
                             "kwargs": {k: v for k, v in kwargs.items() if v is not None}})
    expectations += spec.get("expectations", [])
    unknown = sorted({e["kwargs"]["column"] for e in expectations if e["kwargs"].get("column") not in (None, *columns)})
    if unknown:
        raise ValueError(f"suite {name!r} names column(s) {unknown} that table {table.name!r} does not have")
    return expectations


class _Validator:
    """The process's one ephemeral GX context, with a batch definition and a built suite kept per suite name:
    creating them per batch cost more than validating 2,000 rows."""

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx

        # GX sets some of its modules' loggers to INFO itself ("Created temporary directory ... for ephemeral docs
        # site"): quiet every one of them, not only the package's, or a user's stderr gets them each batch
        for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "great_expectations"]:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        for site in list(self.context.list_data_docs_sites()):  # the default one: nothing is to build Data Docs
            self.context.delete_data_docs_site(site)
        self.source = self.context.data_sources.add_pandas("catalog")
        self.batch_definitions: dict[str, Any] = {}
        self.suites: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()

    def suite(self, name: str, expectations: list[dict]) -> Any:
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )

        key = (name, json.dumps(expectations, sort_keys=True, default=str))
        if key not in self.suites:
            suite = self.gx.ExpectationSuite(name=name)
            for expectation in expectations:
                suite.add_expectation_configuration(ExpectationConfiguration(type=expectation["type"],
                                                                             kwargs=expectation["kwargs"]))
            self.suites[key] = suite
        return self.suites[key]

    def validate(self, frame: pd.DataFrame, name: str, expectations: list[dict]) -> Any:
        with self.lock:
            if name not in self.batch_definitions:
                self.batch_definitions[name] = (self.source.add_dataframe_asset(name)
                                                .add_batch_definition_whole_dataframe(name))
            batch = self.batch_definitions[name].get_batch(batch_parameters={"dataframe": frame})
            # BASIC: counts and a sample of unexpected values; SUMMARY's tallies cost half as much again
            return batch.validate(self.suite(name, expectations), result_format="BASIC")


_VALIDATOR: _Validator | None = None
_VALIDATOR_LOCK = threading.Lock()


def _validator() -> _Validator:
    global _VALIDATOR
    with _VALIDATOR_LOCK:
        if _VALIDATOR is None:
            _VALIDATOR = _Validator()
        return _VALIDATOR


def prepare_in_background() -> threading.Thread:
    """Import GX and build the process's context in a daemon thread, so the first validation does not wait for
    it (about 2.5 s, as long as measuring 1,000 photos): a caller that will validate soon starts it while other
    work (decoding images, which releases the GIL) runs. A failure here is left for that validation to raise."""

    def prepare() -> None:
        try:
            _validator()
        except Exception:  # noqa: BLE001 - validate_frame raises it again, where it is reported
            pass

    thread = threading.Thread(target=prepare, name="gx-prepare", daemon=True)
    thread.start()
    return thread


def validate_frame(frame: pd.DataFrame, suite_name: str, batch_id: str) -> ValidationSummary:
    """Validate ``frame`` (one batch's rows of the suite's table) against the named suite."""
    expectations = suite_expectations(suite_name)
    validator = _validator()
    validated_at = datetime.now(UTC).isoformat(timespec="seconds")
    result = validator.validate(frame, suite_name, expectations)
    outcomes = [_outcome(r, frame) for r in result.results]
    statistics = result.statistics
    return ValidationSummary(suite=suite_name, table=load_suite_spec(suite_name)["table"], batch_id=batch_id,
                             success=bool(result.success), evaluated=int(statistics["evaluated_expectations"]),
                             successful=int(statistics["successful_expectations"]), rows=len(frame),
                             validated_at=validated_at, gx_version=validator.gx.__version__, outcomes=outcomes)


def _outcome(result: Any, frame: pd.DataFrame) -> ExpectationOutcome:
    """A GX ExpectationValidationResult as plain values, with what was observed in words."""
    config = result.expectation_config
    arguments = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    column = config.kwargs.get("column")
    details = result.result or {}
    exception = (result.exception_info or {}).get("exception_message") if (result.exception_info or {}).get(
        "raised_exception") else None
    unexpected = details.get("unexpected_count")
    sample = [_plain(v) for v in (details.get("partial_unexpected_list") or [])[:SAMPLE_SIZE]]
    if exception:
        observed = f"error: {exception}"
    elif "observed_value" in details:
        observed = _observed_value(config.type, details)
    elif unexpected is not None:
        count = details.get("element_count", len(frame))
        observed = f"{unexpected} of {count} unexpected ({float(details.get('unexpected_percent') or 0.0):.2f}%)"
        if config.type == "expect_column_values_to_be_between" and column in frame and count:
            values = pd.to_numeric(frame[column], errors="coerce")
            if values.notna().any():
                observed += f"; observed {_number(_plain(values.min()))} to {_number(_plain(values.max()))}"
    else:
        observed = ""
    return ExpectationOutcome(type=config.type, column=column, arguments=_plain(arguments),
                              success=bool(result.success), observed=observed, unexpected_count=unexpected,
                              unexpected_percent=details.get("unexpected_percent"), unexpected_sample=sample,
                              exception=exception)


def _observed_value(kind: str, details: dict) -> str:
    value = details["observed_value"]
    if kind == "expect_table_columns_to_match_set":
        mismatched = (details.get("details") or {}).get("mismatched") or {}
        text = f"{len(value)} columns"
        if mismatched.get("unexpected"):
            text += f"; not in the schema: {', '.join(map(str, mismatched['unexpected']))}"
        if mismatched.get("missing"):
            text += f"; missing: {', '.join(map(str, mismatched['missing']))}"
        return text
    return str(_plain(value))


def _number(value: Any) -> str:
    return f"{value + 0.0:.6g}" if isinstance(value, float) else str(value)  # + 0.0: no "-0"


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, NaN to None, containers recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
