"""The drift report of a batch: one self-contained HTML page that renders offline (inline CSS, inline SVG
histograms, thumbnails as data: URIs; a Content-Security-Policy forbids anything fetched), written under the data
root at ``reports/drift/<batch>.html``."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from urllib.parse import quote

import numpy as np

from cv_dataops.core.storage import Storage
from cv_dataops.drift.detect import DriftResult
from cv_dataops.drift.explain import most_atypical
from cv_dataops.drift.statistics import PROPERTY_BY_COLUMN, DriftTest
from cv_dataops.quality.validation_report import _CSS, _text

REPORTS_PREFIX = "reports/drift"
PLOTTED_PROPERTIES = 6

_DRIFT_CSS = """
.verdict.none{background:#dafbe1;color:#116329} .verdict.small{background:#fff8c5;color:#7d4e00}
.verdict.large{background:#ffebe9;color:#a40e26}
.plots{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0} figcaption{font-size:12.5px;color:#59636e}
.thumbs{display:flex;flex-wrap:wrap;gap:10px} .thumbs figure{width:112px} .thumbs img{width:112px;height:112px;
object-fit:contain;background:#f6f8fa;border:1px solid #d1d9e0} tr.drifted td{background:#fff5f5}
.legend{font-size:12.5px} .ref{color:#0550ae} .bat{color:#bc4c00}
"""


def report_key(batch_id: str) -> str:
    return f"{REPORTS_PREFIX}/{quote(batch_id, safe='-_.')}.html"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}{_DRIFT_CSS}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def histogram_svg(reference: np.ndarray, batch: np.ndarray, *, width: int = 300, height: int = 150,
                  bins: int = 24) -> str:
    """Reference (blue) and batch (orange) densities as two step lines on shared bins between the pooled 1st and
    99th percentiles (values outside are counted in the end bins)."""
    r, b = np.asarray(reference, float), np.asarray(batch, float)
    r, b = r[np.isfinite(r)], b[np.isfinite(b)]
    pooled = np.concatenate([r, b])
    if not len(pooled) or not len(r) or not len(b):
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>"
    low, high = np.percentile(pooled, [1, 99])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    shares = [np.histogram(np.clip(x, low, high), edges)[0] / len(x) for x in (r, b)]
    top = max(float(max(s.max() for s in shares)), 1e-9)
    pad, plot_w, plot_h = 4, width - 8, height - 22

    def path(share: np.ndarray) -> str:
        points = []
        for i, value in enumerate(share):
            x0, x1 = pad + plot_w * i / bins, pad + plot_w * (i + 1) / bins
            y = pad + plot_h * (1 - value / top)
            points += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        return " ".join(points)

    axis = pad + plot_h
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\">"
            f"<line x1=\"{pad}\" y1=\"{axis}\" x2=\"{pad + plot_w}\" y2=\"{axis}\" stroke=\"#d1d9e0\"/>"
            f"<polyline fill=\"none\" stroke=\"#0550ae\" stroke-width=\"1.6\" points=\"{path(shares[0])}\"/>"
            f"<polyline fill=\"none\" stroke=\"#bc4c00\" stroke-width=\"1.6\" points=\"{path(shares[1])}\"/>"
            f"<text x=\"{pad}\" y=\"{height - 4}\" font-size=\"10\" fill=\"#59636e\">{low:.3g}</text>"
            f"<text x=\"{pad + plot_w}\" y=\"{height - 4}\" font-size=\"10\" fill=\"#59636e\" "
            f"text-anchor=\"end\">{high:.3g}</text></svg>")


def _image_type(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return ""


def _number(value: float | None, digits: str = ".3g") -> str:
    return "" if value is None or not np.isfinite(value) else format(value, digits)


def _tests_table(tests: list[DriftTest]) -> str:
    rows = []
    for t in tests:
        rows.append(f"<tr class=\"{'drifted' if t.drifted else 'held'}\"><td>{_text(t.family)}</td>"
                    f"<td><code>{_text(t.test)}</code></td><td><code>{_text(t.feature)}</code></td>"
                    f"<td>{_number(t.statistic)}</td><td>{_number(t.p_value)}</td>"
                    f"<td>{_number(t.adjusted_p_value)}</td><td>{_number(t.effect_size)} "
                    f"<span class=\"sample\">{_text(t.effect_measure)}</span></td>"
                    f"<td>{'DRIFTED' if t.drifted else ''}</td><td>{t.n_reference} / {t.n_batch}</td>"
                    f"<td>{t.missing_reference} / {t.missing_batch}</td><td>{_text(t.note)}</td></tr>")
    return ("<table><thead><tr><th>family</th><th>test</th><th>feature</th><th>statistic</th><th>p</th>"
            "<th>adjusted p</th><th>effect</th><th>drifted</th><th>values ref / batch</th><th>missing ref / batch</th>"
            "<th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def render_report(result: DriftResult, thumbnails: Mapping[str, bytes] | None = None, *,
                  atypical_count: int = 12) -> str:
    """The page: verdict, causes in words, the reference-vs-batch histograms of the properties that moved most,
    the most atypical images (thumbnails when their bytes are given), and every test."""
    severity = result.severity
    facts = [("batch", result.batch_id), ("reference", result.reference_id or "none"),
             ("alpha (batch-wide)", result.alpha), ("tests run", sum(t.ran for t in result.tests)),
             ("tests drifted", sum(t.drifted for t in result.tests))]
    if result.accuracy is not None:
        facts.append(("estimated model accuracy", f"{result.accuracy.reference_accuracy:.3f} (reference, out of "
                                                  f"sample) → {result.accuracy.batch_accuracy:.3f} (batch, ATC)"))
    if result.note:
        facts.append(("note", result.note))
    verdict = {"none": "no drift", "small": "DRIFT (small: WARN)", "large": "DRIFT (large: ERROR)"}[severity]
    body = [f"<header><h1>Drift of batch <span class=\"mono\">{_text(result.batch_id)}</span></h1>"
            f"<span class=\"verdict {severity}\">{_text(verdict)}</span></header>",
            "<dl class=\"facts\">" + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts) + "</dl>"]
    if result.causes:
        body.append("<h2>Causes, most important first</h2><ol class=\"causes\">"
                    + "".join(f"<li>{_text(c.text)}</li>" for c in result.causes) + "</ol>")
    elif result.reference_id is None:
        body.append(f"<p>No reference: {_text(result.note)}. Nothing is flagged.</p>")
    numeric = sorted((t for t in result.tests if t.test == "ks" and "reference_values" in t.details),
                     key=lambda t: (-(t.effect_size or 0.0), t.feature))[:PLOTTED_PROPERTIES]
    if numeric:
        figures = []
        for t in numeric:
            words = PROPERTY_BY_COLUMN[t.feature].words if t.feature in PROPERTY_BY_COLUMN else t.feature
            figures.append(f"<figure>{histogram_svg(t.details['reference_values'], t.details['batch_values'])}"
                           f"<figcaption>{_text(words)}: KS D = {_number(t.effect_size, '.2f')}"
                           f"{' (drifted)' if t.drifted else ''}</figcaption></figure>")
        body.append("<h2>Reference against batch</h2><p class=\"legend\"><span class=\"ref\">━ reference</span> "
                    "<span class=\"bat\">━ batch</span> (share of images per bin)</p>"
                    f"<div class=\"plots\">{''.join(figures)}</div>")
    atypical = most_atypical(result.atypicality, atypical_count)
    if len(atypical):
        cells = []
        for row in atypical.itertuples():
            data = (thumbnails or {}).get(row.image_id)
            kind = _image_type(data) if data else ""
            picture = (f"<img alt=\"\" src=\"data:{kind};base64,{base64.b64encode(data).decode()}\">" if kind else
                       "<div class=\"sample\">no thumbnail</div>")
            cells.append(f"<figure>{picture}<figcaption>#{row.rank} <span class=\"mono\">"
                         f"{_text(str(row.image_id)[:12])}</span><br>atypicality {row.atypicality:.2f}"
                         "</figcaption></figure>")
        body.append(f"<h2>Most atypical images</h2><div class=\"thumbs\">{''.join(cells)}</div>")
    if result.tests:
        body.append("<h2>Every test</h2>" + _tests_table(result.tests))
    return _page(f"Drift of batch {result.batch_id}: {verdict}", "\n".join(body))


def write_report(storage: Storage, result: DriftResult, thumbnails: Mapping[str, bytes] | None = None) -> str:
    """Write the page (atomically, locally or on S3) and return its URI for ``drift_summary.report_uri``."""
    key = report_key(result.batch_id)
    storage.write_text(key, render_report(result, thumbnails))
    return storage.uri_of(key)
