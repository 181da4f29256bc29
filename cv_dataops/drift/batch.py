"""One batch's drift report from the catalog: what the ``drift_report`` asset does, without Dagster.

Reads the batch's quality rows (the image properties) and images rows (format, camera), picks the reference
(:func:`~cv_dataops.drift.reference.choose_reference`: the current curated snapshot's train split by default), and
runs :func:`~cv_dataops.drift.detect.detect_drift` on the properties and the current embedder's vectors.

The reference is read as it stands when the batch is tested, not declared as an upstream asset: the curated
snapshot is built from every batch, this batch included, so a declared dependency would be a cycle. The batch's
own images never count as reference, and the report names the snapshot it compared with.

A named snapshot (one a model was trained on, say) is read from its manifest under ``snapshots/``; a name that
was never written is reported as no reference, flagging nothing.

With a promoted label model (of the current embedder), the model family runs too: its predicted labels and
confidence on the batch against the reference, and an accuracy estimate. Both sides' probabilities must be out of
sample, and the model was trained on the verified labels: an image (of the reference or of the batch) takes part
only when the model cannot have seen its label (it is in the frozen holdout, or it never had a human or review
label; a disputed label might once have been human, so it is left out), and the holdout's audited labels
calibrate the accuracy estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cv_dataops.core.catalog import Catalog
from cv_dataops.curation.dataset import SNAPSHOTS_PREFIX
from cv_dataops.curation.snapshots import read_snapshot
from cv_dataops.curation.tables import CURATED
from cv_dataops.drift.detect import (
    DriftResult,
    DriftSample,
    DriftSettings,
    detect_drift,
)
from cv_dataops.drift.reference import (
    ReferenceChoice,
    ReferenceSettings,
    choose_reference,
)
from cv_dataops.drift.statistics import property_frame
from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality.tables import QUALITY

_IMAGE_COLUMNS = ["image_id", "batch_id", "uri", "format", "camera_make", "camera_model"]


@dataclass(frozen=True)
class BatchDrift:
    """The result, the reference chosen (or why there was none) and where each tested image's bytes are."""

    result: DriftResult
    reference: ReferenceChoice
    uris: dict[str, str]


def _sample(properties: pd.DataFrame, vectors: Vectors | None) -> DriftSample:
    """The properties of the images that have a current vector (all of them when there are no vectors)."""
    if vectors is None or not len(vectors):
        return DriftSample(properties.reset_index(drop=True))
    known = set(vectors.image_ids)
    kept = properties[properties["image_id"].isin(known)].reset_index(drop=True)
    return DriftSample(kept, vectors=vectors.matrix[vectors.rows_of(kept["image_id"])])


@dataclass(frozen=True)
class PromotedModel:
    """The promoted label model for the model family: ``model`` has ``predict_proba`` and ``classes_`` and reads
    the current embedder's vectors; ``holdout``: the frozen holdout's image ids; ``audited``: the audited_labels
    rows (image_id, label, status)."""

    model: Any
    version: str
    holdout: Iterable[str]
    audited: pd.DataFrame


TRAINABLE_STATUSES = ("human", "reviewed", "disputed")  # a label the model may have been trained on


def _with_model(sample: DriftSample, promoted: PromotedModel, reference: bool) -> DriftSample:
    """``sample`` with the model's probabilities, NaN where the model may have seen the label (on either side: a
    batch whose labels it trained on looks more confident than new data would), and, for the reference, the
    holdout's labels as column indices."""
    if sample.vectors is None or not len(sample.vectors):
        return sample
    probabilities = np.asarray(promoted.model.predict_proba(sample.vectors), dtype=np.float64)
    ids = sample.properties["image_id"].astype(str)
    holdout = set(map(str, promoted.holdout))
    audited = promoted.audited
    seen = set(audited["image_id"][audited["status"].isin(TRAINABLE_STATUSES)].astype(str)) - holdout
    probabilities[ids.isin(seen).to_numpy()] = np.nan
    if not reference:
        return DriftSample(sample.properties, sample.vectors, probabilities)
    classes = [str(c) for c in promoted.model.classes_]
    verified = audited[audited["status"].isin(("human", "reviewed")) & audited["image_id"].isin(holdout)]
    label_of = dict(zip(verified["image_id"].astype(str), verified["label"].astype(str)))
    labels = np.array([classes.index(label_of[i]) if label_of.get(i) in classes else -1 for i in ids])
    return DriftSample(sample.properties, sample.vectors, probabilities, labels)


def drift_for_batch(tables: Catalog, batch_id: str, vectors: Vectors | None, *,
                    settings: DriftSettings = DriftSettings(),
                    reference_settings: ReferenceSettings = ReferenceSettings(),
                    promoted: PromotedModel | None = None) -> BatchDrift:
    """Test ``batch_id`` against its reference. ``vectors``: the current embedder's (None: properties only);
    ``promoted``: the promoted label model of that embedder (None: no model family)."""
    images = tables.read(IMAGES, columns=_IMAGE_COLUMNS).to_pandas()
    own = images[images["batch_id"] == batch_id]
    batch_properties = property_frame(tables.read(QUALITY, [batch_id]).to_pandas(), own)
    curated = tables.read(CURATED, columns=["image_id", "split", "snapshot_id"]).to_pandas()  # empty: none yet
    order = list(dict.fromkeys(images["batch_id"]))
    earlier = {b: images["image_id"][images["batch_id"] == b].tolist() for b in order[:order.index(batch_id)]} \
        if batch_id in order else {}
    snapshots = None
    if reference_settings.kind == "named_snapshot":
        rows = read_snapshot(tables.storage, reference_settings.snapshot_id, SNAPSHOTS_PREFIX)
        snapshots = {} if rows is None else {reference_settings.snapshot_id: rows}
    reference = choose_reference(reference_settings, batch_id, own["image_id"].tolist(), curated=curated,
                                 snapshots=snapshots, earlier_batches=earlier)
    uris = dict(zip(own["image_id"], own["uri"]))
    batch = _sample(batch_properties, vectors)
    if not reference.available:
        return BatchDrift(detect_drift(batch_id, batch, None, None, settings, no_reference_reason=reference.reason),
                          reference, uris)
    wanted = set(reference.image_ids)
    reference_images = images[images["image_id"].isin(wanted)].drop_duplicates("image_id")
    quality = tables.read(QUALITY, sorted(set(reference_images["batch_id"]))).to_pandas()  # the reference's batches
    reference_properties = property_frame(quality[quality["image_id"].isin(wanted)].drop_duplicates("image_id"),
                                          reference_images)
    reference_sample = _sample(reference_properties, vectors)
    classes = None
    if promoted is not None and vectors is not None:
        batch, reference_sample = _with_model(batch, promoted, False), _with_model(reference_sample, promoted, True)
        classes = [str(c) for c in promoted.model.classes_]
    result = detect_drift(batch_id, batch, reference_sample, reference.reference_id, settings, classes=classes)
    notes = [result.note] if result.note else []
    if promoted is not None and reference_sample.probabilities is not None:
        used = int(np.isfinite(reference_sample.probabilities).all(axis=1).sum())
        notes.append(f"label model {promoted.version}: {used} reference images it never trained on")
    result.note = "; ".join([*notes, reference.reason])
    return BatchDrift(result, reference, uris)
