"""The curation pool: every image embedded by the current embedder, joined with what curation needs to judge it.

An image's label is its audited one (``audited_labels``: human beats review beats an accepted auto-label, a dispute
settled by the audit's rule), so a review that corrects a label corrects the curated set and its exports; the
landing label (``images.label``) stands where the labels loop has not audited the image (or has not run yet).
``drifted_batch`` says whether the image's batch drifted from its reference (``drift_summary``), which selection
favours under a budget.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cv_dataops.discovery.tables import SCENARIOS
from cv_dataops.drift.tables import DRIFT_SUMMARY
from cv_dataops.duplicates.tables import DUPLICATES
from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.labels.tables import AUDITED_LABELS
from cv_dataops.quality.gating import blocked_batches
from cv_dataops.quality.tables import QUALITY


def curation_pool(tables, max_unusable_rate: float, vectors: Vectors) -> tuple[pd.DataFrame, np.ndarray]:
    """Every image with a vector in ``vectors`` (one embedder version: images still waiting to be re-embedded are
    not in the pool) and what curation needs, batches blocked by their quality check left out; the frame (on a
    RangeIndex) and its rows' vectors."""
    images = tables.read(IMAGES, columns=["image_id", "uri", "label", "width", "height"]).to_pandas()
    quality = tables.read(QUALITY, columns=["image_id", "batch_id", "is_unusable"]).to_pandas()
    duplicates = tables.read(DUPLICATES, columns=["image_id", "group_id", "keep"]).to_pandas()
    scenes = tables.read(SCENARIOS, columns=["image_id", "scenario"]).to_pandas()
    audited = tables.read(AUDITED_LABELS, columns=["image_id", "label"]).to_pandas().set_index("image_id")["label"]
    images["label"] = images["image_id"].map(audited).fillna(images["label"])
    frame = (vectors.frame().merge(images, on="image_id").merge(quality.drop(columns="batch_id"), on="image_id",
                                                                 how="left")
             .merge(duplicates, on="image_id", how="left").merge(scenes, on="image_id", how="left"))
    drifted = tables.read(DRIFT_SUMMARY, columns=["batch_id", "drifted"]).to_pandas()
    frame["drifted_batch"] = frame["batch_id"].isin(set(drifted["batch_id"][drifted["drifted"].astype(bool)]))
    keep = ~frame.batch_id.isin(blocked_batches(quality, max_unusable_rate))
    frame = frame[keep].reset_index(drop=True)
    return frame, vectors.matrix[vectors.rows_of(frame.image_id)] if len(frame) else vectors.matrix[:0]
