"""odd_aspect_ratio: unusually elongated.

The score is min(w/h, h/w) of the original size (0 for a zero dimension), as CleanVision; the default threshold
0.35 flags shapes longer than ~2.9:1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics


def score(statistics: ImageStatistics) -> float:
    w, h = statistics.width, statistics.height
    return min(w / h, h / w) if w > 0 and h > 0 else 0.0


ISSUE = register(IssueType(
    name="odd_aspect_ratio", meaning="unusually elongated (width/height far from the usual)", threshold=0.35,
    unusable=False, score=score))
