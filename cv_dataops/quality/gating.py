"""The one rule for an unusable batch: most of its images are unusable. The blocking quality check fails on it and
every spanning stage leaves it out.

"Unusable" is ``is_unusable`` of the `quality` table: near-black, blown out, blank or blurred beyond recognition
(each issue type's strict unusable threshold). A flagged image (a night scene is ``dark``, a foggy one may be
``blurry`` or ``light``) is not unusable, so a batch of night or fog scenes is never blocked for being one."""

from __future__ import annotations

import pandas as pd


def unusable_rate(is_unusable: pd.Series) -> float:
    """The share of a batch's images that are unusable (0 for an empty batch)."""
    return float(is_unusable.mean()) if len(is_unusable) else 0.0


def batch_is_usable(is_unusable: pd.Series, max_unusable_rate: float) -> bool:
    return unusable_rate(is_unusable) <= max_unusable_rate


def blocked_batches(quality: pd.DataFrame, max_unusable_rate: float) -> set[str]:
    """Batches where most images are unusable: downstream stages leave them out."""
    if quality.empty:
        return set()
    rates = quality.groupby("batch_id")["is_unusable"].agg(unusable_rate)
    return set(rates[rates > max_unusable_rate].index)
