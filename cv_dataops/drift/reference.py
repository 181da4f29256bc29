"""Which images a batch is compared with: the current curated snapshot's train split (the data the current model
was trained on) by default, a named snapshot, or the last N batches before it.

Plain inputs (frames the caller has read), no storage: the asset reads the catalog and hands the rows here. With
no usable reference the choice says why, and the drift report flags nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

KINDS = ("current_snapshot", "named_snapshot", "last_batches")


@dataclass(frozen=True)
class ReferenceSettings:
    kind: str = "current_snapshot"
    snapshot_id: str | None = None     # for kind="named_snapshot"
    last_batches: int = 5              # for kind="last_batches"
    split: str | None = "train"        # the snapshot split to compare with; None: every split
    minimum_images: int = 20           # fewer reference images than this: no reference

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"reference kind {self.kind!r} is not one of: {', '.join(KINDS)}")
        if self.kind == "named_snapshot" and not self.snapshot_id:
            raise ValueError("reference kind 'named_snapshot' needs a snapshot_id")
        if self.last_batches < 1:
            raise ValueError(f"last_batches must be at least 1, got {self.last_batches}")


@dataclass(frozen=True)
class ReferenceChoice:
    """The reference's id (a snapshot id, or ``batches:<first>..<last>``) and its image ids, or why there is none."""

    reference_id: str | None
    image_ids: tuple[str, ...]
    reason: str

    @property
    def available(self) -> bool:
        return self.reference_id is not None


def _none(reason: str) -> ReferenceChoice:
    return ReferenceChoice(None, (), reason)


def _from_snapshot(rows: pd.DataFrame, snapshot_id: str | None, settings: ReferenceSettings,
                   batch_ids: set[str]) -> ReferenceChoice:
    if "snapshot_id" in rows and snapshot_id is not None:
        rows = rows[rows["snapshot_id"] == snapshot_id]
    if settings.split is not None and "split" in rows:
        rows = rows[rows["split"] == settings.split]
    ids = tuple(dict.fromkeys(str(i) for i in rows["image_id"] if str(i) not in batch_ids))
    name = f"snapshot {snapshot_id}" + (f" ({settings.split} split)" if settings.split else "")
    if len(ids) < settings.minimum_images:
        return _none(f"{name} has {len(ids)} images outside this batch, fewer than {settings.minimum_images}")
    return ReferenceChoice(str(snapshot_id), ids, f"{name}: {len(ids)} images")


def choose_reference(settings: ReferenceSettings, batch_id: str, batch_image_ids: Sequence[str] = (), *,
                     curated: pd.DataFrame | None = None, snapshots: Mapping[str, pd.DataFrame] | None = None,
                     earlier_batches: Mapping[str, Sequence[str]] | None = None) -> ReferenceChoice:
    """The reference for ``batch_id``.

    ``curated``: the current curated rows (columns image_id, split, snapshot_id). ``snapshots``: snapshot id ->
    its rows, for a named snapshot. ``earlier_batches``: batch id -> its image ids, in landing order (the batch itself
    and later ones are ignored). The batch's own images never count as reference."""
    own = {str(i) for i in batch_image_ids}
    if settings.kind == "current_snapshot":
        if curated is None or not len(curated):
            return _none("no curated snapshot yet")
        snapshot_ids = curated["snapshot_id"].dropna().unique() if "snapshot_id" in curated else [None]
        if len(snapshot_ids) > 1:
            raise ValueError(f"the curated rows hold {len(snapshot_ids)} snapshots; pass the current one's rows")
        return _from_snapshot(curated, snapshot_ids[0] if len(snapshot_ids) else None, settings, own)
    if settings.kind == "named_snapshot":
        if not snapshots or settings.snapshot_id not in snapshots:
            known = ", ".join(sorted(snapshots or ())) or "none"
            return _none(f"snapshot {settings.snapshot_id} not found (known: {known})")
        return _from_snapshot(snapshots[settings.snapshot_id], settings.snapshot_id, settings, own)
    order = list(earlier_batches or ())
    if batch_id in order:
        order = order[:order.index(batch_id)]
    chosen = order[-settings.last_batches:]
    if not chosen:
        return _none("no earlier batch")
    ids = tuple(dict.fromkeys(str(i) for b in chosen for i in earlier_batches[b] if str(i) not in own))
    if len(ids) < settings.minimum_images:
        return _none(f"the last {len(chosen)} batch(es) hold {len(ids)} images, fewer than {settings.minimum_images}")
    return ReferenceChoice(f"batches:{chosen[0]}..{chosen[-1]}", ids, f"{len(chosen)} earlier batch(es): "
                                                                        f"{len(ids)} images")
