"""One self-contained HTML page per validated batch, and an index of them, under the data root.

Each page names its batch, suite and table, when it was validated and how many expectations passed, then lists
every expectation with its result and what was observed. Pages use inline CSS only: no scripts, fonts, images or
stylesheets from anywhere (a Content-Security-Policy forbids them), so they open offline, from a laptop folder or
a copy of an S3 prefix, in any browser.

Layout under the data root (written through :class:`~cv_dataops.core.storage.Storage`, so atomically, locally and
on S3)::

    reports/validation/index.html             every batch's result, newest first, linking to its page
    reports/validation/index.json             the summaries the index was made from (a cache of the sidecars)
    reports/validation/<suite>/<batch>.html   one batch's page
    reports/validation/<suite>/<batch>.json   its summary (the sidecar)

A batch costs four small writes and one listing, however many batches the index lists: its page, its sidecar,
and the index rebuilt from the cached summaries plus any sidecar the cache lacks (a batch validated concurrently,
or after a lost update), so the index heals itself on the next batch.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from urllib.parse import quote

import pandas as pd

from cv_dataops.core.storage import Storage
from cv_dataops.quality.expectations import ValidationSummary, validate_frame

REPORTS_PREFIX = "reports/validation"
INDEX_PAGE = f"{REPORTS_PREFIX}/index.html"
INDEX_CACHE = f"{REPORTS_PREFIX}/index.json"
_SUMMARY_FIELDS = ("suite", "table", "batch_id", "success", "evaluated", "successful", "rows", "validated_at")


@dataclass(frozen=True)
class ReportLocation:
    report_uri: str
    index_uri: str


def validate_and_report(frame: pd.DataFrame, suite_name: str, batch_id: str, storage: Storage) -> ValidationSummary:
    """Validate one batch's rows against the suite, write its page and refresh the index; the summary carries
    both URIs."""
    summary = validate_frame(frame, suite_name, batch_id)
    location = write_report(storage, summary)
    summary.report_uri, summary.index_uri = location.report_uri, location.index_uri
    return summary


def report_key(suite: str, batch_id: str, extension: str = "html") -> str:
    """Where a batch's page lives (names are percent-escaped so any batch id makes one safe key)."""
    return f"{REPORTS_PREFIX}/{quote(suite, safe='-_.')}/{quote(batch_id, safe='-_.')}.{extension}"


def write_report(storage: Storage, summary: ValidationSummary) -> ReportLocation:
    """Write the batch's page and sidecar, then the index (page before sidecar: a listed sidecar has its page)."""
    page = report_key(summary.suite, summary.batch_id)
    storage.write_text(page, render_report(summary))
    entry = {name: getattr(summary, name) for name in _SUMMARY_FIELDS}
    entry["page"] = page[len(REPORTS_PREFIX) + 1:]
    storage.write_text(report_key(summary.suite, summary.batch_id, "json"), json.dumps(entry, sort_keys=True))
    update_index(storage, entry)
    return ReportLocation(storage.uri_of(page), storage.uri_of(INDEX_PAGE))


