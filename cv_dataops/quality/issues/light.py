"""light: even the darkest pixels are bright.

The score is 1 - the 5th percentile of perceived pixel brightness (HSP model, 0..1), so with the default threshold
0.05 "light" means even the darkest 5% of pixels are above 95% brightness. Same as CleanVision (0.3.x).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


def score(statistics: ImageStatistics) -> float:
    return max(0.0, 1.0 - statistics.perceived_brightness_p05)


ISSUE = register(IssueType(name="light", meaning="too bright (dark pixels are rare)", threshold=0.05, unusable=True,
                           score=score))
