"""The labels loop: labels in with provenance, the audited label per image, the label model, auto-labels, label
issues and the review round, with review decisions coming back through the review sensor.

The loop is a cycle (labels -> model -> review -> labels); Dagster's graph is cut on purpose in two places:
``review_decisions`` is a root asset (no upstream: its input is the files humans drop into ``reviews/``, outside
Dagster; the review sensor requests it once per new file, and `cv-dataops run` refreshes it with the other spanning
assets), and the `labels` table is an append-only, versioned store that every stage reads *as of* a version:
``review_decisions`` appends the review files' events, ``auto_labels`` its accepted labels, and the next audit
reads them. No asset depends on one downstream of it.
"""

import json
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from cv_dataops.curation.tables import CURATED
from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.drift.tables import DRIFT_ATYPICALITY, DRIFT_SUMMARY
from cv_dataops.embeddings.vectors import current_vectors, waiting_message
from cv_dataops.exports.csv import export_csv
from cv_dataops.exports.label_studio import (
    label_studio_config,
    label_studio_image_url,
    review_tasks,
    s3_presigner,
)
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.labels import review_queue as queue_rows
from cv_dataops.labels.active_learning import choose_for_labelling
from cv_dataops.labels.audit import audit
from cv_dataops.labels.auto_labelling import (
    HUMAN_STATUSES,
    auto_label,
    candidates,
)
from cv_dataops.labels.label_issues import find_label_issues
from cv_dataops.labels.registry import REGISTRY_FOLDER, ModelRegistry
from cv_dataops.labels.review import append_dropped, imports_summary
from cv_dataops.labels.sources import CatalogImages, landing_events
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.tables import (
    AUDIT_STATUSES,
    AUDITED_LABELS,
    AUTO_LABEL_DECISIONS,
    LABEL_ISSUES,
    LABELS,
)
from cv_dataops.labels.training import train_label_model
from cv_dataops.resources import (
    CatalogResource,
    EmbeddingResource,
    LabelsResource,
    s3_client_settings,
)

GROUP = "labels"
LATEST_ROUND_KEY = "latest.json"  # under the queue folder: the newest round's files
PROBLEMS_SHOWN = 20


def registry(catalog: CatalogResource) -> ModelRegistry:
    return ModelRegistry(catalog.storage().child(REGISTRY_FOLDER))


def _image_lookup(tables) -> CatalogImages:
    return CatalogImages(tables.read(IMAGES, columns=["image_id", "relative_path", "uri"]).to_pandas())


def read_audited(tables) -> pd.DataFrame:
    return tables.read(AUDITED_LABELS).to_pandas()


@dg.asset(group_name=GROUP, kinds={"python", "json", "csv"}, code_version="1",
          automation_condition=dg.AutomationCondition.on_missing())
def review_decisions(context: dg.AssetExecutionContext, catalog: CatalogResource,
                     labelling: LabelsResource) -> dg.MaterializeResult:
    """The review decisions dropped under the data root's reviews/ folder (Label Studio JSON exports, or CSV
    image_id,label,annotator), appended to labels as source review: each file once by content; a file with bad
    rows applies its good rows and the bad ones are listed here with file and line; the files stay. No upstream:
    this is where the labelling cycle is cut (the review_sensor requests it for each new file)."""
    tables, storage = catalog.catalog(), catalog.storage()
    store = LabelStore(storage)
    reviews = append_dropped(store, storage.child(labelling.reviews_folder), source="review",
                             taxonomy=labelling.taxonomy_value(), images=_image_lookup(tables))
    summary = imports_summary(reviews, PROBLEMS_SHOWN)
    if summary["problem_count"]:
        context.log.warning(f"{summary['problem_count']} review row(s) not used; first: {summary['problems'][0]}")
    return dg.MaterializeResult(metadata={
        "labels_version": store.latest_version(), "review_files": summary["files"],
        "review_files_appended": summary["files_appended"], "review_events_appended": summary["events_appended"],
        "problem_count": summary["problem_count"], "problems": dg.MetadataValue.json(summary["problems"]),
        "files": dg.MetadataValue.json([result.as_dict() for result in reviews][:PROBLEMS_SHOWN]),
        "reviews_folder": dg.MetadataValue.path(storage.uri_of(labelling.reviews_folder))})


