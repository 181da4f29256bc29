"""Auto-labels: the promoted label model's label for curated images without a human label, accepted above the
threshold that reaches the configured precision on verified labels (:mod:`cv_dataops.labels.acceptance`).

Accepted labels become ``auto`` events in the `labels` store (with the model version and confidence); the rest
go to review as uncertain auto-labels. The events of one model, threshold and set of accepted labels share one
source digest, so a repeated run appends nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone

from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.labels.acceptance import (
    AUTO,
    AcceptanceSettings,
    AcceptanceThreshold,
    acceptance_threshold,
    apply_threshold,
)
from cv_dataops.labels.registry import ModelRegistry
from cv_dataops.labels.sources import LabelEvent, content_digest
from cv_dataops.labels.training import VERIFIED, verified_labels

DECISION_COLUMNS = ["image_id", "label", "confidence", "decision", "reason", "model_version"]
HUMAN_STATUSES = ("human", "reviewed", "disputed")  # the image has a human or review label


@dataclass(frozen=True)
class AutoLabels:
    """``decisions``: one row per candidate image (``DECISION_COLUMNS``); ``events``: the accepted ones as label
    events; ``reason``: why nothing was labelled, when so."""

    model_version: str | None
    decisions: pd.DataFrame
    events: list[LabelEvent] = field(default_factory=list)
    threshold: AcceptanceThreshold | None = None
    reason: str = ""

    def metadata(self) -> dict:
        counts = self.decisions["decision"].value_counts().to_dict() if len(self.decisions) else {}
        return {"model_version": self.model_version or "", "candidates": len(self.decisions),
                "accepted": int(counts.get(AUTO, 0)), "to_review": int(counts.get("review", 0)),
                "reason": self.reason or (self.threshold.reason if self.threshold else ""),
                **({"acceptance": self.threshold.metadata()} if self.threshold else {})}


def candidates(curated_ids, audited: pd.DataFrame) -> list[str]:
    """Curated images without a human or review label (an auto-accepted one may be relabelled by a newer model)."""
    human = set(audited["image_id"][audited["status"].isin(HUMAN_STATUSES)])
    return sorted(set(curated_ids) - human)


def auto_label(registry: ModelRegistry, audited: pd.DataFrame, vectors: Vectors, candidate_ids,
               settings: AcceptanceSettings) -> AutoLabels:
    empty = pd.DataFrame({column: pd.Series(dtype=object) for column in DECISION_COLUMNS})
    promoted = registry.promoted()
    if promoted is None:
        return AutoLabels(None, empty, reason="no label model is promoted yet: nothing auto-labelled")
    version = promoted.version
    if promoted.metadata.get("embedder_version") != vectors.embedder_version:
        return AutoLabels(version, empty, reason=f"the promoted {version} reads embedder "
                                                 f"{promoted.metadata.get('embedder_version')}, the vectors are "
                                                 f"{vectors.embedder_version}: nothing auto-labelled until a model "
                                                 f"of this embedder is promoted")
    model = registry.load(version)
    known = set(vectors.image_ids)
    ids = [i for i in candidate_ids if i in known]
    verified = verified_labels(audited, vectors).sort_values("image_id")
    threshold = acceptance_threshold(clone(model), vectors.matrix[vectors.rows_of(verified["image_id"])],
                                     verified["label"].to_numpy(), settings) if len(verified) else None
    if not ids:
        return AutoLabels(version, empty, threshold=threshold, reason="no curated image without a human label")
    probabilities = model.predict_proba(vectors.matrix[vectors.rows_of(ids)])
    decisions = apply_threshold(probabilities, model.classes_, threshold, ids).assign(model_version=version)
    decisions["label"] = decisions["label"].astype(str)
    accepted = decisions[decisions["decision"] == AUTO]
    digest = content_digest(json.dumps([version, None if threshold is None else threshold.threshold,
                                        sorted(zip(accepted["image_id"], accepted["label"]))]).encode())
    cut = "none" if threshold is None or threshold.threshold is None else f"{threshold.threshold:.4f}"
    events = [LabelEvent(image_id=row.image_id, label=row.label, source="auto",
                         origin=f"auto_labels: model {version}, threshold {cut}", origin_file="auto_labels",
                         source_digest=digest, confidence=float(np.clip(row.confidence, 0.0, 1.0)),
                         model_version=version) for row in accepted.itertuples(index=False)]
    return AutoLabels(version, decisions[DECISION_COLUMNS], events, threshold)


__all__ = ["AutoLabels", "DECISION_COLUMNS", "VERIFIED", "auto_label", "candidates"]
