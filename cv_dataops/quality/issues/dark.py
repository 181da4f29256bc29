"""dark: even the brightest pixels are dim.

The score is the 99th percentile of perceived pixel brightness (HSP model, 0..1), so with the default threshold
0.29 "dark" means even the brightest 1% of pixels are below 29% brightness (CleanVision 0.3.x: the same score,
threshold 0.32). A flag, not a verdict: a night scene is dark and still a scenario worth keeping. Unusable ("near-black")
only below ``unusable_threshold``, when even the brightest pixels are barely above black. Fitted by
``bench/fit_quality_thresholds.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


def score(statistics: ImageStatistics) -> float:
    return min(1.0, statistics.perceived_brightness_p99)


ISSUE = register(IssueType(name="dark", meaning="too dark (bright pixels are rare)", threshold=0.29, unusable=True,
                           unusable_threshold=0.05,
                           score=score))