@dg.asset(deps=["raw_images"], group_name=GROUP, kinds={"python", "parquet"}, code_version="1",
          metadata=table_metadata(LABELS), automation_condition=SPANNING)
def labels(context: dg.AssetExecutionContext, catalog: CatalogResource,
           labelling: LabelsResource) -> dg.MaterializeResult:
    """Every label event, append-only: the landing labels of every batch (source landing) and the label files
    dropped under the data root's imports/ folder (CSV, COCO JSON, Label Studio JSON; source import). A batch or
    a file already stored adds nothing; a row that cannot be used is listed with its file and line."""
    tables, storage = catalog.catalog(), catalog.storage()
    taxonomy = labelling.taxonomy_value()
    store = LabelStore(storage)
    images = tables.read(IMAGES, columns=["image_id", "batch_id", "relative_path", "uri", "label",
                                          "ingested_at"]).to_pandas()
    before = store.latest_version()
    events, landing_problems = landing_events(images, taxonomy)
    version = store.append(events)
    landing_appended = len({event.event_id for event in events}) if version != before else 0
    imports = append_dropped(store, storage.child(labelling.imports_folder), source="import", taxonomy=taxonomy,
                             images=CatalogImages(images))
    summary = imports_summary(imports, PROBLEMS_SHOWN)
    problems = [str(problem) for problem in landing_problems] + summary["problems"]
    if problems:
        context.log.warning(f"{len(landing_problems) + summary['problem_count']} label row(s) not used; first: "
                            f"{problems[0]}")
    latest = store.latest_version()
    return dg.MaterializeResult(metadata={
        "labels_version": latest, "events_appended": landing_appended + summary["events_appended"],
        "landing_events_appended": landing_appended, "import_files": summary["files"],
        "import_files_appended": summary["files_appended"], "import_events_appended": summary["events_appended"],
        "problem_count": len(landing_problems) + summary["problem_count"],
        "problems": dg.MetadataValue.json(problems[:PROBLEMS_SHOWN]),
        "imports": dg.MetadataValue.json([result.as_dict() for result in imports][:PROBLEMS_SHOWN]),
        "taxonomy_version": taxonomy.version,
        "labels_folder": dg.MetadataValue.path(storage.uri_of("catalog/labels"))})


@dg.asset(deps=[labels, review_decisions], group_name=GROUP, kinds={"python", "parquet"}, code_version="1",
          metadata=table_metadata(AUDITED_LABELS), automation_condition=SPANNING)
def audited_labels(context: dg.AssetExecutionContext, catalog: CatalogResource,
                   labelling: LabelsResource) -> dg.MaterializeResult:
    """The labels as of the latest version, audited: the best label per image and why (human beats review beats
    auto; one vote per annotator; any disagreement is disputed)."""
    tables, storage = catalog.catalog(), catalog.storage()
    taxonomy = labelling.taxonomy_value()
    store = LabelStore(storage)
    version = store.latest_version()
    audited = audit(store.read(as_of=version), taxonomy, review_overrides_human=labelling.review_overrides_human,
                    labels_version=version)
    uri = tables.write(AUDITED_LABELS, pa.Table.from_pandas(audited, preserve_index=False))
    statuses = audited["status"].value_counts().to_dict()
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(audited), "labels_version": version,
        **{f"status_{status}": int(statuses.get(status, 0)) for status in AUDIT_STATUSES},
        "not_in_taxonomy": int((~audited["in_taxonomy"]).sum()) if len(audited) else 0,
        "audited_labels_table": dg.MetadataValue.path(uri)})


