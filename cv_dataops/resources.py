"""Dagster resources shared by every stage: where the catalog lives and where images land.

Configured from :class:`cv_dataops.config.Settings` by :func:`build_resources`. Storage works on a local folder or an
``s3://`` URI; S3 is configured by dagster-aws's ``S3Resource`` (endpoint, credentials and region, by default from
the environment, e.g. ``AWS_ENDPOINT_URL`` for MinIO) and every client, for tables and image bytes alike, is built
from its settings (:func:`s3_client_settings`), with retries on throttling and 5xx errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from cv_dataops.config import (
    CATALOG,
    CURATION,
    DEFAULT_EMBEDDER,
    DEFAULT_LABELS,
    DRIFT,
    EMBEDDING,
    LABELLING,
    LANDING,
    QUALITY,
    ConfigError,
    Settings,
)
from cv_dataops.core.catalog import Catalog
from cv_dataops.core.lease import Lease
from cv_dataops.core.storage import (
    DATA_ROOT_OUTAGE_SECONDS,
    S3ClientSettings,
    Storage,
    UriReader,
    absolute_location,
    open_data_root,
    open_storage,
)
from cv_dataops.ingest.batch import IngestLimits
from cv_dataops.ingest.labels import LABEL_MODES, LabelSource
from cv_dataops.ingest.landing import MAX_ATTEMPTS, RETRY_PAUSE_SECONDS, BatchLedger


def s3_client_settings(s3: S3Resource) -> S3ClientSettings:
    """The S3Resource's configuration as plain settings: every S3 client (tables, image bytes, worker processes)
    is built from them, so there is one place that configures S3."""
    return S3ClientSettings(**{f.name: getattr(s3, f.name) for f in dataclasses.fields(S3ClientSettings)})


class StageResource(dg.ConfigurableResource):
    """A stage's resource. When its settings were wrong it carries the one-line error instead of failing the code
    location's load, and every run, check or sensor tick that uses it fails with that line before doing anything."""

    settings_error: str | None = Field(default=None, description="Why this stage's settings are unusable, if so.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.settings_error:
            raise ConfigError(self.settings_error)


# A catalog on S3 rides out an endpoint outage this long (a restart of MinIO, a network blip) instead of failing
# the step: its writes are idempotent, and a failed step would only be run again by the next run.
CATALOG_OUTAGE_SECONDS = DATA_ROOT_OUTAGE_SECONDS

# The tag `cv-dataops run` puts on its runs (it holds the data root's lease for them itself).
LAUNCHED_BY_TAG, LAUNCHED_BY_CLI = "cv_dataops/launched_by", "cli"
RE_EXECUTED_CLI_RUN = "re-execution of a cli run"


class CatalogResource(StageResource):
    """The data root: catalog tables, batch manifests and reports."""

    data_root: str = Field(description="Folder or s3://bucket/prefix holding the catalog.")
    s3: S3Resource = Field(default_factory=S3Resource)
    outage_seconds: float = Field(default=CATALOG_OUTAGE_SECONDS, description=(
        "How long a catalog on S3 retries an unreachable or failing endpoint before the step fails."))

    lease_wait_seconds: float = Field(default=6 * 3600.0, description=(
        "How long a step of a run not started by `cv-dataops run` (the daemon's, the UI's) waits for the data "
        "root's lease held by another batcher before it fails (and is retried)."))

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[CatalogResource]:
        """Every step of a run holds the data root's lease while it works, so the daemon's runs, a UI launch and
        `cv-dataops run` never work on one data root at once. A `cv-dataops run` holds the lease for all its
        runs itself (its steps, its descendant processes, do not take it again); a sensor tick or a resource built
        outside a run takes none (the sensors that batch take it themselves)."""
        self.setup_for_execution(context)
        run = context.dagster_run
        if run is None:
            yield self
            return
        if run.tags.get(LAUNCHED_BY_TAG) == LAUNCHED_BY_CLI:
            if Lease.held_by_an_ancestor(Lease(self.storage(), "probe").current()):
                yield self  # a step of the `cv-dataops run` holding the lease
                return
            # the CLI's tag without the CLI: a re-execution from the UI (tags are copied). It is no orphan of a
            # killed CLI (which the next `cv-dataops run` would mark failed), and takes the lease like any run.
            context.instance.add_run_tags(run.run_id, {LAUNCHED_BY_TAG: RE_EXECUTED_CLI_RUN})
        holder = f"run {run.run_id} of {run.job_name}"
        with Lease(self.storage(), holder, wait_seconds=self.lease_wait_seconds, poll_seconds=2.0):
            yield self

    def storage(self) -> Storage:
        return open_data_root(self.data_root, s3_client_settings(self.s3), self.outage_seconds)

    def uri_reader(self) -> UriReader:
        """Reads the image bytes the tables point at (``uri`` columns) through the same S3 configuration."""
        return UriReader(s3_client_settings(self.s3), self.outage_seconds)

    def catalog(self) -> Catalog:
        return Catalog(self.storage())

    def ledger(self) -> BatchLedger:
        return BatchLedger(self.storage())


class LandingResource(StageResource):
    """The landing zone and the rules for taking objects in from it."""

    uri: str = Field(description="Folder or s3://bucket/prefix that images land in.")
    labels: str = Field(default=DEFAULT_LABELS, description="Labels at landing: " + "|".join(LABEL_MODES))
    min_age_seconds: float = Field(default=5.0, description="Leave objects younger than this for the next tick.")
    max_batch_size: int = Field(default=5000, description="At most this many objects per batch.")
    max_pixels: int = Field(default=IngestLimits.max_pixels, description="Refuse larger images (bombs).")
    min_side: int = Field(default=IngestLimits.min_side, description="Refuse images with a shorter side.")
    max_bytes: int = Field(default=IngestLimits.max_bytes, description="Refuse larger objects unread (too_large).")
    read_attempts: int = Field(default=IngestLimits.read_attempts,
                               description="Tries per object while reading fails for a reason that may pass.")
    read_backoff_seconds: float = Field(default=IngestLimits.read_backoff_seconds,
                                        description="Pause after a failed try, doubled after each (jittered).")
    retry_batches: int = Field(default=MAX_ATTEMPTS, description="Batches that try a deferred object before it "
                                                                 "is quarantined (unreadable_after_retries).")
    retry_pause_seconds: float = Field(default=RETRY_PAUSE_SECONDS,
                                       description="Pause before a deferred object's second retry, doubled after.")
    workers: int = Field(default=8, description="Threads reading and decoding objects.")
    quarantine_rate_warn: float = Field(default=0.2, description="WARN when a batch quarantines more than this.")
    s3: S3Resource = Field(default_factory=S3Resource)

    def storage(self, uri: str | None = None) -> Storage:
        return open_storage(absolute_location(uri or self.uri), s3_client_settings(self.s3).client)

    def limits(self) -> IngestLimits:
        return IngestLimits(max_pixels=self.max_pixels, min_side=self.min_side, max_bytes=self.max_bytes,
                            read_attempts=self.read_attempts, read_backoff_seconds=self.read_backoff_seconds)

    def plan(self, ledger: BatchLedger) -> list:
        """New batches of what landed (:meth:`BatchLedger.plan` with this landing zone's settings)."""
        return ledger.plan(self.storage(), min_age_seconds=self.min_age_seconds, max_batch_size=self.max_batch_size,
                           max_attempts=self.retry_batches, retry_pause_seconds=self.retry_pause_seconds)

    def label_source(self, landing: Storage) -> LabelSource:
        return LabelSource(self.labels, landing)


class QualityResource(StageResource):
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


class CurationResource(StageResource):
    """How the curated dataset is chosen, split, checked and exported."""

    budget: float | None = Field(default=None, description="At most this many images (>= 1) or this fraction "
                                                            "(< 1) of the eligible ones; unset: all eligible.")
    split_fractions: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1], description="train, val, test.")
    neighbour_radius: float = Field(default=0.05, description="Cosine distance under which images never split.")
    seed: int = 0
    method: str = Field(default="herding", description="How to pick within a label or scenario: herding or k-center.")
    drift_share: float = Field(default=0.25, description="Under a budget, at most this share of it goes first to "
                                                         "images of batches that drifted.")
    scenario_refit_growth: float = Field(default=0.25, ge=0, description="Scenarios (the strata) are chosen again "
                                                                         "when the catalog has grown by this "
                                                                         "fraction since; 0: on every run.")
    keep_splits: bool = Field(default=True, description="An image keeps its split from the last current "
                                                        "snapshot; false: every version is split afresh.")
    min_per_class_and_split: int = Field(default=1, description="ERROR below this many per label and split.")
    max_class_ratio: float = Field(default=3.0, description="WARN when the largest class exceeds the smallest "
                                                            "by more than this ratio.")
    export_imagefolder: bool = Field(default=True, description="Also copy the images into an ImageFolder tree.")
    keep_imagefolders: int | None = Field(default=3, ge=1, description="Keep the ImageFolder copies of this many "
                                                                        "most recent snapshots (null: all); the "
                                                                        "rest keep their manifest and exports.")

    def settings(self):
        from cv_dataops.curation.settings import CurationSettings

        budget = None if self.budget is None else (int(self.budget) if self.budget >= 1 else float(self.budget))
        return CurationSettings(budget=budget, split_fractions=tuple(self.split_fractions),
                                neighbour_radius=self.neighbour_radius, seed=self.seed, method=self.method,
                                drift_share=self.drift_share, keep_splits=self.keep_splits)


