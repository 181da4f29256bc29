"""Checks on the labels loop: every audited label in the taxonomy and the promotion decision (both blocking), the
share of probable label errors per class and the strength of the features behind them (WARN)."""

import dagster as dg

from cv_dataops.defs.labels.assets import (
    audited_labels,
    label_issues,
    label_model,
    registry,
)
from cv_dataops.labels.registry import RegistryError
from cv_dataops.labels.tables import AUDITED_LABELS, LABEL_ISSUES
from cv_dataops.resources import CatalogResource, LabelsResource


@dg.asset_check(asset=audited_labels, blocking=True)
def audited_labels_in_taxonomy(catalog: CatalogResource, labelling: LabelsResource) -> dg.AssetCheckResult:
    """Every audited label is one of the taxonomy's classes (a folder name or an old class the taxonomy no longer
    knows is kept as written and named here, so it can be fixed instead of vanishing)."""
    audited = catalog.catalog().read(AUDITED_LABELS, columns=["image_id", "label", "in_taxonomy"]).to_pandas()
    outside = audited[~audited["in_taxonomy"]]
    return dg.AssetCheckResult(passed=outside.empty, metadata={
        "outside_taxonomy": len(outside),
        "labels_outside": dg.MetadataValue.json(outside["label"].value_counts().head(20).to_dict()),
        "examples": dg.MetadataValue.json(outside["image_id"].head(10).tolist()),
        "taxonomy": dg.MetadataValue.json(list(labelling.taxonomy_value().classes) or "open")})


@dg.asset_check(asset=label_model, blocking=True)
def label_model_promotion(catalog: CatalogResource) -> dg.AssetCheckResult:
    """Whether the newest label model was promoted, and why not. A model that is not better is the loop working,
    not broken: the check then fails with WARN (the promoted model stays in force, auto-labels and the review
    queue go on with it). It fails with ERROR, blocking what follows in the run, only when the model in force
    cannot be used (its file is missing or changed, or was pickled by another scikit-learn)."""
    models = registry(catalog)
    try:
        promoted = models.promoted()
        if promoted is not None:
            models.load(promoted.version)
    except RegistryError as error:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=str(error), metadata={"error": str(error)})
    versions = models.list()
    if not versions:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no label model yet: too few verified labels (see label_model)",
                                   metadata={"promoted_version": ""})
    newest = versions[-1]
    decision = newest.metadata.get("promotion") or {}
    promoted_now = promoted is not None and promoted.version == newest.version
    return dg.AssetCheckResult(
        passed=promoted_now, severity=dg.AssetCheckSeverity.WARN,
        description=decision.get("reason") or ("promoted" if promoted_now else "not promoted"),
        metadata={"model_version": newest.version, "promoted_version": promoted.version if promoted else "",
                  "reason": decision.get("reason", ""), "decision": dg.MetadataValue.json(decision)})


@dg.asset_check(asset=label_issues)
def label_issue_share_per_class(catalog: CatalogResource, labelling: LabelsResource) -> dg.AssetCheckResult:
    """WARN when more than max_issue_share of a class's labels are probable errors."""
    issues = catalog.catalog().read(LABEL_ISSUES, columns=["given_label", "is_issue"]).to_pandas()
    share = issues.groupby("given_label")["is_issue"].mean() if len(issues) else issues["is_issue"]
    over = {str(label): round(float(value), 3) for label, value in share.items() if value > labelling.max_issue_share}
    return dg.AssetCheckResult(passed=not over, severity=dg.AssetCheckSeverity.WARN, metadata={
        "limit": labelling.max_issue_share, "classes_over": dg.MetadataValue.json(over),
        "share_per_class": dg.MetadataValue.json({str(k): round(float(v), 3) for k, v in share.items()})})


@dg.asset_check(asset=label_issues)
def label_issues_features_strong_enough(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """WARN when the embeddings are too weak for the flags (low cross-validated accuracy, or a large share
    flagged): confident learning then flags a large part of the catalog; the ranking still holds, so rely on the
    review budget rather than on is_issue."""
    event = context.instance.get_latest_materialization_event(label_issues.key)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    value = {key: item.value for key, item in metadata.items()}
    warning = value.get("warning") or ""
    return dg.AssetCheckResult(passed=not value.get("needs_budget", False), severity=dg.AssetCheckSeverity.WARN,
                               description=warning or value.get("skipped") or "features strong enough",
                               metadata={k: value[k] for k in ("cv_accuracy", "flag_share") if k in value})
