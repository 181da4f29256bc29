"""Training the label model on verified labels, a frozen holdout, and promotion: what the ``label_model`` asset does.

Verified labels are the audited ``human`` and ``reviewed`` ones (a ``disputed`` label is not verified until someone
settles it). The holdout is *frozen*: the first time at least ``min_holdout`` human labels fall in the hashed share
(:func:`cv_dataops.labels.promotion.in_holdout`), their image ids are stored beside the models (``holdout.json``)
and never change again; until then that hashed share is kept out of training too, so no model ever trains on an
image that later joins the holdout. The holdout's labels are read from the current audit (a review that corrects a
holdout label corrects the yardstick; a disputed one leaves it), and both models answer the same items, so the
paired test stays fair.

A training set identical to the last version's (same embedder version, same images and labels, same model
parameters) trains nothing: the last version is reported again, so a repeated run adds no model version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.labels.model import LabelModel, cross_validated_report
from cv_dataops.labels.promotion import (
    PromotionDecision,
    PromotionSettings,
    decide_promotion,
    in_holdout,
)
from cv_dataops.labels.registry import ModelRegistry, RegistryError

VERIFIED = ("human", "reviewed")
HOLDOUT = "holdout.json"
MIN_TRAINING = 4  # labelled images below which no model is trained (cross-validation needs two per fold)


@dataclass(frozen=True)
class TrainingOutcome:
    """What one ``label_model`` run did. ``version``: the model this run stands for (new, or the unchanged last
    one; None when nothing could be trained); ``decision``: its promotion decision; ``promoted``: the version in
    force afterwards; ``error``: a one-line problem with the registry (the promoted model cannot be loaded)."""

    version: str | None
    trained: bool
    reason: str
    decision: dict | None = None
    promoted: str | None = None
    metadata: dict = field(default_factory=dict)
    holdout_items: int = 0
    error: str | None = None


def verified_labels(audited: pd.DataFrame, vectors: Vectors) -> pd.DataFrame:
    """``image_id, label, status`` of the verified labels whose image has a vector of ``vectors``' version."""
    verified = audited[audited["status"].isin(VERIFIED)]
    return verified[verified["image_id"].isin(set(vectors.image_ids))][["image_id", "label", "status"]]


