"""Coverage: whether a selection kept every scenario and every class its eligible pool holds, and in what share.

The scenarios a team curates for (night, rain, fog, a new camera) are the rare ones, exactly what a budget drops
first; this says which were dropped, so a check can warn instead of a snapshot silently losing them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from cv_dataops.curation.rows import column_values, present


@dataclass(frozen=True)
class Coverage:
    """What a selection holds of its pool: the scenarios and labels it dropped (present among the eligible images,
    none selected), and per scenario its count and share in the pool and in the selection."""

    dropped_scenarios: list[int]
    dropped_labels: list[str]
    scenario_shares: pd.DataFrame  # index scenario; columns eligible, selected, eligible_share, selected_share
    selected: int

    @property
    def kept_everything(self) -> bool:
        return not self.dropped_scenarios and not self.dropped_labels


def coverage(eligible: pd.DataFrame, selected_ids: Iterable[str]) -> Coverage:
    """:class:`Coverage` of the images ``selected_ids`` among ``eligible`` (rows with ``image_id`` and optional
    ``scenario`` and ``label`` columns); selected ids outside ``eligible`` are ignored."""
    chosen = eligible["image_id"].isin(set(selected_ids)).to_numpy()
    scenarios = pd.Series([int(v) if present(v) else None for v in column_values(eligible, "scenario")], dtype=object)
    labels = pd.Series([str(v) if present(v) else None for v in column_values(eligible, "label")], dtype=object)
    frame = pd.DataFrame({"scenario": scenarios, "label": labels, "selected": chosen})
    with_scenario = frame.dropna(subset=["scenario"])
    shares = with_scenario.groupby("scenario").selected.agg(eligible="size", selected="sum")
    shares["eligible_share"] = shares.eligible / max(int(shares.eligible.sum()), 1)
    shares["selected_share"] = shares.selected / max(int(shares.selected.sum()), 1)
    by_label = frame.dropna(subset=["label"]).groupby("label").selected.sum()
    return Coverage(dropped_scenarios=sorted(int(s) for s in shares.index[shares.selected == 0]),
                    dropped_labels=sorted(str(label) for label in by_label.index[by_label == 0]),
                    scenario_shares=shares, selected=int(chosen.sum()))
