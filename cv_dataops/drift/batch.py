"""One batch's drift report from the catalog: what the ``drift_report`` asset does, without Dagster.

Reads the batch's quality rows (the image properties) and images rows (format, camera), picks the reference
(:func:`~cv_dataops.drift.reference.choose_reference`: the current curated snapshot's train split by default), and
runs :func:`~cv_dataops.drift.detect.detect_drift` on the properties and the current embedder's vectors.

The reference is read as it stands when the batch is tested, not declared as an upstream asset: the curated
snapshot is built from every batch, this batch included, so a declared dependency would be a cycle. The batch's
own images never count as reference, and the report names the snapshot it compared with.

A named snapshot as reference is not offered here yet (the domain's chooser takes one, but the snapshots' rows
are not read); the current snapshot and the last N batches are. Not here yet either: the label-model family
(predicted labels, confidence, the accuracy estimate). It needs out-of-sample probabilities for the reference,
and the train split is what the promoted model was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cv_dataops.core.catalog import Catalog
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


def drift_for_batch(tables: Catalog, batch_id: str, vectors: Vectors | None, *,
                    settings: DriftSettings = DriftSettings(),
                    reference_settings: ReferenceSettings = ReferenceSettings()) -> BatchDrift:
    """Test ``batch_id`` against its reference. ``vectors``: the current embedder's (None: properties only)."""
    images = tables.read(IMAGES, columns=_IMAGE_COLUMNS).to_pandas()
    own = images[images["batch_id"] == batch_id]
    batch_properties = property_frame(tables.read(QUALITY, [batch_id]).to_pandas(), own)
    curated = tables.read(CURATED, columns=["image_id", "split", "snapshot_id"]).to_pandas()  # empty: none yet
    order = list(dict.fromkeys(images["batch_id"]))
    earlier = {b: images["image_id"][images["batch_id"] == b].tolist() for b in order[:order.index(batch_id)]} \
        if batch_id in order else {}
    reference = choose_reference(reference_settings, batch_id, own["image_id"].tolist(), curated=curated,
                                 earlier_batches=earlier)
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
    result = detect_drift(batch_id, batch, _sample(reference_properties, vectors), reference.reference_id, settings)
    result.note = reference.reason if not result.note else f"{result.note}; {reference.reason}"
    return BatchDrift(result, reference, uris)
