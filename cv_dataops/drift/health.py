"""Data health over time: one row per batch of the rates a team watches (quarantine, quality issues, drift, label
errors, the model's estimated accuracy) and a small-multiples trend plot of them, for the ``data_health`` asset.

A single number says little; a series shows when a camera, a supplier or a labelling team changed. Batch ids sort
in landing order (a sequence number comes first), so position 1 is the first batch. A rate with nothing to count
(no measured image, no audited label in the batch, no drift report) is null and leaves a gap in the plot, never a
zero that would read as "all well".
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cv_dataops.drift.statistics import PROPERTY_BY_COLUMN
from cv_dataops.drift.tables import DATA_HEALTH
from cv_dataops.quality.issues import issue_types


def _share(flags: pd.Series) -> float | None:
    return float(flags.astype(bool).mean()) if len(flags) else None


def health_rows(images: pd.DataFrame, quarantine: pd.DataFrame, quality: pd.DataFrame, drift: pd.DataFrame,
                drift_summary: pd.DataFrame, label_issues: pd.DataFrame, audited: pd.DataFrame) -> pd.DataFrame:
    """The ``data_health`` rows. Inputs are the tables' frames: ``images`` (image_id, batch_id), ``quarantine``
    (batch_id), ``quality`` (batch_id and the flags), ``drift`` and ``drift_summary`` (per batch), ``label_issues``
    (image_id, is_issue) and ``audited`` (image_id: the images with an audited label)."""
    batches = sorted(set(images["batch_id"]) | set(quarantine["batch_id"]) | set(quality["batch_id"]))
    image_batch = dict(zip(images["image_id"], images["batch_id"]))
    issues = label_issues.assign(batch_id=label_issues["image_id"].map(image_batch))
    labelled = set(audited["image_id"]) if len(audited) else set()
    summary = drift_summary.drop_duplicates("batch_id", keep="last").set_index("batch_id")
    names = [issue.name for issue in issue_types()]
    # one pass per table, not one scan of every table per batch
    counts = images["batch_id"].value_counts()
    refusals = quarantine["batch_id"].value_counts()
    quality_by_batch = dict(tuple(quality.groupby("batch_id")))
    drift_by_batch = dict(tuple(drift.groupby("batch_id")))
    issues_by_batch = dict(tuple(issues[issues["image_id"].isin(labelled)].groupby("batch_id")))
    empty_quality, empty_drift, empty_issues = quality.iloc[:0], drift.iloc[:0], issues.iloc[:0]
    rows = []
    for position, batch in enumerate(batches, start=1):
        brought, refused = int(counts.get(batch, 0)), int(refusals.get(batch, 0))
        measured = quality_by_batch.get(batch, empty_quality)
        flags = [f"is_{name}" for name in names if f"is_{name}" in measured]
        tests = drift_by_batch.get(batch, empty_drift)
        classifier = tests.loc[tests["test"] == "domain_classifier", "effect_size"].dropna()
        properties = tests[(tests["test"] == "ks") & tests["feature"].isin(list(PROPERTY_BY_COLUMN))]
        properties = properties.dropna(subset=["effect_size"])
        largest = properties.loc[properties["effect_size"].idxmax()] if len(properties) else None
        mine = issues_by_batch.get(batch, empty_issues)
        row = {"batch_id": batch, "position": position, "images": brought, "quarantined": refused,
               "quarantine_rate": refused / (brought + refused) if brought + refused else None,
               "measured": len(measured),
               "unusable_rate": _share(measured["is_unusable"]) if "is_unusable" in measured else None,
               "flagged_rate": _share(measured[flags].any(axis=1)) if flags and len(measured) else None,
               **{f"{name}_rate": _share(measured[f"is_{name}"]) if f"is_{name}" in measured else None
                  for name in names},
               "drift_severity": summary.at[batch, "severity"] if batch in summary.index else None,
               "drift_classifier_auc": float(classifier.iloc[0]) if len(classifier) else None,
               "largest_property_shift": float(largest["effect_size"]) if largest is not None else None,
               "largest_property": str(largest["feature"]) if largest is not None else None,
               "label_error_rate": _share(mine["is_issue"]) if len(mine) else None,
               "estimated_accuracy": _value(summary, batch, "estimated_accuracy")}
        rows.append(row)
    return pd.DataFrame(rows, columns=DATA_HEALTH.column_names)


def _value(frame: pd.DataFrame, index: str, column: str) -> float | None:
    if index not in frame.index or column not in frame.columns:
        return None
    value = frame.at[index, column]
    return None if value is None or pd.isna(value) else float(value)


# What the plot shows, one panel each: its series as (column, words), on a 0..1 axis
PANELS = (
    ((("quarantine_rate", "quarantine rate"),)),
    (("unusable_rate", "unusable"), ("flagged_rate", "any quality issue")),
    (("drift_classifier_auc", "drift: domain-classifier AUC"), ("largest_property_shift", "largest property KS D")),
    ((("label_error_rate", "label-error rate"),)),
    ((("estimated_accuracy", "estimated model accuracy"),)),
)
COLOURS = ((31, 119, 180), (214, 39, 40))
SEVERITY_COLOURS = {"small": (255, 200, 80), "large": (240, 110, 110)}


def trend_png(rows: pd.DataFrame, width: int = 640, panel_height: int = 110) -> bytes:
    """Small multiples, batch position on x: one panel per :data:`PANELS` entry, its series as lines with a dot
    per batch (gaps where a value is null), titled in the series' colours; batches whose drift was small (amber)
    or large (red) shaded."""
    margin_left, margin_right, top, gap = 44, 12, 18, 16
    height = len(PANELS) * (panel_height + gap) + 24
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    n = len(rows)
    span = width - margin_left - margin_right

    def x_of(position: int) -> float:
        return margin_left + (span / 2 if n <= 1 else (position - 1) / (n - 1) * span)

    low, high = 0.0, 1.0
    for panel, series in enumerate(PANELS):
        y0 = panel * (panel_height + gap) + top
        y1 = y0 + panel_height - top
        half = span / max(n - 1, 1) / 2
        for position, severity in zip(rows["position"], rows["drift_severity"], strict=True):
            if severity in SEVERITY_COLOURS:
                draw.rectangle((max(margin_left, x_of(position) - half), y0,
                                min(width - margin_right, x_of(position) + half), y1),
                               fill=tuple(int(c * 0.35 + 255 * 0.65) for c in SEVERITY_COLOURS[severity]))
        draw.rectangle((margin_left, y0, width - margin_right, y1), outline=(160, 160, 160))
        for value in (low, high):
            y = y1 - (value - low) / (high - low) * (y1 - y0)
            draw.text((4, y - 6), f"{value:.1f}", fill=(90, 90, 90))
        title_x = margin_left
        for colour, (column, words) in zip(COLOURS, series, strict=False):
            draw.text((title_x, y0 - 14), words, fill=colour)
            title_x += 7 * len(words) + 16
            values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float) if column in rows else np.array([])
            points = [(x_of(p), y1 - (min(max(v, low), high) - low) / (high - low) * (y1 - y0)) if np.isfinite(v)
                      else None for p, v in zip(rows["position"], values, strict=True)]
            for a, b in zip(points, points[1:], strict=False):
                if a is not None and b is not None:
                    draw.line((a, b), fill=colour, width=2)
            for point in points:
                if point is not None:
                    draw.ellipse((point[0] - 2.5, point[1] - 2.5, point[0] + 2.5, point[1] + 2.5), fill=colour)
    if n:
        draw.text((margin_left, height - 18), f"batch 1: {rows['batch_id'].iloc[0]}", fill=(90, 90, 90))
        last = f"batch {n}: {rows['batch_id'].iloc[-1]}"
        draw.text((width - margin_right - 7 * len(last), height - 18), last, fill=(90, 90, 90))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