def frozen_holdout(registry: ModelRegistry, audited: pd.DataFrame, fraction: float, min_holdout: int,
                   labels_version: int) -> list[str] | None:
    """The frozen holdout's image ids, freezing it now if enough human labels fall in the hashed share; None
    while they are too few."""
    storage = registry.storage
    if storage.exists(HOLDOUT):
        return list(json.loads(storage.read_bytes(HOLDOUT))["image_ids"])
    human = audited[audited["status"] == "human"]
    chosen = sorted(human["image_id"][in_holdout(human["image_id"], fraction)].tolist()) if len(human) else []
    if len(chosen) < min_holdout:
        return None
    label_of = human.set_index("image_id")["label"]
    record = {"image_ids": chosen, "labels": {image_id: label_of[image_id] for image_id in chosen},
              "fraction": fraction, "labels_version": labels_version,
              "frozen_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if not storage.create_bytes(HOLDOUT, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()):
        return list(json.loads(storage.read_bytes(HOLDOUT))["image_ids"])  # another run froze it first
    return chosen


def holdout_ids(registry: ModelRegistry) -> list[str]:
    """The frozen holdout's image ids, [] while none is frozen (reads only; :func:`frozen_holdout` freezes)."""
    if not registry.storage.exists(HOLDOUT):
        return []
    return list(json.loads(registry.storage.read_bytes(HOLDOUT))["image_ids"])


def _digest(model: LabelModel, embedder_version: str | None, train: pd.DataFrame) -> str:
    parts = [embedder_version, sorted(model.get_params().items()),
             sorted(zip(train["image_id"].tolist(), train["label"].tolist()))]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def current_model(registry: ModelRegistry, embedder_version: str | None):
    """``(model, version, note, error)``: the promoted model when it reads this embedder's vectors; a promoted
    model of another embedder is no yardstick (its vectors do not compare), so the candidate faces chance."""
    promoted = registry.promoted()
    if promoted is None:
        return None, None, "", None
    if promoted.metadata.get("embedder_version") != embedder_version:
        return None, promoted.version, (f"; the promoted {promoted.version} reads embedder "
                                        f"{promoted.metadata.get('embedder_version')}, so the candidate faces "
                                        f"chance"), None
    try:
        return registry.load(promoted.version), promoted.version, "", None
    except RegistryError as error:
        return None, promoted.version, "", str(error)


def train_label_model(audited: pd.DataFrame, vectors: Vectors, registry: ModelRegistry, *,
                      promotion: PromotionSettings, holdout_fraction: float, labels_version: int,
                      taxonomy_version: str, model: LabelModel | None = None) -> TrainingOutcome:
    """Train on the verified labels outside the holdout, save the model, and promote it if it is not worse."""
    model = model or LabelModel()
    holdout = frozen_holdout(registry, audited, holdout_fraction, promotion.min_holdout, labels_version)
    verified = verified_labels(audited, vectors)
    kept_out = set(holdout) if holdout is not None else set(
        verified["image_id"][in_holdout(verified["image_id"], holdout_fraction)]) if len(verified) else set()
    train = verified[~verified["image_id"].isin(kept_out)].sort_values("image_id")
    held = verified[verified["image_id"].isin(set(holdout or ()))].sort_values("image_id")
    promoted_before = registry.promoted()
    base = {"verified_labels": len(verified), "training_items": len(train), "holdout_items": len(held),
            "holdout_frozen": holdout is not None, "embedder_version": vectors.embedder_version or "",
            "labels_version": labels_version}
    if len(train) < MIN_TRAINING or train["label"].nunique() < 2:
        return TrainingOutcome(None, False, f"no model trained: {len(train)} verified labels outside the holdout "
                                            f"in {train['label'].nunique()} class(es); at least {MIN_TRAINING} in "
                                            f"two classes are needed", None,
                               promoted_before.version if promoted_before else None, base, len(held))
    digest = _digest(model, vectors.embedder_version, train)
    versions = registry.list()
    if versions and versions[-1].metadata.get("training_digest") == digest:
        last = versions[-1]
        return TrainingOutcome(last.version, False, f"unchanged: the training set of {last.version} (no new "
                                                    f"version)", last.metadata.get("promotion"),
                               promoted_before.version if promoted_before else None,
                               {**base, **{k: last.metadata[k] for k in ("cv_accuracy", "calibration_error")
                                           if k in last.metadata}}, len(held))
    x = vectors.matrix[vectors.rows_of(train["image_id"])]
    y = train["label"].to_numpy()
    report = cross_validated_report(model, x, y, seed=model.seed)
    model.fit(x, y)
    current, current_version, note, error = current_model(registry, vectors.embedder_version)
    if error:
        decision = PromotionDecision(False, f"not promoted: the promoted model cannot be loaded: {error}",
                                     len(held), None)
    else:
        hx = vectors.matrix[vectors.rows_of(held["image_id"])] if len(held) else np.zeros((0, x.shape[1]))
        decision = decide_promotion(model, current, hx, held["label"].to_numpy(), promotion)
        if holdout is None:
            decision = PromotionDecision(False, f"not promoted: no frozen holdout yet ({decision.reason})",
                                         decision.holdout_items, decision.candidate_accuracy)
        elif note:
            decision = PromotionDecision(**{**decision.__dict__, "reason": decision.reason + note})
    metadata = {**base, **report.to_metadata(), "taxonomy_version": taxonomy_version, "training_digest": digest,
                "compared_with": current_version, "promotion": decision.to_metadata()}
    version = registry.save(model, metadata)
    if decision.promote:
        registry.promote(version, decision.reason)
    promoted = registry.promoted()
    return TrainingOutcome(version, True, decision.reason, decision.to_metadata(),
                           promoted.version if promoted else None, registry.metadata(version), len(held), error)
