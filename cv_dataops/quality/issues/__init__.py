"""The issue types the quality stage knows, one module each, in the style of CleanVision's issue managers.

An issue type turns measurements into a 0..1 score (lower is worse); an image has the issue (is *flagged*: worth a
look, shown and counted) when its score is below the issue's threshold. Flagged is not unusable: a night scene is
dark, a foggy street low in contrast, and both are scenarios to keep. An image is *unusable* (no model should train
on it: near-black, blown out, blank, blurred beyond recognition) only when the score of an issue type that can make
it so is below that type's much stricter ``unusable_threshold``. Everything that lists issue types (``QualityThresholds``, ``flag_issues``, the
``quality`` table's columns, the quality assets' metadata and checks) reads them from here.

Adding an issue type: write ``issues/<name>.py`` that calls :func:`register` with an :class:`IssueType` and add
``<name>`` to ``_BUILTIN`` below (that order is the column order of the ``quality`` table). A per-image score reads
the shared :class:`~cv_dataops.quality.measure.ImageStatistics`; if it needs a statistic that is not there yet,
add it to ``measure.py``, which decodes each image once for every issue type.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


@dataclass(frozen=True)
class IssueType:
    """One issue type. Exactly one of ``score`` and ``catalog_score`` is set.

    * ``score(statistics)``: the 0..1 score of one image from its :class:`ImageStatistics`; ``measure()`` returns
      it as ``<name>_score``.
    * ``catalog_score(rows, catalog)``: the 0..1 scores of a batch's rows judged against the catalog, or against the
      rows themselves when ``catalog`` is None; NaN where a row cannot be judged. Both are mappings (or DataFrames)
      holding at least ``catalog_columns``: the rows as ``measure()`` returns them, the catalog from the ``images``
      table.
    """

    name: str
    meaning: str                    # what having the issue means, for people (the table's column descriptions)
    threshold: float                # the default: an image has the issue (is flagged) when its score is below it
    unusable: bool                  # whether, by default, this issue can make an image unusable
    score: Callable[[ImageStatistics], float] | None = None
    catalog_score: Callable[[Any, Any | None], np.ndarray] | None = None
    catalog_columns: tuple[str, ...] = ()   # what catalog_score reads from the rows and from `images`
    # the default score below which the issue makes an image unusable (None: the flag threshold itself)
    unusable_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"issue type name {self.name!r} must be an identifier (it names columns)")
        if (self.score is None) == (self.catalog_score is None):
            raise ValueError(f"issue type {self.name!r} needs exactly one of score and catalog_score")
        if self.unusable_threshold is not None and self.unusable_threshold > self.threshold:
            raise ValueError(f"issue type {self.name!r}: unusable_threshold must not exceed threshold (an unusable "
                             "image is always flagged too)")


_REGISTRY: dict[str, IssueType] = {}


def register(issue: IssueType) -> IssueType:
    """Add ``issue`` after the ones already registered; names are unique."""
    if issue.name in _REGISTRY:
        raise ValueError(f"issue type {issue.name!r} is already registered")
    _REGISTRY[issue.name] = issue
    return issue


def unregister(name: str) -> None:
    """Remove an issue type (tests that register their own use it to clean up)."""
    del _REGISTRY[name]


def issue_types() -> tuple[IssueType, ...]:
    """Every registered issue type, in registration order."""
    return tuple(_REGISTRY.values())


def issue_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def column(rows: Mapping[str, Any] | Any, name: str) -> np.ndarray | None:
    """``rows[name]`` as float64, or None when ``rows`` has no such column."""
    try:
        values = rows[name]
    except (KeyError, IndexError):
        return None
    return np.asarray(values, dtype=np.float64)


# The built-in issue types, in the quality table's column order. Each module registers itself when imported.
_BUILTIN = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")
for _module in _BUILTIN:
    importlib.import_module(f"{__name__}.{_module}")