@dg.asset(deps=[audited_labels, "image_embeddings"], group_name=GROUP, kinds={"python", "scikitlearn"},
          code_version="1", automation_condition=SPANNING, output_required=False)
def label_model(context: dg.AssetExecutionContext, catalog: CatalogResource, labelling: LabelsResource,
                embedding: EmbeddingResource) -> Iterator[dg.MaterializeResult]:
    """A classifier over the current embedder's vectors (standardised logistic regression, temperature-scaled),
    trained on the audited human and reviewed labels outside a frozen holdout, saved as a new version in the
    registry under models/label_model/, and promoted only if a paired bootstrap on the holdout puts its accuracy
    change above -promotion_tolerance (the first model: above the majority-class rate). An unchanged training set
    makes no new version. Metadata: cross-validated accuracy, calibration error, the promotion decision."""
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    audited = read_audited(tables)
    version = int(audited["labels_version"].max()) if len(audited) else LabelStore(storage).latest_version()
    outcome = train_label_model(audited, vectors, registry(catalog), promotion=labelling.promotion_settings(),
                                holdout_fraction=labelling.holdout_fraction, labels_version=version,
                                taxonomy_version=labelling.taxonomy_value().version)
    (context.log.info if outcome.decision and outcome.decision.get("promote") else context.log.warning)(
        outcome.reason)
    shown = {key: outcome.metadata[key] for key in ("cv_accuracy", "calibration_error", "training_items",
                                                     "verified_labels", "cv_folds") if key in outcome.metadata}
    yield dg.MaterializeResult(metadata={
        "model_version": outcome.version or "", "trained": outcome.trained, "reason": outcome.reason,
        "promoted": bool(outcome.decision and outcome.decision.get("promote") and outcome.trained),
        "promoted_version": outcome.promoted or "", "holdout_items": outcome.holdout_items,
        "promotion": dg.MetadataValue.json(outcome.decision or {}), "registry_error": outcome.error or "",
        **shown, **vectors.summary(), "labels_version": version,
        "registry": dg.MetadataValue.path(storage.uri_of(REGISTRY_FOLDER))})


@dg.asset(deps=[label_model, "curated_dataset"], group_name=GROUP, kinds={"python", "parquet"}, code_version="2",
          metadata=table_metadata(AUTO_LABEL_DECISIONS), automation_condition=SPANNING, output_required=False)
def auto_labels(context: dg.AssetExecutionContext, catalog: CatalogResource, labelling: LabelsResource,
                embedding: EmbeddingResource) -> Iterator[dg.MaterializeResult]:
    """The promoted label model's label for every curated image without a human or review label; accepted (source
    auto, with the model version) at or above the confidence threshold that reaches target_precision on the
    verified labels out of sample, the rest sent to review. Metadata: the accuracy-coverage curve."""
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    audited = read_audited(tables)
    curated = tables.read(CURATED, columns=["image_id"]).column("image_id").to_pylist()
    result = auto_label(registry(catalog), audited, vectors, candidates(curated, audited),
                        labelling.acceptance_settings())
    store = LabelStore(storage)
    before = store.latest_version()
    version = store.append(result.events)
    decisions = result.decisions.astype(object).where(result.decisions.notna(), None)
    decisions_uri = tables.write(AUTO_LABEL_DECISIONS, AUTO_LABEL_DECISIONS.from_rows(decisions.to_dict("records")))
    metadata = result.metadata()
    if metadata["reason"]:
        context.log.info(metadata["reason"])
    acceptance = metadata.pop("acceptance", {})
    yield dg.MaterializeResult(metadata={
        **metadata, "events_appended": len(result.events) if version != before else 0,
        "labels_version": version, "threshold": acceptance.get("threshold"),
        "accuracy_coverage": dg.MetadataValue.json(acceptance.get("accuracy_coverage", [])),
        "acceptance": dg.MetadataValue.json({k: v for k, v in acceptance.items() if k != "accuracy_coverage"}),
        "decisions": dg.MetadataValue.path(decisions_uri)})