class EmbeddingResource(StageResource):
    """Which embedder turns images into vectors. The built-in one is fitted once, unsupervised, on the first images
    of the catalog, and kept under the data root (models/) so every batch uses the same parameters."""

    spec: dict = Field(default_factory=lambda: dict(DEFAULT_EMBEDDER), description="Embedder kind and settings.")
    fit_images: int = Field(default=3000, description="Images the built-in embedder is fitted on, at most.")
    batch_size: int = Field(default=256, description="Images embedded at a time.")
    workers: int = Field(default=2, description="Threads running the embedder on that many batches at once "
                                                "(CV_DATAOPS_WORKERS; one BLAS thread each).")
    decode_workers: int = Field(default=1, description="Threads decoding images ahead of the embedder (more only "
                                                             "helped small images on an idle machine: docs/benchmarks.md).")


class LabelsResource(StageResource):
    """The labels loop: the taxonomy, where label files and review decisions are dropped, and the review round's
    budget, the auto-labels' precision and the promotion's tolerance (``CV_DATAOPS_REVIEW``'s keys are these
    fields but ``taxonomy``)."""

    taxonomy: dict = Field(default_factory=dict, description="Classes and aliases; empty: open (labels as written).")
    budget: int = Field(default=50, ge=1, description="Images per review round (Label Studio tasks written).")
    target_precision: float = Field(default=0.98, gt=0, le=1,
                                    description="Precision auto-labels must reach on verified labels (out of sample).")
    promotion_tolerance: float = Field(default=0.01, ge=0, lt=1, description="Holdout accuracy a new label model "
                                                                              "may lose at the bound and be promoted.")
    promotion_confidence: float = Field(default=0.95, ge=0.5, lt=1, description="One-sided level of that bound.")
    min_holdout: int = Field(default=20, ge=1, description="Human labels the frozen holdout needs to decide.")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of human-labelled images frozen "
                                                                          "into the holdout (never trained on).")
    max_issue_share: float = Field(default=0.3, ge=0, le=1, description="WARN when more of a class's labels are "
                                                                         "probable errors.")
    review_overrides_human: bool = Field(default=False, description="A review decides even against a human label.")
    imports_folder: str = Field(default="imports", description="Label files to import, under the data root.")
    reviews_folder: str = Field(default="reviews", description="Review decisions dropped back, under the data root.")
    queue_folder: str = Field(default="review", description="Where review rounds are written, under the data root.")
    local_files_root: str | None = Field(default=None, description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: local "
                                         "images are linked as /data/local-files/?d=<path relative to it>; unset: "
                                         "the file system root.")
    s3_presign_seconds: int = Field(default=0, ge=0, description="S3 images as presigned https links valid this "
                                                                 "long; 0: s3:// URIs (for Label Studio's S3 storage).")

    @classmethod
    def review_keys(cls) -> list[str]:
        return [name for name in cls.model_fields if name not in ("settings_error", "taxonomy")]

    def check(self) -> LabelsResource:
        self.promotion_settings()
        return self

    def taxonomy_value(self):
        from cv_dataops.labels.taxonomy import Taxonomy

        return Taxonomy.from_config(self.taxonomy or None)

    def promotion_settings(self):
        from cv_dataops.labels.promotion import PromotionSettings

        return PromotionSettings(tolerance=self.promotion_tolerance, confidence=self.promotion_confidence,
                                 min_holdout=self.min_holdout)

    def acceptance_settings(self):
        from cv_dataops.labels.acceptance import AcceptanceSettings

        return AcceptanceSettings(precision=self.target_precision)


