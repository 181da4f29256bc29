"""Dagster resources shared by every stage: where the catalog lives and where images land.

Both work on a local folder or an ``s3://`` URI; S3 goes through dagster-aws's ``S3Resource`` (endpoint, credentials
and region from the environment, e.g. ``AWS_ENDPOINT_URL`` for MinIO), which also retries throttling and 5xx errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import Storage, open_storage
from cv_dataops.ingest.batch import LABEL_MODES, IngestLimits, LabelSource
from cv_dataops.ingest.landing import BatchLedger

DEFAULT_DATA_ROOT = "data"
DEFAULT_LANDING = "data/landing"


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


class CatalogResource(dg.ConfigurableResource):
    """The data root: catalog tables, batch manifests and reports."""

    data_root: str = Field(description="Folder or s3://bucket/prefix holding the catalog.")
    s3: S3Resource = Field(default_factory=S3Resource)

    def storage(self) -> Storage:
        return open_storage(_absolute(self.data_root), self.s3.get_client)

    def catalog(self) -> Catalog:
        return Catalog(self.storage())

    def ledger(self) -> BatchLedger:
        return BatchLedger(self.storage())


class LandingResource(dg.ConfigurableResource):
    """The landing zone and the rules for taking objects in from it."""

    uri: str = Field(description="Folder or s3://bucket/prefix that images land in.")
    labels: str = Field(default="imagefolder", description="Labels at landing: " + "|".join(LABEL_MODES))
    min_age_seconds: float = Field(default=5.0, description="Leave objects younger than this for the next tick.")
    max_batch_size: int = Field(default=5000, description="At most this many objects per batch.")
    max_pixels: int = Field(default=IngestLimits.max_pixels, description="Refuse larger images (bombs).")
    min_side: int = Field(default=IngestLimits.min_side, description="Refuse images with a shorter side.")
    workers: int = Field(default=8, description="Threads reading and decoding objects.")
    quarantine_rate_warn: float = Field(default=0.2, description="WARN when a batch quarantines more than this.")
    s3: S3Resource = Field(default_factory=S3Resource)

    def storage(self, uri: str | None = None) -> Storage:
        return open_storage(_absolute(uri or self.uri), self.s3.get_client)

    def limits(self) -> IngestLimits:
        return IngestLimits(max_pixels=self.max_pixels, min_side=self.min_side)

    def label_source(self, landing: Storage) -> LabelSource:
        return LabelSource(self.labels, landing)


class QualityResource(dg.ConfigurableResource):
    """Quality thresholds, issue-rate limits and duplicate radii; unset values take the library's defaults."""

    thresholds: dict[str, float] = Field(default_factory=dict,
                                         description="Per-issue score thresholds overriding the defaults.")
    max_issue_rate: float = Field(default=0.3, description="WARN when a batch has more of any one issue.")
    max_unusable_rate: float = Field(default=0.5, description="ERROR (blocking) when more of a batch is unusable.")
    workers: int = Field(default=2, description="Processes measuring images.")
    phash_radius: int | None = Field(default=None, description="Near-duplicate Hamming radius on the phash.")
    dhash_radius: int | None = Field(default=None, description="Near-duplicate Hamming radius on the dhash.")
    embedding_identical_radius: float | None = Field(
        default=None, description="Cosine distance under which two embeddings alone make a near duplicate.")
    embedding_near_radius: float | None = Field(
        default=None, description="Cosine distance under which two images are near duplicates if their hashes "
                                  "are also within embedding_hash_total.")
    embedding_hash_total: int | None = Field(default=None, description="phash + dhash limit for embedding pairs.")

    def quality_thresholds(self):
        from cv_dataops.quality.measure import QualityThresholds

        return dataclasses.replace(QualityThresholds(), **self.thresholds)

    def duplicate_settings(self):
        from cv_dataops.duplicates.index import DuplicateSettings

        radii = {"phash_radius": self.phash_radius, "dhash_radius": self.dhash_radius}
        return dataclasses.replace(DuplicateSettings(), **{k: v for k, v in radii.items() if v is not None})

    def embedding_duplicate_settings(self):
        from cv_dataops.duplicates.index import EmbeddingDuplicateSettings

        values = {"identical_radius": self.embedding_identical_radius, "near_radius": self.embedding_near_radius,
                  "hash_total": self.embedding_hash_total}
        return dataclasses.replace(EmbeddingDuplicateSettings(), **{k: v for k, v in values.items() if v is not None})


