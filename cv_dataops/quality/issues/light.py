"""light: over-exposed or washed out.

The score is the smaller of 1 - the 5th percentile of perceived pixel brightness (HSP model, 0..1; CleanVision's
score) and 1 - the fraction of pixels blown to white (luma within 4 levels of 255). So an image is light when
even its darkest pixels are bright (washed out), or when most of it is clipped to white (over-exposed), which
CleanVision's score alone misses while the remaining pixels are still dark. Unusable ("blown out") below
``unusable_threshold``: nearly everything is white. Thresholds fitted by ``bench/fit_quality_thresholds.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


def score(statistics: ImageStatistics) -> float:
    return max(0.0, min(1.0 - statistics.perceived_brightness_p05, 1.0 - statistics.light_clipped_fraction))


ISSUE = register(IssueType(name="light", meaning="too bright (washed out, or most pixels blown to white)",
                           threshold=0.42, unusable=True, unusable_threshold=0.005, score=score))