@dg.asset(deps=[audited_labels, "image_embeddings"], group_name=GROUP, kinds={"python", "parquet"},
          code_version="1", metadata=table_metadata(LABEL_ISSUES), automation_condition=SPANNING,
          output_required=False)
def label_issues(context: dg.AssetExecutionContext, catalog: CatalogResource,
                 embedding: EmbeddingResource) -> Iterator[dg.MaterializeResult]:
    """Human labels that are probably wrong, ranked (cleanlab's confident learning on the average of the label
    model's out-of-sample probabilities and a neighbour vote). On weak features the flags are not reliable: the
    metadata says so (and the WARN check label_issues_features_strong_enough), and the review budget decides."""
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    audited = read_audited(tables)
    human = audited[audited["status"].isin(HUMAN_STATUSES) & audited["image_id"].isin(set(vectors.image_ids))]
    human = human.sort_values("image_id")
    labels_version = int(audited["labels_version"].max()) if len(audited) else 0
    promoted = registry(catalog).promoted()
    figures: dict = {}
    try:
        result = find_label_issues(vectors.matrix[vectors.rows_of(human["image_id"])], human["label"].to_numpy(),
                                   image_ids=human["image_id"].to_numpy())
        table = result.to_table(labels_version, promoted.version if promoted else None)
        figures = {"cv_accuracy": round(result.cv_accuracy, 4), "flag_share": round(result.flag_share, 4),
                   "needs_budget": result.needs_budget, "warning": result.warning or ""}
        if result.warning:
            context.log.warning(result.warning)
    except ValueError as error:  # too few labels or one class: nothing to audit yet
        table, figures = LABEL_ISSUES.empty(), {"skipped": str(error).splitlines()[0]}
        context.log.info(f"no label audit: {figures['skipped']}")
    uri = tables.write(LABEL_ISSUES, table)
    frame = table.to_pandas()
    per_class = (frame.groupby("given_label")["is_issue"].agg(["sum", "count"]) if len(frame) else None)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": len(frame), "issues": int(frame["is_issue"].sum()) if len(frame) else 0,
        "issues_per_class": dg.MetadataValue.json({} if per_class is None else
                                                  {str(k): int(v) for k, v in per_class["sum"].items()}),
        **figures, "labels_version": labels_version, "label_issues_table": dg.MetadataValue.path(uri)})


@dg.asset(deps=[label_issues, auto_labels, "curated_dataset", "drift_report"], group_name=GROUP,
          kinds={"json", "csv"}, code_version="1", automation_condition=SPANNING, output_required=False)
