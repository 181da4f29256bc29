"""The audited label per image: the current best label and why, from the `labels` events as of one version.

Tiers. ``landing`` and ``import`` events are *human* labels, ``review`` events are *review* decisions, ``auto``
events are the label model's. By default human beats review beats auto (issue 11).

Votes. Within a tier each voter has one vote: their latest event for the image (latest ``at``, then the later
version, then the event id). A voter is the annotator where the source names one; otherwise all landing labels are
one voter (``landing``) and an anonymous file is one voter (its name). So a reviewer who changes their mind, or the
same export dropped again with one answer edited, counts once, and several annotations of one Label Studio task
are several voters. A tier's pick is the label with the most votes; a tie goes to the label voted most recently
(``at``, then the later version), then to the label of the alphabetically first voter, so the pick never depends
on the order events were read.

Statuses:

- ``human``: human voters agree and no review contradicts them.
- ``reviewed``: every review vote agrees, confirming the human label, or, without a human label, with each other.
- ``disputed``: human voters disagree, reviewers disagree, or a review disagrees with the human label. The label is
  the tier's pick (the human label when a review disagrees with it); ``reason`` and ``votes`` say who said what.
  Any disagreement is a dispute, even a 2-1 majority: a disputed label is not a verified one, so the label model
  does not train on it (it trains on ``human`` and ``reviewed``) until someone settles it.
- ``auto_accepted``: no human or review vote; the latest accepted ``auto`` event (with ``min_auto_confidence``,
  auto events below it are not accepted: such an image gets no audited label).

Why a review that disagrees with the human label is ``disputed`` rather than silently outvoted: review is where
humans look at the images flagged as probable label errors, so a review disagreeing with the label it was shown is
exactly the case the loop exists to catch. Under "human beats review" it cannot change the label, so it must at
least stop the label counting as verified. ``review_overrides_human=True`` is the other reading, the one a team
cleaning its labels expects: the review decides (``reviewed`` when reviewers agree, ``disputed`` when they do not)
and the human label it replaced is named in ``reason``.

A label the taxonomy no longer knows (e.g. a folder name after classes were configured) is kept as written with
``in_taxonomy`` false, so the blocking taxonomy check can say which images need a fix instead of the label
vanishing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from cv_dataops.labels.tables import AUDITED_LABELS, LABELS
from cv_dataops.labels.taxonomy import Taxonomy

TIERS = {"landing": "human", "import": "human", "review": "review", "auto": "auto"}


@dataclass(frozen=True, slots=True)
class _Vote:
    voter: str
    label: str
    at: int  # nanoseconds since the epoch, UTC
    version: int
    event_id: str
    source: str
    confidence: float | None
    model_version: str | None

    @property
    def when(self) -> tuple:
        """How recent, for comparing labels: a tie here goes on to the annotator name."""
        return (self.at, self.version)

    @property
    def recency(self) -> tuple:
        """How recent, for choosing one voter's latest event: never a tie."""
        return (self.at, self.version, self.event_id)


@dataclass(frozen=True)
class _TierResult:
    pick: str
    rule: str  # which rule picked it: "unanimous", "majority", "latest" or "annotator name"
    votes: dict[str, list[_Vote]]  # label -> votes, each list latest first

    @property
    def unanimous(self) -> bool:
        return len(self.votes) == 1

    @property
    def event(self) -> _Vote:
        return self.votes[self.pick][0]

    def voters(self, label: str | None = None) -> str:
        return ", ".join(sorted(vote.voter for vote in self.votes[label or self.pick]))

    def tally(self) -> str:
        return ", ".join(f"{label} {len(self.votes[label])}" for label in self._order())

    def described(self) -> str:
        return ", ".join(f"{label} ({self.voters(label)})" for label in self._order())

    def _order(self) -> list[str]:
        return sorted(self.votes, key=lambda label: (-len(self.votes[label]), label))


def _voter(source: str, annotator: object, origin_file: str) -> str:
    if isinstance(annotator, str) and annotator:
        return annotator
    return "landing" if source == "landing" else origin_file


def _tier(votes: list[_Vote]) -> _TierResult | None:
    if not votes:
        return None
    latest: dict[str, _Vote] = {}
    for vote in votes:
        if vote.voter not in latest or vote.recency > latest[vote.voter].recency:
            latest[vote.voter] = vote
    if not latest:
        return None
    by_label: dict[str, list[_Vote]] = defaultdict(list)
    for vote in latest.values():
        by_label[vote.label].append(vote)
    for label_votes in by_label.values():
        label_votes.sort(key=lambda vote: vote.recency, reverse=True)
    first_voter = {label: min(vote.voter for vote in label_votes) for label, label_votes in by_label.items()}
    ranked = sorted(by_label, key=lambda label: first_voter[label])
    ranked.sort(key=lambda label: (len(by_label[label]), by_label[label][0].when), reverse=True)
    if len(ranked) == 1:
        rule = "unanimous"
    elif len(by_label[ranked[0]]) > len(by_label[ranked[1]]):
        rule = "majority"
    elif by_label[ranked[0]][0].when > by_label[ranked[1]][0].when:
        rule = "latest"
    else:
        rule = "annotator name"
    return _TierResult(ranked[0], rule, dict(by_label))


