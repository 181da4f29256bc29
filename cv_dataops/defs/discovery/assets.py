"""Discovery: the scenarios (clusters) and 2-D map over the whole catalog."""

import base64
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.discovery.scenarios import (
    ScenarioModel,
    map_png,
    typical_members,
    update_scenarios,
)
from cv_dataops.discovery.tables import SCENARIOS
from cv_dataops.drift.tables import DRIFT_SUMMARY
from cv_dataops.embeddings.vectors import current_vectors, waiting_message
from cv_dataops.images.thumbnails import catalog_thumbnail, markdown_grid
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.resources import CatalogResource, CurationResource, EmbeddingResource

MODEL_KEY = "models/scenarios/scenarios.npz"  # the clustering in force, under the data root


@dg.asset(
    deps=["image_embeddings"],
    group_name="discovery",
    kinds={"python", "parquet"},
    code_version="3",
    metadata=table_metadata(SCENARIOS),
    automation_condition=SPANNING,
    output_required=False,
)
def scenarios(context: dg.AssetExecutionContext, catalog: CatalogResource, embedding: EmbeddingResource,
              curation: CurationResource) -> Iterator[dg.MaterializeResult]:
    """The scenarios a team curates for, found as clusters in embedding space (their number chosen by silhouette),
    each with its size and thumbnails, and a 2-D map of the whole catalog. The clusters are chosen again only when
    the catalog grew by scenario_refit_growth since, a batch added since drifted, or the embedder changed; in between,
    new images join the nearest scenario (the metadata says which happened and why). Only the current embedder's
    vectors are used: after a change of embedder, the images still waiting to be re-embedded are left out until
    they are (the metadata says how many); before the first batch is re-embedded, the asset waits (the last
    scenarios stay)."""
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    previous = ScenarioModel.from_bytes(storage.read_bytes(MODEL_KEY)) if storage.exists(MODEL_KEY) else None
    summary = tables.read(DRIFT_SUMMARY, columns=["batch_id", "drifted"]).to_pandas()
    update = update_scenarios(vectors.image_ids, vectors.batch_ids, vectors.matrix, vectors.embedder_version,
                              previous, drifted_batches=summary["batch_id"][summary["drifted"].astype(bool)],
                              growth=curation.scenario_refit_growth, workers=embedding.workers)
    if update.rechosen:
        storage.write_bytes(MODEL_KEY, update.model.to_bytes())
    context.log.info(f"scenarios: {update.reason}")
    frame, coordinates = update.frame, update.coordinates
    uri = tables.write(SCENARIOS, pa.Table.from_pandas(frame, preserve_index=False))
    uris = dict(zip(*tables.read(IMAGES, columns=["image_id", "uri"]).to_pydict().values(), strict=True))
    read = catalog.uri_reader()

    sections = {f"scenario {scenario} ({int((frame.scenario == scenario).sum())} images)": [
        (f"{row.distance:.2f}", image) for row in typical.itertuples()
        if row.image_id in uris and (image := catalog_thumbnail(uris[row.image_id], row.image_id, read)) is not None]
        for scenario, typical in typical_members(frame).items()}
    png = map_png(coordinates, frame.scenario.to_numpy())
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": len(frame), "scenarios": int(frame.scenario.nunique()) if len(frame) else 0,
        "clusters_rechosen": update.rechosen, "clusters": update.reason,
        "sizes": dg.MetadataValue.json(frame.scenario.value_counts().sort_index().to_dict() if len(frame) else {}),
        "typical_images": dg.MetadataValue.md(markdown_grid(sections) if sections else "no images"),
        "map": dg.MetadataValue.md(f"![map of the catalog](data:image/png;base64,{base64.b64encode(png).decode()})"),
        **vectors.summary(),
        "scenarios_table": dg.MetadataValue.path(uri)})