def review_queue(context: dg.AssetExecutionContext, catalog: CatalogResource, labelling: LabelsResource,
                 embedding: EmbeddingResource) -> Iterator[dg.MaterializeResult]:
    """What a human should look at next, within the round's budget: first the most atypical images of batches that
    drifted (up to half the budget), then probable label errors, uncertain auto-labels, and active-learning picks
    among the curated images without a label (coverage while labels are few, then uncertainty within diversity).
    Written under the data root's review/ folder as Label Studio tasks (the prediction pre-filled with its score,
    the reason and the image id in the task data), a labelling config and a CSV; review/latest.json names the
    newest round."""
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    audited = read_audited(tables)
    issues = tables.read(LABEL_ISSUES).to_pandas()
    decisions = tables.read(AUTO_LABEL_DECISIONS).to_pandas()
    curated = tables.read(CURATED, columns=["image_id"]).column("image_id").to_pylist()
    active = _active_learning(catalog, audited, vectors, curated, labelling.budget)
    drifted = queue_rows.drift_atypical_rows(tables.read(DRIFT_ATYPICALITY).to_pandas(),
                                             tables.read(DRIFT_SUMMARY).to_pandas(), audited)
    queue = queue_rows.compose_review_queue(labelling.budget, queue_rows.probable_errors(issues, audited),
                                            queue_rows.uncertain_auto_labels(decisions), active, drifted=drifted)
    uris = tables.read(IMAGES, columns=["image_id", "uri"]).to_pandas().drop_duplicates("image_id")
    queue = queue.merge(uris, on="image_id", how="left")
    tasks = review_tasks(queue, image_url=_image_url(catalog, labelling))
    labels_version = int(audited["labels_version"].max()) if len(audited) else 0
    folder = f"{labelling.queue_folder}/round-v{labels_version:08d}"
    classes = sorted(set(labelling.taxonomy_value().classes) or set(audited["label"]) or {"unknown"})
    storage.write_bytes(f"{folder}/tasks.json", (json.dumps(tasks, indent=1) + "\n").encode())
    storage.write_bytes(f"{folder}/review_queue.csv", export_csv(queue))
    storage.write_text(f"{folder}/label_config.xml", label_studio_config(classes))
    paths = {"tasks": storage.uri_of(f"{folder}/tasks.json"), "csv": storage.uri_of(f"{folder}/review_queue.csv"),
             "label_config": storage.uri_of(f"{folder}/label_config.xml")}
    storage.write_text(f"{labelling.queue_folder}/{LATEST_ROUND_KEY}",
                       json.dumps({"labels_version": labels_version, **paths}, indent=1) + "\n")
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": len(queue), "budget": labelling.budget,
        **{f"reason_{reason}": count for reason, count in queue_rows.counts(queue).items()},
        "labels_version": labels_version, "tasks": dg.MetadataValue.path(paths["tasks"]),
        "csv": dg.MetadataValue.path(paths["csv"]), "label_config": dg.MetadataValue.path(paths["label_config"]),
        "reviews_folder": dg.MetadataValue.path(storage.uri_of(labelling.reviews_folder))})


def _active_learning(catalog: CatalogResource, audited: pd.DataFrame, vectors, curated: list[str],
                     budget: int) -> pd.DataFrame:
    """Active-learning rows over the curated images with a vector (the labelled ones count as covered)."""
    pool = sorted(set(curated) & set(vectors.image_ids))
    if not pool:
        return queue_rows.active_learning_rows([], [])
    labelled = set(audited["image_id"][audited["status"].isin(HUMAN_STATUSES)])
    matrix = vectors.matrix[vectors.rows_of(pool)]
    mask = np.array([image_id in labelled for image_id in pool])
    probabilities, prefill, scores = None, {}, {}
    promoted = registry(catalog).promoted()
    if promoted is not None and promoted.metadata.get("embedder_version") == vectors.embedder_version:
        model = registry(catalog).load(promoted.version)
        probabilities = model.predict_proba(matrix)
        best = probabilities.argmax(axis=1)
        prefill = {i: str(model.classes_[b]) for i, b in zip(pool, best, strict=True)}
        scores = {i: float(p.max()) for i, p in zip(pool, probabilities, strict=True)}
    choice = choose_for_labelling(matrix, mask, budget, probabilities)
    ids = [pool[i] for i in choice.indices.tolist()]
    return queue_rows.active_learning_rows(ids, choice.reasons, {i: prefill[i] for i in ids if i in prefill},
                                           {i: scores[i] for i in ids if i in scores})


def _image_url(catalog: CatalogResource, labelling: LabelsResource):
    presign = None
    if labelling.s3_presign_seconds:
        presign = s3_presigner(s3_client_settings(catalog.s3).client(), labelling.s3_presign_seconds)

    def url(uri: str) -> str:
        if not isinstance(uri, str):
            return ""
        try:
            return label_studio_image_url(uri, local_files_root=labelling.local_files_root, presign=presign)
        except ValueError:
            return uri  # outside the local-files root: the task keeps the plain path (and says which in data.uri)
    return url
