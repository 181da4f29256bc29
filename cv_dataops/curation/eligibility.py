"""Eligibility: the images that must never be used (unusable ones, and all but one of each duplicate group)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cv_dataops.curation.rows import present


def eligible(images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``images`` into ``(eligible, excluded)``.

    Excluded are images with ``is_unusable`` true (reason ``"unusable"``) and the members of a duplicate group
    (``group_id`` not null) other than its ``keep`` member (reason ``"duplicate of <image_id of the kept member>"``).
    An unusable image gets the reason ``"unusable"`` whatever its group. When a group's ``keep`` member is unusable
    (or no row of the group is marked ``keep``), its usable member with the smallest ``image_id`` is kept instead,
    so a picture is never lost for want of its keep row. Missing columns mean nothing to drop (no ``is_unusable``:
    all usable; a null flag: not measured yet, usable). Both frames keep ``images``' index labels and row order;
    ``excluded`` has an extra ``reason`` column.
    """
    n = len(images)
    unusable = np.zeros(n, dtype=bool)
    if "is_unusable" in images.columns:
        unusable = images["is_unusable"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    reasons: list[str | None] = ["unusable" if u else None for u in unusable]
    if "group_id" in images.columns:
        ids = images["image_id"].astype(str).tolist()
        groups = images["group_id"].tolist()
        keeps = (images["keep"].astype("boolean").fillna(False).to_numpy(dtype=bool) if "keep" in images.columns
                 else np.zeros(n, dtype=bool))
        members: dict[object, list[int]] = {}
        for row, group in enumerate(groups):
            if present(group):
                members.setdefault(group, []).append(row)
        for rows in members.values():
            usable = [r for r in rows if not unusable[r]]
            if not usable:
                continue
            marked = [r for r in usable if keeps[r]]
            keeper = min(marked or usable, key=lambda r: ids[r])
            for row in usable:
                if row != keeper:
                    reasons[row] = f"duplicate of {ids[keeper]}"
    drop = np.array([r is not None for r in reasons], dtype=bool)
    excluded = images[drop].copy()
    excluded["reason"] = pd.Series([r for r in reasons if r is not None], index=excluded.index, dtype=object)
    return images[~drop].copy(), excluded

