"""How to curate: one validated settings object for eligibility, selection and splits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
SELECTION_METHODS = ("herding", "k-center")


@dataclass(frozen=True)
class CurationSettings:
    """How to curate.

    ``budget``: the most images to select, as a count (``int``) or a fraction of the eligible images (``float`` in
    ``(0, 1]``); ``None`` selects every eligible image.
    ``split_fractions``: the targets for train, val and test (normalised to sum to 1; a zero leaves a split empty).
    ``neighbour_radius``: cosine distance under which two images are near neighbours; connected near neighbours
    form a cluster that is never spread across splits.
    ``method``: how to pick within a stratum: ``herding`` (the default, :func:`~cv_dataops.curation.selection.kernel_herding`) or ``k-center``
    (farthest-point picks inside k-means cells, tuned by the next three settings); see :func:`~cv_dataops.curation.selection.select` for the
    measurements behind the default.
    ``cell_size`` (``k-center``): within a stratum of ``n`` images with a quota of ``q``, selection cuts it into
    ``min(q, n // cell_size, selection.MAX_CELLS)`` k-means cells (so about ``cell_size`` images or more per cell) and gives
    each cell a share of ``q`` in proportion to its size.
    ``outlier_fraction`` (``k-center``): in a cell of ``n`` images with a share of ``q``, the picks pass over its
    ``outlier_fraction * (n - 2q)`` most isolated images (largest distance to their ``outlier_neighbours``-th
    nearest neighbour in the stratum), none once ``q`` reaches half the cell. ``0`` turns this off.
    ``drift_share``: under a budget, at most this share of it goes first to images of batches whose drift report
    said they drifted (``drifted_batch`` in the pool), picked by the same method among them, so a new camera or
    scene reaches the snapshot even where the old data would fill the budget; ``0`` turns this off.
    ``keep_splits``: an image keeps the split it had in the last current snapshot (a cluster of near neighbours
    takes the split most of its earlier members had), and only clusters with no earlier member are assigned to fill
    the targets: an image a model was trained on never turns up in a later version's test split, and test scores of
    two versions compare. ``False`` splits every version afresh.
    ``seed``: makes selection tie-breaks and split assignment reproducible.
    """

    budget: int | float | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    neighbour_radius: float = 0.05
    seed: int = 0
    outlier_fraction: float = 0.2
    outlier_neighbours: int = 5
    cell_size: int = 8
    method: str = "herding"
    drift_share: float = 0.25
    keep_splits: bool = True

    def __post_init__(self) -> None:
        if self.method not in SELECTION_METHODS:
            raise ValueError(f"method must be one of {', '.join(SELECTION_METHODS)}, not {self.method!r}")
        budget = self.budget
        if isinstance(budget, bool) or not (budget is None or isinstance(budget, (int, float, np.integer,
                                                                                  np.floating))):
            raise ValueError(f"budget must be an int, a float fraction or None, not {budget!r}")
        if isinstance(budget, (float, np.floating)) and not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], not {budget}")
        if isinstance(budget, (int, np.integer)) and budget < 0:
            raise ValueError(f"budget must not be negative, not {budget}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(f"split_fractions must be three non-negative numbers with a positive sum, not "
                             f"{self.split_fractions!r}")
        if not 0.0 <= self.neighbour_radius < 2.0:
            raise ValueError(f"neighbour_radius is a cosine distance in [0, 2), not {self.neighbour_radius}")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError(f"outlier_fraction must be in [0, 1), not {self.outlier_fraction}")
        if not 0.0 <= self.drift_share <= 1.0:
            raise ValueError(f"drift_share must be in [0, 1], not {self.drift_share}")
        if self.cell_size < 1:
            raise ValueError(f"cell_size must be at least 1, not {self.cell_size}")
        if self.outlier_neighbours < 1:
            raise ValueError(f"outlier_neighbours must be at least 1, not {self.outlier_neighbours}")

    def budget_for(self, n_eligible: int) -> int:
        """The number of images to select from ``n_eligible``."""
        if self.budget is None:
            return n_eligible
        if isinstance(self.budget, (float, np.floating)):
            return min(n_eligible, int(round(float(self.budget) * n_eligible)))
        return min(n_eligible, int(self.budget))