def audit(events: pd.DataFrame, taxonomy: Taxonomy, *, review_overrides_human: bool = False,
          min_auto_confidence: float | None = None, labels_version: int | None = None) -> pd.DataFrame:
    """The audited label of every image with a usable event, in `audited_labels`' schema, by image id.

    ``events`` is the `labels` table (e.g. ``LabelStore.read(as_of=version)``); ``labels_version`` defaults to the
    newest version among them (0 for none)."""
    missing = [column for column in LABELS.column_names if column not in events.columns]
    if missing:
        raise ValueError(f"audit needs the labels table's columns; missing {missing}")
    unknown = sorted(set(events["source"]) - set(TIERS))
    if unknown:
        raise ValueError(f"labels: unknown source(s) {unknown}; expected {', '.join(TIERS)}")
    if labels_version is None:
        labels_version = int(events["labels_version"].max()) if len(events) else 0

    # Column lists, not rows: this runs over every label event of the catalog.
    resolved = {label: taxonomy.resolve(label) or str(label).strip() for label in events["label"].unique()}
    nanoseconds = events["at"].astype("datetime64[ns, UTC]").astype("int64").tolist()
    per_image: dict[str, dict[str, list[_Vote]]] = defaultdict(lambda: defaultdict(list))
    for (image_id, label, source, confidence, model_version, annotator, origin_file, version, event_id,
         at) in zip(*(events[column].tolist() for column in (
            "image_id", "label", "source", "confidence", "model_version", "annotator", "origin_file",
            "labels_version", "event_id")), nanoseconds):
        confidence = None if confidence is None or confidence != confidence else float(confidence)  # NaN: none
        if source == "auto" and min_auto_confidence is not None and (confidence is None
                                                                      or confidence < min_auto_confidence):
            continue
        per_image[image_id][TIERS[source]].append(_Vote(
            _voter(source, annotator, origin_file), resolved[label], at, int(version), event_id, source, confidence,
            model_version if isinstance(model_version, str) else None))

    columns: dict[str, list] = {name: [] for name in AUDITED_LABELS.column_names}
    for image_id in sorted(per_image):
        tiers = per_image[image_id]
        human, review = _tier(tiers["human"]), _tier(tiers["review"])
        decided = _decide(human, review, tiers["auto"], review_overrides_human)
        if decided is None:
            continue
        status, event, reason, deciding = decided
        votes = "; ".join(f"{name}: {result.tally()}" for name, result in (("human", human), ("review", review))
                          if result is not None)
        for name, value in (
                ("image_id", image_id), ("label", event.label), ("status", status), ("source", event.source),
                ("reason", reason), ("votes", votes or None),
                ("annotators", deciding.voters(event.label) if deciding else None),
                ("human_label", human.pick if human else None), ("review_label", review.pick if review else None),
                ("confidence", event.confidence),
                ("model_version", event.model_version if event.source == "auto" else None),
                ("in_taxonomy", event.label in taxonomy), ("event_id", event.event_id), ("decided_at", event.at),
                ("labels_version", labels_version)):
            columns[name].append(value)
    schema = AUDITED_LABELS.arrow_schema
    arrays = [pa.array(values, pa.timestamp("ns", tz="UTC")).cast(schema.field(name).type) if name == "decided_at"
              else pa.array(values, schema.field(name).type) for name, values in columns.items()]
    return AUDITED_LABELS.conform(pa.Table.from_arrays(arrays, names=list(columns))).to_pandas()


def _decide(human: _TierResult | None, review: _TierResult | None, auto: list[_Vote], review_overrides_human: bool
            ) -> tuple[str, _Vote, str, _TierResult | None] | None:
    """The status, the deciding event, the reason, and the tier result that decided (None for auto)."""
    if review is not None and (review_overrides_human or human is None):
        replaced = (f"; overrides the human label {human.pick} ({human.voters()})"
                    if human is not None and human.pick != review.pick else "")
        if review.unanimous:
            return "reviewed", review.event, f"review ({review.voters()}){replaced}", review
        return "disputed", review.event, (f"reviewers disagree: {review.described()}; {review.pick} by "
                                          f"{review.rule}{replaced}"), review
    if human is not None:
        if not human.unanimous:
            return "disputed", human.event, (f"human sources disagree: {human.described()}; {human.pick} by "
                                             f"{human.rule}"), human
        if review is not None and set(review.votes) != {human.pick}:
            return "disputed", human.event, (f"review says {review.described()} against the human label "
                                             f"{human.pick} ({human.voters()}); the human label is kept (human "
                                             f"beats review)"), human
        if review is not None:
            return "reviewed", human.event, (f"human label ({human.voters()}) confirmed by review "
                                             f"({review.voters()})"), human
        return "human", human.event, f"human label ({human.voters()})", human
    if auto:
        event = max(auto, key=lambda vote: (vote.at, vote.version, vote.model_version or "", vote.event_id))
        shown = "" if event.confidence is None else f", confidence {event.confidence:.3f}"
        return "auto_accepted", event, f"label model {event.model_version}{shown}; no human or review label", None
    return None