class DriftResource(StageResource):
    """The drift report: the batch-wide false-alarm rate, the permutations of the embedding tests, the reference,
    and the alert webhook (``CV_DATAOPS_DRIFT``'s keys are these fields)."""

    alpha: float = Field(default=0.05, gt=0, lt=1, description="False-alarm rate per batch, across all its tests.")
    permutations: int = Field(default=500, ge=1, description="Permutations of each embedding test (MMD, domain "
                                                             "classifier); p-values no smaller than 1/(B+1).")
    max_reference: int = Field(default=1000, ge=20, description="Reference images the embedding tests sample.")
    max_neighbour_reference: int = Field(default=5000, ge=20, description="Reference images the novelty, scenario "
                                                                          "and atypicality tests sample.")
    reference: str = Field(default="current_snapshot", description="current_snapshot (its split, below), "
                                                                   "named_snapshot (snapshot_id) or last_batches.")
    snapshot_id: str | None = Field(default=None, description="For reference named_snapshot: which snapshot "
                                                              "(snap-...; see snapshots/ under the data root).")
    split: str | None = Field(default="train", description="The snapshot split compared with; null: every split.")
    last_batches: int = Field(default=5, ge=1, description="For reference last_batches: how many batches.")
    minimum_images: int = Field(default=20, ge=1, description="Fewer reference images than this: no reference.")
    webhook_url: str | None = Field(default=None, description="POSTed on large drift (Slack-compatible or generic "
                                                              "JSON); unset: no alert.")
    webhook_kind: str = Field(default="slack", description="slack or generic.")
    thumbnails: int = Field(default=12, ge=0, description="Most atypical images shown in the report.")

    @classmethod
    def setting_keys(cls) -> list[str]:
        return [name for name in cls.model_fields if name != "settings_error"]

    def check(self) -> DriftResource:
        from cv_dataops.drift.alerts import KINDS

        self.drift_settings()
        self.reference_settings()
        if self.webhook_kind not in KINDS:
            raise ValueError(f"webhook_kind must be one of {', '.join(KINDS)}, got {self.webhook_kind!r}")
        if self.webhook_url is not None and not self.webhook_url.lower().startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must be http:// or https://, got {self.webhook_url!r}")
        return self

    def drift_settings(self):
        from cv_dataops.drift.detect import DriftSettings

        return DriftSettings(alpha=self.alpha, permutations=self.permutations, max_reference=self.max_reference,
                             max_neighbour_reference=self.max_neighbour_reference)

    def reference_settings(self):
        from cv_dataops.drift.reference import ReferenceSettings

        return ReferenceSettings(kind=self.reference, snapshot_id=self.snapshot_id, split=self.split,
                                 last_batches=self.last_batches, minimum_images=self.minimum_images)