class CurationResource(dg.ConfigurableResource):
    """How the curated dataset is chosen, split, checked and exported."""

    budget: float | None = Field(default=None, description="At most this many images (>= 1) or this fraction "
                                                            "(< 1) of the eligible ones; unset: all eligible.")
    split_fractions: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1], description="train, val, test.")
    neighbour_radius: float = Field(default=0.05, description="Cosine distance under which images never split.")
    seed: int = 0
    method: str = Field(default="herding", description="How to pick within a label or scenario: herding or k-center.")
    min_per_class_and_split: int = Field(default=1, description="ERROR below this many per label and split.")
    max_class_ratio: float = Field(default=3.0, description="WARN when the largest class exceeds the smallest "
                                                            "by more than this ratio.")
    export_imagefolder: bool = Field(default=True, description="Also copy the images into an ImageFolder tree.")

    def settings(self):
        from cv_dataops.curation.curation import CurationSettings

        budget = None if self.budget is None else (int(self.budget) if self.budget >= 1 else float(self.budget))
        return CurationSettings(budget=budget, split_fractions=tuple(self.split_fractions),
                                neighbour_radius=self.neighbour_radius, seed=self.seed, method=self.method)


DEFAULT_EMBEDDER = {"kind": "patch-kmeans"}


def embedder_spec_from_environment() -> dict:
    """CV_DATAOPS_EMBEDDER: a JSON object such as {"kind": "onnx", "path": "model.onnx", "input_size": [224, 224],
    "mean": [...], "std": [...]}; unset, the built-in patch-kmeans embedder."""
    return json.loads(os.environ.get("CV_DATAOPS_EMBEDDER") or "null") or dict(DEFAULT_EMBEDDER)


class EmbeddingResource(dg.ConfigurableResource):
    """Which embedder turns images into vectors. The built-in one is fitted once, unsupervised, on the first images
    of the catalog, and kept under the data root (models/) so every batch uses the same parameters."""

    spec: dict = Field(default_factory=lambda: dict(DEFAULT_EMBEDDER), description="Embedder kind and settings.")
    fit_images: int = Field(default=3000, description="Images the built-in embedder is fitted on, at most.")
    batch_size: int = Field(default=256, description="Images embedded at a time.")
    decode_workers: int = Field(default=1, description="Threads decoding images ahead of the embedder (more only "
                                                             "helped small images on an idle machine: docs/benchmarks.md).")


def build_resources(landing: str | None = None, data_root: str | None = None, labels: str | None = None,
                    **landing_options: object) -> dict[str, dg.ConfigurableResource]:
    """The resources every entry point uses; unset arguments come from the environment, then the defaults."""
    s3 = S3Resource()
    if "min_age_seconds" not in landing_options and os.environ.get("CV_DATAOPS_MIN_AGE_SECONDS"):
        landing_options["min_age_seconds"] = float(os.environ["CV_DATAOPS_MIN_AGE_SECONDS"])
    return {
        "catalog": CatalogResource(data_root=data_root or os.environ.get("CV_DATAOPS_DATA_ROOT", DEFAULT_DATA_ROOT),
                                   s3=s3),
        "landing": LandingResource(uri=landing or os.environ.get("CV_DATAOPS_LANDING", DEFAULT_LANDING),
                                   labels=labels or os.environ.get("CV_DATAOPS_LABELS", "imagefolder"),
                                   s3=s3, **landing_options),
        "embedding": EmbeddingResource(spec=embedder_spec_from_environment()),
        "curation": CurationResource(**json.loads(os.environ.get("CV_DATAOPS_CURATION") or "{}")),
        "quality": QualityResource(thresholds=json.loads(os.environ.get("CV_DATAOPS_QUALITY_THRESHOLDS") or "{}"),
                                   workers=int(os.environ.get("CV_DATAOPS_WORKERS") or min(4, os.cpu_count() or 1))),
    }


def default_dagster_home(data_root: str) -> Path:
    """DAGSTER_HOME when none is set: beside a local catalog, or ./.dagster_home for an S3 one."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    return Path(data_root if "://" not in data_root else ".") / ("dagster_home" if "://" not in data_root
                                                                  else ".dagster_home")
