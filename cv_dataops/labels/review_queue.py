"""The review queue: what a human should look at next, within a budget per round.

Three kinds of images compete for the round's budget, each with a share (a third each, the first share taking
the remainder); a share its kind cannot fill passes to the others, in this order:

1. ``probable_label_error``: a human label that `label_issues` flags (``is_issue``), most likely wrong first;
   images a reviewer already answered (confirmed, or disputed by a review) are not asked again.
2. ``uncertain_auto_label``: a curated image without a human label whose auto-label fell below the acceptance
   threshold, least confident first.
3. ``active_learning``: unlabelled images chosen by :func:`cv_dataops.labels.active_learning.choose_for_labelling`
   (coverage while labels are few, then uncertainty within diversity), in its pick order.

Before them, when a batch drifted from its reference, ``drift_atypical``: the drifted batches' most atypical images
(``drift_atypicality``, rank 1 first, the newest batch first) without a verified label take up to half the budget,
so the new kind of data reaches labelling, and through its labels the model and the next snapshot, first.

An image appears once (its first kind). Each row says why it is there and pre-fills what the reviewer sees: the
suggested label for a probable error, the model's label for an auto-label or an active-learning pick (when a
model is promoted).
"""

from __future__ import annotations

import pandas as pd

PROBABLE_ERROR, UNCERTAIN_AUTO, ACTIVE = "probable_label_error", "uncertain_auto_label", "active_learning"
DRIFT_ATYPICAL = "drift_atypical"
REASONS = (PROBABLE_ERROR, UNCERTAIN_AUTO, ACTIVE)  # sharing the budget left after the drifted batches' images
DRIFT_SHARE = 0.5  # of the budget, at most, for the drifted batches' most atypical images
QUEUE_COLUMNS = ["position", "image_id", "reason", "score", "score_meaning", "current_label", "prefill_label",
                 "detail"]


def shares(budget: int, available: dict[str, int]) -> dict[str, int]:
    """How many of each kind the round takes: equal shares, then what a kind leaves unused to the others."""
    if budget < 0:
        raise ValueError(f"the review budget must not be negative, got {budget}")
    base = {reason: budget // len(REASONS) + (1 if position < budget % len(REASONS) else 0)
            for position, reason in enumerate(REASONS)}
    taken = {reason: min(base[reason], available.get(reason, 0)) for reason in REASONS}
    left = budget - sum(taken.values())
    for reason in REASONS:
        extra = min(left, available.get(reason, 0) - taken[reason])
        taken[reason] += extra
        left -= extra
    return taken


def probable_errors(issues: pd.DataFrame, audited: pd.DataFrame) -> pd.DataFrame:
    """Flagged label issues, by rank, without the images a reviewer already answered: a review that confirmed the
    label (``reviewed``) or contradicted it (a review label beside the human one: ``disputed`` until someone
    settles it; asking the same reviewers again would spend the round on answers it has)."""
    if issues.empty:
        return _rows([])
    answered = audited["status"] == "reviewed"
    if "review_label" in audited:
        answered |= audited["review_label"].notna()
    reviewed = set(audited["image_id"][answered])
    flagged = issues[issues["is_issue"].astype(bool) & ~issues["image_id"].isin(reviewed)].sort_values("rank")
    return _rows([{"image_id": r.image_id, "reason": PROBABLE_ERROR, "score": float(r.score),
                   "score_meaning": "label quality of the current label (lower = more likely wrong)",
                   "current_label": r.given_label, "prefill_label": r.suggested_label,
                   "detail": f"rank {int(r.rank)}: {r.detail}"} for r in flagged.itertuples(index=False)])