def build_resources(settings: Settings | None = None, *, landing: str | None = None, data_root: str | None = None,
                    labels: str | None = None, **landing_options: object) -> dict[str, dg.ConfigurableResource]:
    """The resources every entry point uses, from ``settings`` (validated; see :mod:`cv_dataops.config`) with
    ``landing``, ``data_root`` and ``labels`` replacing theirs when given. Without settings, from these arguments
    and the defaults only: this function never reads the environment.

    A stage whose settings are wrong gets its defaults plus the error, which fails its assets when they run
    (``settings_error``): loading the definitions, and every other stage, go on working."""
    settings = settings or Settings.build()
    locations = {"landing": landing, "data_root": data_root, "labels": labels}
    if any(v is not None for v in locations.values()):
        settings = settings.replace(**{k: v for k, v in locations.items() if v is not None})
    for name in ("min_age_seconds", "max_bytes", "read_attempts", "read_backoff_seconds", "retry_batches",
                 "retry_pause_seconds"):  # None: the resource's default
        if getattr(settings, name) is not None:
            landing_options.setdefault(name, getattr(settings, name))
    s3 = S3Resource()
    curation = {} if settings.stage_error(CURATION) else dict(settings.curation)
    labelling = {} if settings.stage_error(LABELLING) else {**settings.review, "taxonomy": dict(settings.labels_taxonomy)}
    return {
        "catalog": CatalogResource(data_root=settings.data_root, s3=s3, settings_error=settings.stage_error(CATALOG)),
        "landing": LandingResource(uri=settings.landing, labels=settings.labels, s3=s3,
                                   settings_error=settings.stage_error(LANDING), **landing_options),
        "embedding": EmbeddingResource(spec=dict(settings.embedder), workers=settings.workers,
                                       settings_error=settings.stage_error(EMBEDDING)),
        "curation": CurationResource(**curation, settings_error=settings.stage_error(CURATION)),
        "labelling": LabelsResource(**labelling, settings_error=settings.stage_error(LABELLING)),
        "quality": QualityResource(thresholds=dict(settings.quality_thresholds), workers=settings.workers,
                                   settings_error=settings.stage_error(QUALITY)),
        "drift": DriftResource(**({} if settings.stage_error(DRIFT) else dict(settings.drift)),
                               settings_error=settings.stage_error(DRIFT)),
    }