def update_index(storage: Storage, entry: dict | None = None) -> list[dict]:
    """Rebuild the index page from the cached summaries, ``entry`` and the sidecars the cache lacks; drop entries
    whose page is gone. Returns the entries, newest batch first."""
    try:
        cached = {e["page"]: e for e in json.loads(storage.read_text(INDEX_CACHE))}
    except FileNotFoundError:
        cached = {}
    except (ValueError, KeyError, TypeError):
        cached = {}  # a damaged cache is rebuilt from the sidecars
    if entry is not None:
        cached[entry["page"]] = entry
    entries = {}
    for info in storage.list(f"{REPORTS_PREFIX}/"):
        relative = info.key[len(REPORTS_PREFIX) + 1:]
        if info.unsafe_reason or "/" not in relative or not relative.endswith(".json"):
            continue  # the index files themselves, or something that is no sidecar
        page = relative[:-len(".json")] + ".html"
        if page in cached:
            entries[page] = cached[page]
            continue
        try:
            entries[page] = {**json.loads(storage.read_text(info.key)), "page": page}
        except (FileNotFoundError, ValueError):
            continue  # removed meanwhile, or not one of ours
    ordered = sorted(entries.values(), key=lambda e: (str(e.get("batch_id")), str(e.get("suite"))), reverse=True)
    storage.write_text(INDEX_CACHE, json.dumps(ordered, sort_keys=True))
    storage.write_text(INDEX_PAGE, render_index(ordered))
    return ordered


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.facts{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:12px 0}
.facts dt{color:#59636e} .facts dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600}
.pass .verdict,.verdict.pass{background:#dafbe1;color:#116329}
.fail .verdict,.verdict.fail{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #d1d9e0;padding:5px 8px;text-align:left;
vertical-align:top} th{background:#f6f8fa;font-weight:600}
tr.failed td{background:#fff5f5} td.status{font-weight:600;white-space:nowrap}
tr.passed td.status{color:#116329} tr.failed td.status{color:#a40e26}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.sample{color:#59636e} a{color:#0550ae}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _text(value: object) -> str:
    return html.escape(str(value))


def _arguments(arguments: dict) -> str:
    if not arguments:
        return ""
    parts = []
    for name, value in sorted(arguments.items()):
        if isinstance(value, list) and len(value) > 5:  # a column set: folded, open with a click (no script)
            parts.append(f"<details><summary>{_text(name)}: {len(value)} values</summary>"
                         f"{_text(', '.join(map(str, value)))}</details>")
        else:
            parts.append(f"{_text(name)}={_text(json.dumps(value))}")
    return ", ".join(parts)


def render_report(summary: ValidationSummary) -> str:
    """The batch's page: what was validated, the verdict, then every expectation (failures listed first too)."""
    verdict = "pass" if summary.success else "fail"
    failed = summary.evaluated - summary.successful
    facts = [("batch", summary.batch_id), ("suite", summary.suite), ("table", summary.table),
             ("rows", summary.rows), ("validated at", summary.validated_at),
             ("expectations", f"{summary.successful} passed, {failed} failed of {summary.evaluated}"),
             ("great_expectations", summary.gx_version)]
    rows = []
    for number, outcome in enumerate(summary.outcomes, 1):
        state = "passed" if outcome.success else "failed"
        sample = ""
        if outcome.unexpected_sample and not outcome.success:
            sample = ("<div class=\"sample\">unexpected values, first " f"{len(outcome.unexpected_sample)}: "
                      f"<span class=\"mono\">{_text(json.dumps(outcome.unexpected_sample))}</span></div>")
        rows.append(f"<tr class=\"expectation {state}\" id=\"e{number}\"><td>{number}</td>"
                    f"<td class=\"status\">{'pass' if outcome.success else 'FAIL'}</td>"
                    f"<td><code>{_text(outcome.type)}</code></td><td><code>{_text(outcome.column or '')}</code></td>"
                    f"<td class=\"mono\">{_arguments(outcome.arguments)}</td>"
                    f"<td>{_text(outcome.observed)}{sample}</td></tr>")
    failures = [f"<li><a href=\"#e{n}\">{_text(o.type)} <code>{_text(o.column or '')}</code></a>: "
                f"{_text(o.observed)}</li>" for n, o in enumerate(summary.outcomes, 1) if not o.success]
    body = (f"<header class=\"{verdict}\"><h1>Validation of batch <span class=\"mono batch\">"
            f"{_text(summary.batch_id)}</span></h1>"
            f"<span class=\"verdict\">{'PASSED' if summary.success else 'FAILED'}</span> "
            f"suite <code>{_text(summary.suite)}</code> on table <code>{_text(summary.table)}</code></header>"
            "<dl class=\"facts\">" + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts) + "</dl>"
            + (f"<h2>Failed ({failed})</h2><ul class=\"failures\">{''.join(failures)}</ul>" if failures else "")
            + "<h2>Every expectation</h2><table><thead><tr><th>#</th><th>result</th><th>expectation</th>"
            "<th>column</th><th>arguments</th><th>observed</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table><p><a href=\"../index.html\">All validated batches</a></p>")
    return _page(f"{summary.suite} validation of batch {summary.batch_id}: "
                 f"{'passed' if summary.success else 'FAILED'}", body)


def render_index(entries: list[dict]) -> str:
    """Every validated batch, newest first, with its verdict and counts, linking to its page."""
    rows = []
    for entry in entries:
        verdict = "pass" if entry.get("success") else "fail"
        evaluated, successful = entry.get("evaluated", 0), entry.get("successful", 0)
        rows.append(f"<tr class=\"batch {verdict}\"><td><a class=\"mono\" href=\"{html.escape(quote(entry['page']))}\">"
                    f"{_text(entry.get('batch_id'))}</a></td><td><code>{_text(entry.get('suite'))}</code></td>"
                    f"<td><span class=\"verdict {verdict}\">{'passed' if verdict == 'pass' else 'FAILED'}</span></td>"
                    f"<td>{successful} of {evaluated}</td><td>{_text(entry.get('rows'))}</td>"
                    f"<td class=\"mono\">{_text(entry.get('validated_at'))}</td></tr>")
    failed = sum(1 for e in entries if not e.get("success"))
    body = ("<h1>Validated batches</h1>"
            f"<p>{len(entries)} batch validation(s), {failed} failed. Each page lists every expectation of its "
            "suite with what was observed.</p>"
            "<table><thead><tr><th>batch</th><th>suite</th><th>result</th><th>expectations passed</th><th>rows</th>"
            "<th>validated at</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return _page("Validated batches", body)