def uncertain_auto_labels(decisions: pd.DataFrame) -> pd.DataFrame:
    """Auto-label decisions sent to review, least confident first."""
    if decisions.empty:
        return _rows([])
    review = decisions[decisions["decision"] == "review"].sort_values(["confidence", "image_id"])
    return _rows([{"image_id": r.image_id, "reason": UNCERTAIN_AUTO, "score": float(r.confidence),
                   "score_meaning": "the label model's probability of its label",
                   "current_label": None, "prefill_label": r.label,
                   "detail": f"model {r.model_version}: {r.reason}"} for r in review.itertuples(index=False)])


def drift_atypical_rows(atypicality: pd.DataFrame, summary: pd.DataFrame, audited: pd.DataFrame) -> pd.DataFrame:
    """The most atypical images of the batches that drifted (``drift_summary.drifted``), newest batch first, each
    batch by rank, leaving out images that already have a verified (human or reviewed) label."""
    if atypicality.empty or summary.empty:
        return _rows([])
    drifted = summary[summary["drifted"].astype(bool)]
    verified = set(audited["image_id"][audited["status"].isin(("human", "reviewed"))]) if len(audited) else set()
    rows = atypicality[atypicality["batch_id"].isin(set(drifted["batch_id"]))
                       & ~atypicality["image_id"].isin(verified)]
    rows = rows.sort_values(["batch_id", "rank"], ascending=[False, True])
    cause = dict(zip(drifted["batch_id"], drifted["top_cause"]))
    return _rows([{"image_id": r.image_id, "reason": DRIFT_ATYPICAL, "score": float(r.atypicality),
                   "score_meaning": "how unlike the drift reference the image is (1 = most)",
                   "current_label": None, "prefill_label": None,
                   "detail": f"batch {r.batch_id} drifted ({cause.get(r.batch_id) or 'cause unknown'}); rank "
                             f"{int(r.rank)}"} for r in rows.itertuples(index=False)])


def active_learning_rows(image_ids, reasons, prefill: dict[str, str] | None = None,
                         scores: dict[str, float] | None = None) -> pd.DataFrame:
    prefill, scores = prefill or {}, scores or {}
    return _rows([{"image_id": image_id, "reason": ACTIVE, "score": scores.get(image_id),
                   "score_meaning": "the label model's probability of its label" if image_id in scores else None,
                   "current_label": None, "prefill_label": prefill.get(image_id), "detail": why}
                  for image_id, why in zip(image_ids, reasons, strict=True)])


def _rows(records: list[dict]) -> pd.DataFrame:
    columns = [c for c in QUEUE_COLUMNS if c != "position"]
    return pd.DataFrame(records, columns=columns) if records else pd.DataFrame(
        {column: pd.Series(dtype=object) for column in columns})


def compose_review_queue(budget: int, *kinds: pd.DataFrame, drifted: pd.DataFrame | None = None) -> pd.DataFrame:
    """The round: ``kinds`` are the candidate rows of each reason in :data:`REASONS` order (from the functions
    above), each in its own priority order; ``drifted``: :func:`drift_atypical_rows`, first, taking at most
    :data:`DRIFT_SHARE` of the budget; an image already taken by an earlier kind is dropped from later ones."""
    first = _rows([]) if drifted is None else drifted.drop_duplicates("image_id").head(int(budget * DRIFT_SHARE))
    budget -= len(first)
    seen: set[str] = set(first["image_id"])
    deduped = {}
    for reason, rows in zip(REASONS, kinds, strict=True):
        rows = rows[~rows["image_id"].isin(seen)].drop_duplicates("image_id")
        deduped[reason] = rows
        seen |= set(rows["image_id"])
    taken = shares(budget, {reason: len(rows) for reason, rows in deduped.items()})
    queue = pd.concat([first, *(deduped[reason].head(taken[reason]) for reason in REASONS)], ignore_index=True)
    queue.insert(0, "position", range(1, len(queue) + 1))
    return queue[QUEUE_COLUMNS]


def counts(queue: pd.DataFrame) -> dict[str, int]:
    return {reason: int((queue["reason"] == reason).sum()) for reason in (DRIFT_ATYPICAL, *REASONS)}
