"""low_information: blank, flat or nearly constant.

The score is the luma entropy in bits / 8, measured after 4x4 averaging (``pooled_entropy``, which removes pixel
noise, so "flat + sensor noise" is still flat). CleanVision uses 0.1 x the entropy of the 768-bin RGB histogram
(threshold 0.3: < 3 bits, which is ~1.4-3 bits of luma entropy); the default threshold 0.32 flags < 2.6 bits, and
below 0.09 (< 0.7 bits) the image is unusable ("blank"). Both fitted by ``bench/fit_quality_thresholds.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


def score(statistics: ImageStatistics) -> float:
    return min(1.0, statistics.pooled_entropy / 8.0)


ISSUE = register(IssueType(
    name="low_information", meaning="little content (low entropy: blank, flat or nearly constant)",
    threshold=0.32, unusable=True, unusable_threshold=0.09, score=score))
