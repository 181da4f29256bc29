"""Checks on the curated dataset: no leakage across splits and no unusable image (both blocking), enough images
per class and split (ERROR), class balance and every scenario and class kept (WARN)."""

import dagster as dg

from cv_dataops.curation.coverage import coverage
from cv_dataops.curation.dataset import curated_leakage
from cv_dataops.curation.eligibility import eligible
from cv_dataops.curation.pool import curation_pool
from cv_dataops.curation.tables import CURATED
from cv_dataops.defs.curation.assets import curated_dataset
from cv_dataops.duplicates.tables import DUPLICATES
from cv_dataops.embeddings.graph_store import kept_pairs
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import current_vectors
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import (
    CatalogResource,
    CurationResource,
    EmbeddingResource,
    QualityResource,
)


@dg.asset_check(asset=curated_dataset, blocking=True)
def curated_no_leakage(catalog: CatalogResource, curation: CurationResource,
                       embedding: EmbeddingResource) -> dg.AssetCheckResult:
    """No duplicate group and no pair of near neighbours (by the current embedder's vectors) is spread across
    train, val and test."""
    tables = catalog.catalog()
    curated = tables.read(CURATED, columns=["image_id", "split"]).to_pandas()
    vectors = current_vectors(tables, catalog.storage(), embedding.spec)
    groups = tables.read(DUPLICATES, columns=["image_id", "group_id"]).to_pandas().set_index("image_id").group_id
    near = kept_pairs(catalog.storage(), vectors.embedder_version, tables.partition_versions(EMBEDDINGS))
    found = curated_leakage(curated, vectors, groups, curation.neighbour_radius, near)
    return dg.AssetCheckResult(passed=found["leak_free"], metadata={
        **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in found.items()},
        "embedder_version": vectors.embedder_version or "", "near_pairs_from": near.used or "-"})


@dg.asset_check(asset=curated_dataset, blocking=True)
def curated_no_unusable_image(catalog: CatalogResource) -> dg.AssetCheckResult:
    """No image with a blocking quality issue was selected."""
    tables = catalog.catalog()
    curated = set(tables.read(CURATED, columns=["image_id"]).column("image_id").to_pylist())
    quality = tables.read(QUALITY, columns=["image_id", "is_unusable"]).to_pandas()
    bad = sorted(set(quality.image_id[quality.is_unusable]) & curated)
    return dg.AssetCheckResult(passed=not bad, metadata={"unusable_selected": len(bad),
                                                         "examples": dg.MetadataValue.json(bad[:10])})


def _label_split_counts(catalog: CatalogResource):
    curated = catalog.catalog().read(CURATED, columns=["label", "split"]).to_pandas().dropna(subset=["label"])
    return curated.groupby(["label", "split"]).size().unstack(fill_value=0)


@dg.asset_check(asset=curated_dataset)
def curated_min_per_class_and_split(catalog: CatalogResource, curation: CurationResource) -> dg.AssetCheckResult:
    """ERROR when a known label has fewer than `min_per_class_and_split` images in a split that is not empty."""
    counts = _label_split_counts(catalog)
    short = {f"{label}/{split}": int(n) for label, row in counts.iterrows() for split, n in row.items()
             if n < curation.min_per_class_and_split}
    return dg.AssetCheckResult(passed=not short, metadata={
        "minimum": curation.min_per_class_and_split, "too_few": dg.MetadataValue.json(short),
        "counts": dg.MetadataValue.md(counts.to_markdown() if len(counts) else "no labels")})


@dg.asset_check(asset=curated_dataset)
def curated_class_balance(catalog: CatalogResource, curation: CurationResource) -> dg.AssetCheckResult:
    """WARN when the largest class has more than `max_class_ratio` times the images of the smallest."""
    per_class = _label_split_counts(catalog).sum(axis=1)
    ratio = float(per_class.max() / max(per_class.min(), 1)) if len(per_class) else 1.0
    return dg.AssetCheckResult(passed=ratio <= curation.max_class_ratio, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"ratio": ratio, "limit": curation.max_class_ratio,
                                         "per_class": dg.MetadataValue.json(per_class.to_dict())})


@dg.asset_check(asset=curated_dataset)
def curated_keeps_scenarios_and_classes(catalog: CatalogResource, quality: QualityResource,
                                        embedding: EmbeddingResource) -> dg.AssetCheckResult:
    """WARN when the selection dropped a scenario or a class that the eligible images of the catalog hold (a night
    or fog scenario, a rare class): the budget is then too small for the catalog's variety, or something excluded
    them."""
    tables = catalog.catalog()
    pool, _ = curation_pool(tables, quality.max_unusable_rate,
                            current_vectors(tables, catalog.storage(), embedding.spec))
    kept, _ = eligible(pool)
    found = coverage(kept, tables.read(CURATED, columns=["image_id"]).column("image_id").to_pylist())
    shares = found.scenario_shares.round(3)
    return dg.AssetCheckResult(passed=found.kept_everything, severity=dg.AssetCheckSeverity.WARN, metadata={
        "dropped_scenarios": dg.MetadataValue.json(found.dropped_scenarios),
        "dropped_labels": dg.MetadataValue.json(found.dropped_labels), "selected": found.selected,
        "scenario_shares": dg.MetadataValue.md(shares.to_markdown() if len(shares) else "no scenarios")})
